//! The presence table: every connected user's devices, sharded by user, and the state each
//! app was last told about that user.
//!
//! # Aggregation rule
//!
//! An app sees one status per user: the *most available* status among that user's devices
//! whose visibility list names the app and which are not silent (past their heartbeat
//! grace). Availability runs online > away > unavailable > offline; the winning device's
//! message goes with it; with no such device the app sees `offline` and an empty message.
//!
//! # Events and sequence numbers
//!
//! Whenever that aggregate changes, the table emits a [`PresenceEvent`] for the (app, PUID)
//! pair. Its `seq` increases per PUID, across reconnects and daemon restarts alike:
//! `seq = max(previous + 1, now in Unix microseconds, highest handed out + 1)`. Receivers
//! drop any event whose `seq` is not above the last one they saw for that PUID. The highest
//! one handed out survives a step of the clock back; the daemon also records it in the
//! store about once a second and starts above it after a restart (with a margin after a
//! crash), so a restart with the clock stepped back cannot make a sequence go backwards
//! either.
//!
//! A user's entry lives while they have a session; the table holds nothing for users who
//! are gone, so memory follows connected users only.
//!
//! # Incremental aggregation
//!
//! A change re-aggregates only the apps the changed device lists (before and after the
//! change), and each of those in time that does not grow with the user's other devices:
//! every app the user's devices list keeps its *candidates*, the listing devices that are
//! not silent, sorted by (status, most recent change first), so the winner is the first
//! one. A change removes the device's old candidate and inserts its new one (binary
//! searches; the new one goes to the front of its status, since it is the most recent), so
//! one user with many devices and many apps costs each change a few small moves per listed
//! app, not a scan of every device for every app. Device slots are stable while a device is
//! connected, so a candidate names its device by slot.
//!
//! # Locks
//!
//! The table is a `DashMap` of users: a change takes the user's shard lock, changes the
//! entry, collects its events and releases the lock; only then are the events handed to
//! the sink ([`PresenceSink`]), so encoding and outbox work never hold up other users.

use std::cmp::Reverse;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use presence_protocol::{AppId, Puid, Status};

use crate::clock::Clock;
use crate::handle::SessionHandle;
use crate::metrics::Metrics;
use crate::puid::PuidKey;
use crate::revocations::Revocations;

/// Default most devices one user may have connected at once: a person's phone, tablet,
/// laptops, desktop, watch, TV and a few browser profiles are about ten, so 32 leaves room
/// for more while bounding what one user can make the daemon hold (about 1.8 KB a device)
/// and the work under that user's entry.
pub(crate) const DEFAULT_MAX_DEVICES_PER_USER: u32 = 32;

/// The table's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableConfig {
    /// Most devices of one user connected at once; one more is refused
    /// ([`TooManyDevices`]), a device reconnecting (replacing its own session) is not.
    pub(crate) max_devices_per_user: u32,
}

/// A new device of a user who already has as many connected as the table allows; nothing
/// changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the user already has {max} devices connected")]
pub struct TooManyDevices {
    /// The cap.
    pub max: u32,
}

/// Where presence events go: the webhook outbox, and in tests a recorder.
///
/// Called after the table has let go of the user's entry, so a slow sink delays only the
/// caller, never another user's change. Events of one PUID from concurrent changes may
/// reach the sink out of order; their `seq` orders them, and a sink that keeps only the
/// latest per PUID must keep the one with the highest `seq`.
pub trait PresenceSink: Send + Sync + std::fmt::Debug {
    /// Takes one event.
    fn publish(&self, event: &PresenceEvent);
}

/// The events one table change produced, published once the user's entry is released.
type Events = Vec<PresenceEvent>;

/// One change of what an app sees of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The app told.
    pub app_id: AppId,
    /// The user, as that app knows them.
    pub puid: Puid,
    /// The aggregated status.
    pub status: Status,
    /// The winning device's message.
    pub message: String,
    /// Increases per PUID; see the module docs.
    pub seq: u64,
    /// When the change happened, Unix milliseconds.
    pub at_ms: u64,
}

/// What a device reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// Its status.
    pub status: Status,
    /// Its idle flag.
    pub idle: bool,
    /// Its message.
    pub message: String,
    /// The apps it lets see its presence.
    pub visibility: Vec<AppId>,
}

/// What an app currently sees of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppView {
    /// The aggregated status.
    pub status: Status,
    /// The message that goes with it.
    pub message: String,
    /// Sequence number of the last change.
    pub seq: u64,
    /// When it last changed, Unix milliseconds.
    pub since_ms: u64,
}

#[derive(Debug)]
struct Device {
    id: String,
    handle: SessionHandle,
    /// Its state; `visibility` sorted and without repeats.
    state: DeviceState,
    silent: bool,
    /// When its state last changed, as a table-wide counter: among equally available
    /// devices the most recently changed one wins, so the winner (and its message) does
    /// not depend on where the device sits in the list.
    changed: u64,
}

impl Device {
    fn gauge_state(&self) -> &'static str {
        if self.silent { "silent" } else { self.state.status.as_str() }
    }

    /// Where the device stands among an app's candidates; `None` while it is silent.
    fn candidate(&self, slot: usize) -> Option<Candidate> {
        (!self.silent).then_some(Candidate {
            status: self.state.status,
            changed: Reverse(self.changed),
            slot,
        })
    }
}

/// A listing device that is not silent, as an app's aggregation orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    status: Status,
    changed: Reverse<u64>,
    slot: usize,
}

/// One app that at least one of the user's devices lists.
#[derive(Debug)]
struct AppEntry {
    app_id: AppId,
    /// The listing devices that are not silent, best first.
    candidates: Vec<Candidate>,
    /// Listing devices that are silent.
    silent: u32,
    /// What the app was last told, once it has seen the user.
    seen: Option<Seen>,
    /// A change touched its candidates: what the app sees must be brought up to date.
    dirty: bool,
}

impl AppEntry {
    fn listed(&self) -> bool {
        !self.candidates.is_empty() || self.silent > 0
    }

    fn add(&mut self, candidate: Option<Candidate>) {
        self.dirty = true;
        match candidate {
            Some(candidate) => {
                let at = self.candidates.partition_point(|c| *c < candidate);
                self.candidates.insert(at, candidate);
            }
            None => self.silent += 1,
        }
    }

    fn remove(&mut self, candidate: Option<Candidate>) {
        self.dirty = true;
        match candidate {
            Some(candidate) => {
                if let Ok(at) = self.candidates.binary_search(&candidate) {
                    self.candidates.remove(at);
                }
            }
            None => self.silent = self.silent.saturating_sub(1),
        }
    }
}

#[derive(Debug)]
struct Seen {
    puid: Puid,
    view: AppView,
}

#[derive(Debug, Default)]
struct UserEntry {
    /// Device slots: a device keeps its slot while connected; a free slot is reused.
    devices: Vec<Option<Device>>,
    /// Sorted by app id.
    apps: Vec<AppEntry>,
}

impl UserEntry {
    fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter().flatten()
    }

    fn slot_of(&self, device_id: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.as_ref().is_some_and(|d| d.id == device_id))
    }

    fn app(&self, app_id: &str) -> Option<&AppEntry> {
        let at = self.apps.binary_search_by(|a| a.app_id.as_str().cmp(app_id)).ok()?;
        Some(&self.apps[at])
    }

    /// Takes a device's standing out of every app it lists.
    fn withdraw(&mut self, slot: usize) {
        let Some(device) = &self.devices[slot] else { return };
        let candidate = device.candidate(slot);
        for app in &device.state.visibility {
            if let Ok(at) = self.apps.binary_search_by(|a| a.app_id.cmp(app)) {
                self.apps[at].remove(candidate);
            }
        }
    }

    /// Puts a device's standing into every app it lists, making the entries of apps no
    /// device listed before.
    fn enter(&mut self, slot: usize) {
        let Some(device) = &self.devices[slot] else { return };
        let candidate = device.candidate(slot);
        for app in &device.state.visibility {
            let at = match self.apps.binary_search_by(|a| a.app_id.cmp(app)) {
                Ok(at) => at,
                Err(at) => {
                    let entry = AppEntry {
                        app_id: app.clone(),
                        candidates: Vec::new(),
                        silent: 0,
                        seen: None,
                        dirty: false,
                    };
                    self.apps.insert(at, entry);
                    at
                }
            };
            self.apps[at].add(candidate);
        }
    }
}

/// Sorts a visibility list and drops repeats, so that a device lists an app once.
fn normalize(visibility: &mut Vec<AppId>) {
    visibility.sort_unstable();
    visibility.dedup();
}

/// The sharded presence table.
#[derive(Debug)]
pub struct PresenceTable {
    users: DashMap<String, UserEntry>,
    /// PUID → (app, user), for users an app currently sees.
    reverse: DashMap<Puid, (AppId, String)>,
    puid_key: PuidKey,
    sink: Option<Arc<dyn PresenceSink>>,
    /// A second sink attached after start (tests and tools watching the table).
    tap: OnceLock<Arc<dyn PresenceSink>>,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// The highest sequence number handed out.
    seq_high: AtomicU64,
    /// Counts device changes, for the aggregation tie-break.
    changes: AtomicU64,
    /// Most devices per user.
    max_devices: u32,
    /// Revoked (app, PUID) pairs: a device's list never makes such an app see the user.
    revocations: Arc<Revocations>,
}

impl PresenceTable {
    /// An empty table.
    pub fn new(
        puid_key: PuidKey,
        metrics: Arc<Metrics>,
        clock: Clock,
        sink: Option<Arc<dyn PresenceSink>>,
    ) -> PresenceTable {
        PresenceTable {
            users: DashMap::new(),
            reverse: DashMap::new(),
            puid_key,
            sink,
            tap: OnceLock::new(),
            metrics,
            clock,
            seq_high: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            max_devices: DEFAULT_MAX_DEVICES_PER_USER,
            revocations: Arc::new(Revocations::in_memory(clock)),
        }
    }

    /// The same table with durable revocation tombstones (the daemon's; by default they
    /// last for the process only).
    pub(crate) fn with_revocations(mut self, revocations: Arc<Revocations>) -> PresenceTable {
        self.revocations = revocations;
        self
    }

    /// Whether the user revoked `app_id` and no device has authorized it since: then no
    /// visibility list makes the app see them.
    pub fn is_revoked(&self, user: &str, app_id: &str) -> bool {
        self.revocations.is_revoked(app_id, self.puid(app_id, user).as_str())
    }

    /// A device authorized `app_id` again: its revocation is lifted, so the visibility
    /// lists sent from now on count again (those filtered before are not restored).
    pub fn grant(&self, user: &str, app_id: &str) {
        self.revocations.grant(app_id, self.puid(app_id, user).as_str());
    }

    /// Drops the apps `user` revoked from a visibility list (sorted or not).
    fn drop_revoked(&self, user: &str, visibility: &mut Vec<AppId>) {
        visibility.retain(|app| !self.is_revoked(user, app));
    }

    /// The same table with at most `max` devices per user (at least one).
    pub fn with_max_devices(mut self, max: u32) -> PresenceTable {
        self.max_devices = max.max(1);
        self
    }

    /// Attaches a second sink that sees every event from now on, besides the outbox; false
    /// if one is attached already. For tests and tools that watch the table in process.
    pub fn tap(&self, sink: Arc<dyn PresenceSink>) -> bool {
        self.tap.set(sink).is_ok()
    }

    /// The PUID of `user` for `app_id`.
    pub fn puid(&self, app_id: &str, user: &str) -> Puid {
        self.puid_key.derive(app_id, user)
    }

    /// Registers a device's new session. Returns the session it replaces, if the device was
    /// still connected (a ghost after a network change): the caller closes that one. A new
    /// device of a user who has the most devices allowed is refused, under the same lock
    /// that would add it, so concurrent sessions cannot overshoot the cap.
    pub fn connect(
        &self,
        user: &str,
        device_id: &str,
        handle: SessionHandle,
        mut state: DeviceState,
    ) -> Result<Option<SessionHandle>, TooManyDevices> {
        normalize(&mut state.visibility);
        let mut events = Events::new();
        let mut entry = self.users.entry(user.to_owned()).or_default();
        // Under the entry, as `revoke` records the tombstone: a reconnecting device cannot
        // slip a revoked app in between.
        self.drop_revoked(user, &mut state.visibility);
        if entry.slot_of(device_id).is_none() && entry.devices().count() >= self.max_devices as usize {
            return Err(TooManyDevices { max: self.max_devices });
        }
        let device = Device { id: device_id.to_owned(), handle, state, silent: false, changed: self.tick() };
        self.metrics.move_session(None, Some(device.gauge_state()));
        let (slot, replaced) = match entry.slot_of(device_id) {
            Some(slot) => {
                entry.withdraw(slot);
                let old = entry.devices[slot].replace(device).expect("slot_of found a device");
                self.metrics.move_session(Some(old.gauge_state()), None);
                (slot, Some(old.handle))
            }
            None => match entry.devices.iter().position(Option::is_none) {
                Some(free) => {
                    entry.devices[free] = Some(device);
                    (free, None)
                }
                None => {
                    entry.devices.push(Some(device));
                    (entry.devices.len() - 1, None)
                }
            },
        };
        entry.enter(slot);
        self.refresh(user, &mut entry, &mut events);
        drop(entry);
        self.publish(events);
        Ok(replaced)
    }

    /// Applies a change to a device's state, if `session` is still the device's session.
    pub fn update(&self, user: &str, device_id: &str, session: u64, change: impl FnOnce(&mut DeviceState)) {
        self.with_device(user, device_id, session, |device| {
            change(&mut device.state);
            normalize(&mut device.state.visibility);
            self.drop_revoked(user, &mut device.state.visibility);
        });
    }

    /// Marks a device silent (past its heartbeat grace) or heard again.
    pub fn set_silent(&self, user: &str, device_id: &str, session: u64, silent: bool) {
        self.with_device(user, device_id, session, |device| device.silent = silent);
    }

    /// Removes a device's session (clean close or connection loss), if it is still current.
    pub fn disconnect(&self, user: &str, device_id: &str, session: u64) {
        let Some(mut entry) = self.users.get_mut(user) else {
            return;
        };
        let Some(slot) = entry
            .slot_of(device_id)
            .filter(|&slot| entry.devices[slot].as_ref().is_some_and(|d| d.handle.id == session))
        else {
            return;
        };
        entry.withdraw(slot);
        let device = entry.devices[slot].take().expect("slot_of found a device");
        self.metrics.move_session(Some(device.gauge_state()), None);
        let mut events = Events::new();
        self.refresh(user, &mut entry, &mut events);
        while entry.devices.last().is_some_and(Option::is_none) {
            entry.devices.pop();
        }
        let empty = entry.devices.is_empty();
        drop(entry);
        if empty {
            self.users.remove_if(user, |_, entry| entry.devices.is_empty());
        }
        self.publish(events);
    }

    /// What `app_id` currently sees of the user behind `puid`; `None` reads as offline.
    pub fn lookup(&self, app_id: &str, puid: &str) -> Option<AppView> {
        let user = self.user_of(app_id, puid)?;
        let entry = self.users.get(&user)?;
        entry.app(app_id)?.seen.as_ref().map(|seen| seen.view.clone())
    }

    /// The user behind `puid`, if `app_id` can currently see them.
    pub fn user_of(&self, app_id: &str, puid: &str) -> Option<String> {
        let entry = self.reverse.get(puid)?;
        let (app, user) = entry.value();
        (app.as_str() == app_id).then(|| user.clone())
    }

    /// The sessions a notification from `app_id` goes to: the user's devices that list the
    /// app, are not silent, and do not appear offline.
    pub fn reachable(&self, user: &str, app_id: &str) -> Vec<SessionHandle> {
        let Some(entry) = self.users.get(user) else { return Vec::new() };
        let Some(app) = entry.app(app_id) else { return Vec::new() };
        app.candidates
            .iter()
            .filter(|c| c.status != Status::Offline)
            .filter_map(|c| entry.devices[c.slot].as_ref())
            .map(|d| d.handle.clone())
            .collect()
    }

    /// Removes an app from every visibility list of a user (a revocation): the app stops
    /// seeing the user at once, and learns `offline` if it saw them. The tombstone keeps it
    /// so for devices connecting later, until [`grant`](Self::grant).
    pub fn revoke(&self, user: &str, app_id: &str) {
        let puid = self.puid(app_id, user);
        let Some(mut entry) = self.users.get_mut(user) else {
            self.revocations.revoke(app_id, puid.as_str());
            return;
        };
        self.revocations.revoke(app_id, puid.as_str());
        let UserEntry { devices, apps } = &mut *entry;
        for device in devices.iter_mut().flatten() {
            if let Ok(index) = device.state.visibility.binary_search_by(|app| app.as_str().cmp(app_id)) {
                device.state.visibility.remove(index);
            }
        }
        if let Ok(at) = apps.binary_search_by(|a| a.app_id.as_str().cmp(app_id)) {
            let app = &mut apps[at];
            app.candidates.clear();
            app.silent = 0;
            app.dirty = true;
        }
        let mut events = Events::new();
        self.refresh(user, &mut entry, &mut events);
        drop(entry);
        self.publish(events);
    }

    /// Every session of a user, for notifications and drains.
    pub fn sessions_of(&self, user: &str) -> Vec<SessionHandle> {
        self.users.get(user).map(|e| e.devices().map(|d| d.handle.clone()).collect()).unwrap_or_default()
    }

    /// Number of users with at least one session.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn with_device(&self, user: &str, device_id: &str, session: u64, change: impl FnOnce(&mut Device)) {
        let Some(mut entry) = self.users.get_mut(user) else {
            return;
        };
        let Some(slot) = entry
            .slot_of(device_id)
            .filter(|&slot| entry.devices[slot].as_ref().is_some_and(|d| d.handle.id == session))
        else {
            return;
        };
        entry.withdraw(slot);
        let changed = self.tick();
        let device = entry.devices[slot].as_mut().expect("slot_of found a device");
        let before = device.gauge_state();
        change(device);
        device.changed = changed;
        self.metrics.move_session(Some(before), Some(device.gauge_state()));
        entry.enter(slot);
        let mut events = Events::new();
        self.refresh(user, &mut entry, &mut events);
        drop(entry);
        self.publish(events);
    }

    /// Brings what each app a change touched sees of the user up to date with its
    /// candidates, and collects the changes into `events`, for the caller to publish once it
    /// has released the entry. Apps no device lists any more are forgotten.
    fn refresh(&self, user: &str, entry: &mut UserEntry, events: &mut Events) {
        let UserEntry { devices, apps } = entry;
        let mut at = 0;
        while at < apps.len() {
            let app = &mut apps[at];
            if !std::mem::take(&mut app.dirty) {
                at += 1;
                continue;
            }
            let best = app.candidates.first().and_then(|c| devices[c.slot].as_ref());
            let (status, message) =
                best.map_or((Status::Offline, ""), |d| (d.state.status, d.state.message.as_str()));
            let now = self.clock.unix_micros();
            match &mut app.seen {
                Some(seen) if seen.view.status == status && seen.view.message == message => {}
                Some(seen) => {
                    let seq = self.next_seq(seen.view.seq, now);
                    seen.view = AppView { status, message: message.to_owned(), seq, since_ms: now / 1_000 };
                    events.push(event(&app.app_id, seen));
                }
                // An app that never saw the user online learns nothing from "offline".
                None if status == Status::Offline => {}
                None => {
                    let puid = self.puid(&app.app_id, user);
                    self.reverse.insert(puid.clone(), (app.app_id.clone(), user.to_owned()));
                    let seq = self.next_seq(0, now);
                    let view = AppView { status, message: message.to_owned(), seq, since_ms: now / 1_000 };
                    let seen = Seen { puid, view };
                    events.push(event(&app.app_id, &seen));
                    app.seen = Some(seen);
                }
            }
            if app.listed() {
                at += 1;
            } else if let Some(seen) = apps.remove(at).seen {
                self.reverse.remove(&seen.puid);
            }
        }
    }

    /// The highest sequence number handed out (or the floor, if higher).
    pub fn seq_high(&self) -> u64 {
        self.seq_high.load(Ordering::Relaxed)
    }

    /// Makes every later sequence number higher than `floor`: a restarted daemon starts
    /// above what its previous run handed out, even with its clock stepped back.
    pub fn raise_seq_floor(&self, floor: u64) {
        self.seq_high.fetch_max(floor, Ordering::Relaxed);
    }

    /// The next sequence number for a PUID whose last one was `previous`: above it, at least
    /// the clock, and above every number this table handed out before, so a PUID whose view
    /// was dropped and rebuilt, or a clock stepped back, never makes a sequence go backwards.
    fn next_seq(&self, previous: u64, now_micros: u64) -> u64 {
        let wanted = (previous + 1).max(now_micros);
        let mut high = self.seq_high.load(Ordering::Relaxed);
        loop {
            let next = wanted.max(high + 1);
            match self.seq_high.compare_exchange_weak(high, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(actual) => high = actual,
            }
        }
    }

    /// The next value of the table-wide change counter.
    fn tick(&self) -> u64 {
        self.changes.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands a change's events to the sinks; called with no entry of the table held.
    fn publish(&self, events: Events) {
        for event in events {
            self.metrics.events.inc();
            if let Some(sink) = &self.sink {
                sink.publish(&event);
            }
            if let Some(tap) = self.tap.get() {
                tap.publish(&event);
            }
        }
    }
}

fn event(app_id: &AppId, seen: &Seen) -> PresenceEvent {
    PresenceEvent {
        app_id: app_id.clone(),
        puid: seen.puid.clone(),
        status: seen.view.status,
        message: seen.view.message.clone(),
        seq: seen.view.seq,
        at_ms: seen.view.since_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The aggregation rule as the module docs state it, computed from scratch.
    #[derive(Debug, Clone)]
    struct ModelDevice {
        id: String,
        session: u64,
        status: Status,
        message: String,
        visibility: Vec<AppId>,
        silent: bool,
        changed: u64,
    }

    fn expected(model: &[ModelDevice], app: &AppId) -> (Status, String) {
        model
            .iter()
            .filter(|d| d.visibility.contains(app) && !d.silent)
            .min_by_key(|d| (d.status, Reverse(d.changed)))
            .map_or((Status::Offline, String::new()), |d| (d.status, d.message.clone()))
    }

    fn table() -> (PresenceTable, Arc<crate::testing::EventRecorder>) {
        let recorder = Arc::new(crate::testing::EventRecorder::default());
        let key = PuidKey::new(&[3; 32]).expect("key");
        let table =
            PresenceTable::new(key, Arc::new(Metrics::default()), Clock::system(), Some(recorder.clone()));
        (table, recorder)
    }

    const STATUSES: [Status; 4] = [Status::Online, Status::Away, Status::Unavailable, Status::Offline];

    /// Random connects, changes, silences, visibility changes, disconnects and revocations
    /// of one user's devices: after each, every app sees what the rule says, and every event
    /// an app got says what it sees now, with a higher `seq` than the one before.
    #[test]
    fn incremental_aggregation_matches_the_rule() {
        let apps: Vec<AppId> = (0..4).map(|i| AppId::new(format!("app_{i}")).expect("app id")).collect();
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (table, recorder) = table();
            let mut model: Vec<ModelDevice> = Vec::new();
            let mut tick = 0u64;
            let mut session = 0u64;
            let mut last_seq: std::collections::HashMap<AppId, u64> = Default::default();
            let mut checked = 0;
            // Apps revoked and not granted since: no list brings them back.
            let mut revoked: std::collections::HashSet<AppId> = Default::default();
            for _ in 0..60 {
                let pick = |rng: &mut fastrand::Rng| {
                    let mut v: Vec<AppId> = apps.iter().filter(|_| rng.bool()).cloned().collect();
                    if rng.u8(..8) == 0 {
                        v.extend(v.clone()); // repeats are allowed on the wire
                    }
                    v
                };
                match rng.u8(..6) {
                    0 | 1 if model.len() < 5 || rng.bool() => {
                        let id = format!("d{}", rng.u8(..6));
                        session += 1;
                        let state = DeviceState {
                            status: STATUSES[rng.usize(..4)],
                            idle: false,
                            message: format!("m{}", rng.u8(..3)),
                            visibility: pick(&mut rng),
                        };
                        let (handle, _commands) = SessionHandle::new(session);
                        table.connect("u", &id, handle, state.clone()).expect("within the cap");
                        model.retain(|d| d.id != id);
                        let mut visibility = state.visibility;
                        normalize(&mut visibility);
                        visibility.retain(|a| !revoked.contains(a));
                        model.push(ModelDevice {
                            id,
                            session,
                            status: state.status,
                            message: state.message,
                            visibility,
                            silent: false,
                            changed: tick,
                        });
                        tick += 1;
                    }
                    _ if model.is_empty() => {}
                    2 => {
                        let index = rng.usize(..model.len());
                        let d = &mut model[index];
                        let (status, message) = (STATUSES[rng.usize(..4)], format!("m{}", rng.u8(..3)));
                        table.update("u", &d.id, d.session, |state| {
                            state.status = status;
                            state.message = message.clone();
                        });
                        (d.status, d.message, d.changed) = (status, message, tick);
                        tick += 1;
                    }
                    3 => {
                        let index = rng.usize(..model.len());
                        let d = &mut model[index];
                        let silent = rng.bool();
                        table.set_silent("u", &d.id, d.session, silent);
                        (d.silent, d.changed) = (silent, tick);
                        tick += 1;
                    }
                    4 => {
                        let index = rng.usize(..model.len());
                        let d = &mut model[index];
                        let mut visibility = pick(&mut rng);
                        table.update("u", &d.id, d.session, |state| state.visibility = visibility.clone());
                        normalize(&mut visibility);
                        visibility.retain(|a| !revoked.contains(a));
                        (d.visibility, d.changed) = (visibility, tick);
                        tick += 1;
                    }
                    _ if rng.bool() => {
                        let d = model.remove(rng.usize(..model.len()));
                        table.disconnect("u", &d.id, d.session);
                    }
                    _ if rng.bool() => {
                        let app = &apps[rng.usize(..apps.len())];
                        table.revoke("u", app);
                        revoked.insert(app.clone());
                        for d in &mut model {
                            d.visibility.retain(|a| a != app);
                        }
                    }
                    _ => {
                        // A grant: later lists count again; the current ones stay as they are.
                        let app = &apps[rng.usize(..apps.len())];
                        table.grant("u", app);
                        revoked.remove(app);
                    }
                }
                for app in &apps {
                    let puid = table.puid(app, "u");
                    let want = expected(&model, app);
                    match table.lookup(app, &puid) {
                        Some(view) => assert_eq!((view.status, view.message), want, "seed {seed}, app {app}"),
                        // Never told, or no longer listed: it reads as offline.
                        None => assert_eq!(want.0, Status::Offline, "seed {seed}, app {app}"),
                    }
                }
                for event in &recorder.all()[checked..] {
                    let previous = last_seq.insert(event.app_id.clone(), event.seq);
                    assert!(previous.is_none_or(|p| p < event.seq), "seq goes up (seed {seed})");
                    checked += 1;
                }
                assert_eq!(table.users(), usize::from(!model.is_empty()));
            }
            // What each app was told last is what it sees.
            for app in &apps {
                let puid = table.puid(app, "u");
                if let Some(last) = recorder.all().iter().rev().find(|e| &e.app_id == app) {
                    match table.lookup(app, &puid) {
                        Some(view) => assert_eq!((last.status, &last.message), (view.status, &view.message)),
                        None => assert_eq!(last.status, Status::Offline, "seed {seed}, app {app}"),
                    }
                }
            }
        }
    }

    #[test]
    fn reachable_devices_are_the_listing_ones_that_are_heard_and_not_offline() {
        let (table, _) = table();
        let chat = AppId::new("app_chat").expect("app id");
        let state = |status| DeviceState {
            status,
            idle: false,
            message: String::new(),
            visibility: vec![chat.clone()],
        };
        let handles: Vec<_> = (1..=3).map(|i| SessionHandle::new(i).0).collect();
        table.connect("u", "a", handles[0].clone(), state(Status::Online)).expect("within the cap");
        table.connect("u", "b", handles[1].clone(), state(Status::Offline)).expect("within the cap");
        table.connect("u", "c", handles[2].clone(), state(Status::Away)).expect("within the cap");
        table.set_silent("u", "c", 3, true);
        let ids: Vec<u64> = table.reachable("u", "app_chat").iter().map(|h| h.id).collect();
        assert_eq!(ids, [1]);
        assert!(table.reachable("u", "app_other").is_empty());
    }

    #[test]
    fn a_new_device_beyond_the_cap_is_refused_and_a_reconnecting_one_is_not() {
        let (table, recorder) = table();
        let table = table.with_max_devices(2);
        let chat = AppId::new("app_chat").expect("app id");
        let state = || DeviceState {
            status: Status::Online,
            idle: false,
            message: String::new(),
            visibility: vec![chat.clone()],
        };
        // The id of the session each connect replaced, if any.
        let connect = |user: &str, device: &str, id| {
            table.connect(user, device, SessionHandle::new(id).0, state()).map(|old| old.map(|h| h.id))
        };
        assert_eq!(connect("u", "a", 1), Ok(None));
        assert_eq!(connect("u", "b", 2), Ok(None));
        let events = recorder.all().len();
        assert_eq!(connect("u", "c", 3), Err(TooManyDevices { max: 2 }));
        assert_eq!(table.sessions_of("u").len(), 2, "nothing changed");
        assert_eq!(recorder.all().len(), events, "and nothing was told");
        // "a" reconnecting replaces its own session: not a new device.
        assert_eq!(connect("u", "a", 4), Ok(Some(1)));
        // Another user has their own cap.
        assert_eq!(connect("v", "c", 5), Ok(None));
        // Once a device leaves, a new one fits.
        table.disconnect("u", "b", 2);
        assert_eq!(connect("u", "c", 6), Ok(None));
    }

    #[test]
    fn a_revoked_app_stays_hidden_from_devices_connecting_later_until_granted_again() {
        let (table, recorder) = table();
        let (chat, mail) = (AppId::new("app_chat").expect("app id"), AppId::new("app_mail").expect("app id"));
        let state = |visibility: Vec<AppId>| DeviceState {
            status: Status::Online,
            idle: false,
            message: String::new(),
            visibility,
        };
        let puid = table.puid("app_chat", "u");
        let told = |app: &str| recorder.all().iter().filter(|e| e.app_id.as_str() == app).count();
        table.connect("u", "a", SessionHandle::new(1).0, state(vec![chat.clone()])).expect("within the cap");
        table
            .connect("u", "b", SessionHandle::new(2).0, state(vec![chat.clone(), mail.clone()]))
            .expect("cap");
        table.disconnect("u", "b", 2);
        assert!(table.lookup("app_chat", &puid).is_some());
        table.revoke("u", "app_chat");
        assert!(table.is_revoked("u", "app_chat") && !table.is_revoked("u", "app_mail"));
        assert!(!table.is_revoked("v", "app_chat"), "another user's are not");
        assert_eq!(table.lookup("app_chat", &puid), None);
        let chat_events = told("app_chat");
        // "b" comes back listing chat: chat is not told, mail is.
        table
            .connect("u", "b", SessionHandle::new(3).0, state(vec![chat.clone(), mail.clone()]))
            .expect("cap");
        assert_eq!(told("app_chat"), chat_events, "no event for the revoked app");
        assert_eq!(table.lookup("app_chat", &puid), None);
        assert_eq!(table.user_of("app_chat", &puid), None);
        assert_eq!(
            table.lookup("app_mail", &table.puid("app_mail", "u")).map(|v| v.status),
            Some(Status::Online)
        );
        assert!(table.reachable("u", "app_chat").is_empty());
        // Nor does a later visibility list bring it back.
        table.update("u", "a", 1, |s| s.visibility = vec![chat.clone()]);
        assert_eq!((told("app_chat"), table.lookup("app_chat", &puid)), (chat_events, None));
        // A grant lifts it: the next list counts.
        table.grant("u", "app_chat");
        assert!(!table.is_revoked("u", "app_chat"));
        table.update("u", "a", 1, |s| s.visibility = vec![chat.clone()]);
        assert_eq!(table.lookup("app_chat", &puid).map(|v| v.status), Some(Status::Online));
        assert_eq!(told("app_chat"), chat_events + 1);
    }
}
