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
//! # Events, sequence numbers and times
//!
//! Whenever that aggregate changes, the table emits a [`PresenceEvent`] for the (app, PUID)
//! pair, with a `seq` and an `at` of that pair's own, so that two apps cannot match their
//! PUIDs to one user by equal numbers or equal gaps between them (SECURITY.md):
//!
//! - Time is cut into slots of [`SLOT_MICROS`] (2^20 µs, about a second). A change in slot
//!   `s` takes `seq = max(s + j, after + step)`, where `j` (below half a slot) and `step`
//!   (1 to [`MAX_STEP`]) come from a keyed hash of (app, PUID, slot, previous seq)
//!   ([`PuidKey::spread`]); `after` is the pair's previous `seq` while the table holds its
//!   view, and the highest `seq` the table ever handed out (or the floor) when it makes the
//!   view anew (the user came back). So `seq` increases per (app, PUID), across reconnects
//!   and daemon restarts alike, and receivers drop any event whose `seq` is not above the
//!   last one they saw for that PUID.
//! - `at` is a point of the same slot chosen by the same hash: the change's time to about
//!   a second, at a place of its own per app and change. Two changes of one slot may carry
//!   `at`s in either order (keeping it from going back would give both apps the same zero
//!   gap); `seq` is what orders them.
//!
//! What remains linkable is the slot: two apps see a user's changes in the same seconds
//! (the pattern of status over time), which no numbering can hide.
//!
//! The highest `seq` handed out survives a step of the clock back; the daemon also records
//! it in the store about once a second and starts above it after a restart (with a margin
//! after a crash), so a restart with the clock stepped back cannot make a sequence go
//! backwards either.
//!
//! # Departures: a drain that does not flap
//!
//! When a clean drain sends devices away with `GoAway` ([`PresenceTable::begin_drain`],
//! with a grace of `drain_grace_secs`), a user going offline is not told: the table moves
//! what each app was last told into its *departures*, with a deadline, and the daemon
//! records them in the run journal. The next run takes them over
//! ([`PresenceTable::restore_departures`]): until the deadline the app's view stays what it
//! was told (so polls agree with the webhooks); a user who comes back claims it, and the
//! app hears only what changed, nothing if nothing did; at the deadline the app is told
//! `offline` ([`PresenceTable::expire_departures`]), with a `seq` above the last.
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
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use presence_protocol::{AppId, Puid, Status};

use crate::clock::Clock;
use crate::handle::SessionHandle;
use crate::metrics::Metrics;
use crate::puid::PuidKey;
use crate::revocations::Revocations;
use crate::store::Departure;

/// Default most devices one user may have connected at once: a person's phone, tablet,
/// laptops, desktop, watch, TV and a few browser profiles are about ten, so 32 leaves room
/// for more while bounding what one user can make the daemon hold (about 1.8 KB a device)
/// and the work under that user's entry.
pub(crate) const DEFAULT_MAX_DEVICES_PER_USER: u32 = 32;

/// Microseconds of one time slot (2^20 µs, about a second): what two apps can still tell
/// about when a user's status changed. A power of two, so the hash splits into its parts
/// by masks.
pub(crate) const SLOT_MICROS: u64 = 1 << 20;
/// Widest step of one (app, PUID)'s `seq` past the one before it (or past the table's
/// highest, for a view made anew). Small, so that a storm of reconnects moves the highest
/// `seq` ahead of the clock only beyond about 2,000 new views a second.
pub(crate) const MAX_STEP: u64 = 1 << 10;

/// The table's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableConfig {
    /// Most devices of one user connected at once; one more is refused
    /// ([`TooManyDevices`]), a device reconnecting (replacing its own session) is not.
    pub(crate) max_devices_per_user: u32,
    /// How long a user the drain sent away keeps what apps see of them before they are told
    /// `offline`; zero tells them in the drain (module docs, departures).
    pub(crate) drain_grace: std::time::Duration,
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
    /// Increases per (app, PUID), with values of that pair's own; see the module docs.
    pub seq: u64,
    /// When the change happened, Unix milliseconds, to about a second (a point of its slot
    /// chosen per app; see the module docs).
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
    /// When it last changed, Unix milliseconds: the `at` of that change's event.
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

/// What an app was last told of a user the drain sent away, until they come back or the
/// deadline passes.
#[derive(Debug)]
struct Departed {
    seen: Seen,
    /// Unix milliseconds.
    deadline_ms: u64,
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
    /// Set by [`Self::begin_drain`]: a user going offline departs instead of being told.
    draining: AtomicBool,
    /// The grace a departure gets; zero: none, the drain tells apps `offline`.
    drain_grace: Duration,
    /// Departed users by (app, user). Taken under a user's entry (a user coming back claims
    /// theirs) and alone (expiry), never the other way round.
    departed: Mutex<HashMap<(AppId, String), Departed>>,
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
            draining: AtomicBool::new(false),
            drain_grace: Duration::ZERO,
            departed: Mutex::new(HashMap::new()),
        }
    }

    /// The same table with the table's settings.
    pub(crate) fn with_config(self, config: TableConfig) -> PresenceTable {
        PresenceTable {
            drain_grace: config.drain_grace,
            ..self.with_max_devices(config.max_devices_per_user)
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

    /// An app was removed: its revocations go (the store drops their durable copies with
    /// the app's record).
    pub(crate) fn app_removed(&self, app_id: &str) {
        self.revocations.forget_app(app_id);
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
        let seen =
            self.users.get(&user).and_then(|entry| entry.app(app_id)?.seen.as_ref().map(|s| s.view.clone()));
        // A departed user reads as the app was last told, until they come back or expire.
        seen.or_else(|| {
            let departed = self.departed();
            departed.get(&(AppId::new(app_id).ok()?, user)).map(|d| d.seen.view.clone())
        })
    }

    /// The drain begins: from now on a user going offline departs (module docs) instead of
    /// being told, if the table has a grace. Returns whether it has.
    pub(crate) fn begin_drain(&self) -> bool {
        let grace = !self.drain_grace.is_zero();
        self.draining.store(grace, Ordering::Relaxed);
        grace
    }

    /// Every departure held (this run's drain's and those taken over and not yet claimed),
    /// for the run journal.
    pub(crate) fn departures(&self) -> Vec<Departure> {
        self.departed()
            .iter()
            .map(|((app_id, user), d)| Departure {
                user: user.clone(),
                app_id: app_id.to_string(),
                status: d.seen.view.status.as_str().to_owned(),
                message: d.seen.view.message.clone(),
                seq: d.seen.view.seq,
                since_ms: d.seen.view.since_ms,
                deadline_ms: d.deadline_ms,
            })
            .collect()
    }

    /// Takes over the previous run's departures: the apps keep seeing those users as they
    /// were told until they come back or [`Self::expire_departures`] tells them `offline`.
    /// Records that do not decode (a status or app id this daemon does not know) are
    /// skipped. Returns the earliest deadline.
    pub(crate) fn restore_departures(&self, departures: Vec<Departure>) -> Option<u64> {
        let mut departed = self.departed();
        for d in departures {
            let (Ok(app_id), Ok(status)) = (AppId::new(d.app_id), d.status.parse::<Status>()) else {
                continue;
            };
            let puid = self.puid(&app_id, &d.user);
            self.reverse.insert(puid.clone(), (app_id.clone(), d.user.clone()));
            self.seq_high.fetch_max(d.seq, Ordering::Relaxed);
            let view = AppView { status, message: d.message, seq: d.seq, since_ms: d.since_ms };
            departed
                .insert((app_id, d.user), Departed { seen: Seen { puid, view }, deadline_ms: d.deadline_ms });
        }
        departed.values().map(|d| d.deadline_ms).min()
    }

    /// Tells each app `offline` for every departed user whose deadline is at or before
    /// `now_ms` (Unix ms) and who has not come back. Returns the next deadline, if any.
    pub(crate) fn expire_departures(&self, now_ms: u64) -> Option<u64> {
        let mut events = Events::new();
        let next = {
            let mut departed = self.departed();
            let now = self.clock.unix_micros();
            departed.retain(|(app_id, _), d| {
                if d.deadline_ms > now_ms {
                    return true;
                }
                let (seq, since_ms) = self.stamp(app_id, &d.seen.puid, Some(&d.seen.view), now);
                d.seen.view = AppView { status: Status::Offline, message: String::new(), seq, since_ms };
                events.push(event(app_id, &d.seen));
                // Under the departures' lock: a user coming back checks it before inserting.
                self.reverse.remove(&d.seen.puid);
                false
            });
            departed.values().map(|d| d.deadline_ms).min()
        };
        self.publish(events);
        next
    }

    fn departed(&self) -> MutexGuard<'_, HashMap<(AppId, String), Departed>> {
        self.departed.lock().unwrap_or_else(PoisonError::into_inner)
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
            if app.seen.is_none() {
                // A user the drain sent away is back: the app's view is what it was told.
                // (Empty outside a grace: no key is built on a new view's path then.)
                let mut departed = self.departed();
                if !departed.is_empty() {
                    app.seen = departed.remove(&(app.app_id.clone(), user.to_owned())).map(|d| d.seen);
                }
            }
            if status == Status::Offline && self.draining.load(Ordering::Relaxed) {
                if let Some(seen) = app.seen.take_if(|seen| seen.view.status != Status::Offline) {
                    // Sent away by the drain: departs, untold, and the PUID stays readable.
                    let grace = u64::try_from(self.drain_grace.as_millis()).unwrap_or(u64::MAX);
                    let deadline_ms = (now / 1_000).saturating_add(grace);
                    self.departed()
                        .insert((app.app_id.clone(), user.to_owned()), Departed { seen, deadline_ms });
                }
            }
            match &mut app.seen {
                Some(seen) if seen.view.status == status && seen.view.message == message => {}
                Some(seen) => {
                    let (seq, since_ms) = self.stamp(&app.app_id, &seen.puid, Some(&seen.view), now);
                    seen.view = AppView { status, message: message.to_owned(), seq, since_ms };
                    events.push(event(&app.app_id, seen));
                }
                // An app that never saw the user online learns nothing from "offline".
                None if status == Status::Offline => {}
                None => {
                    let puid = self.puid(&app.app_id, user);
                    self.reverse.insert(puid.clone(), (app.app_id.clone(), user.to_owned()));
                    let (seq, since_ms) = self.stamp(&app.app_id, &puid, None, now);
                    let view = AppView { status, message: message.to_owned(), seq, since_ms };
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

    /// The `seq` and `at` (Unix ms) of a change of what `app_id` sees of `puid` at
    /// `now_micros`, given the pair's current view if the table holds one (module docs).
    /// A view made anew starts above every `seq` this table handed out before (or the
    /// floor), so a PUID whose view was dropped and rebuilt, or a clock stepped back, never
    /// makes a sequence go backwards. Called under the user's entry, so one pair's changes
    /// are numbered one at a time.
    fn stamp(&self, app_id: &str, puid: &str, previous: Option<&AppView>, now_micros: u64) -> (u64, u64) {
        let slot = now_micros & !(SLOT_MICROS - 1);
        let hash = self.puid_key.spread(app_id, puid, slot, previous.map_or(0, |view| view.seq));
        let timed = slot.saturating_add(hash & (SLOT_MICROS / 2 - 1));
        let step = 1 + ((hash >> 20) & (MAX_STEP - 1));
        let after = previous.map_or_else(|| self.seq_high.load(Ordering::Relaxed), |view| view.seq);
        let seq = timed.max(after.saturating_add(step));
        self.seq_high.fetch_max(seq, Ordering::Relaxed);
        let at_ms = slot.saturating_add((hash >> 32) & (SLOT_MICROS - 1)) / 1_000;
        (seq, at_ms)
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

    /// One user's changes as two apps see them, at chosen times (several in one slot, a
    /// gap, a clock step back), numbered by the table's own [`PresenceTable::stamp`]: no
    /// `seq` of one app equals one of the other, no gap between two of one app's `seq`s or
    /// `at`s equals the gap between the same two changes at the other, and each app's
    /// sequence increases while its `at` stays within the change's slot.
    #[test]
    fn two_apps_seeing_one_users_changes_get_no_equal_seqs_or_gaps() {
        let (table, _) = table();
        let t0 = 1_767_225_600_000_000u64;
        let times: Vec<u64> = [0, 10, 20, 300_000, 2_000_000, 2_000_001, 9_000_000, 60_000_000, 61_500_000]
            .iter()
            .map(|d| t0 + d)
            .chain([t0 + 30_000_000, t0 + 61_600_000])
            .collect();
        let stamps = |app: &str| {
            let puid = table.puid(app, "u");
            let mut view: Option<AppView> = None;
            let mut out = Vec::new();
            for &now in &times {
                let (seq, since_ms) = table.stamp(app, &puid, view.as_ref(), now);
                let slot_ms = (now & !(SLOT_MICROS - 1)) / 1_000;
                if let Some(previous) = &view {
                    assert!(seq > previous.seq, "{app}: seq increases");
                }
                let slot_end = slot_ms + SLOT_MICROS / 1_000;
                assert!((slot_ms..=slot_end).contains(&since_ms), "{app}: at is within the change's slot");
                view = Some(AppView { status: Status::Online, message: String::new(), seq, since_ms });
                out.push((seq, since_ms));
            }
            out
        };
        let (a, b) = (stamps("app_a"), stamps("app_b"));
        for (sa, _) in &a {
            assert!(b.iter().all(|(sb, _)| sb != sa), "equal seq {sa} at both apps");
        }
        for i in 0..a.len() {
            for j in i + 1..a.len() {
                assert_ne!(a[j].0 - a[i].0, b[j].0 - b[i].0, "equal seq gap between changes {i} and {j}");
                let (gap_a, gap_b) = (a[j].1 as i64 - a[i].1 as i64, b[j].1 as i64 - b[i].1 as i64);
                assert_ne!(gap_a, gap_b, "equal at gap between changes {i} and {j}");
            }
        }
    }

    /// A restarted daemon's table, raised to the floor the previous run recorded, numbers a
    /// returning user's changes above every `seq` the previous run gave each app, even with
    /// the wall clock an hour behind; and the events' `seq` and `at` are what a poll reads.
    #[test]
    fn seq_increases_per_app_and_puid_across_a_restart_and_a_clock_step_back() {
        let apps = [AppId::new("app_a").expect("app id"), AppId::new("app_b").expect("app id")];
        let state =
            |status| DeviceState { status, idle: false, message: String::new(), visibility: apps.to_vec() };
        let (first, recorder) = table();
        first.connect("u", "phone", SessionHandle::new(1).0, state(Status::Online)).expect("within the cap");
        for status in [Status::Away, Status::Unavailable, Status::Online] {
            first.update("u", "phone", 1, |s| s.status = status);
        }
        for app in &apps {
            let view = first.lookup(app, &first.puid(app, "u")).expect("seen");
            let last = recorder.all().into_iter().rev().find(|e| &e.app_id == app).expect("told");
            assert_eq!(
                (view.seq, view.since_ms),
                (last.seq, last.at_ms),
                "a poll reads the event's seq and at"
            );
        }
        first.disconnect("u", "phone", 1);
        let last: Vec<u64> = apps
            .iter()
            .map(|app| recorder.all().iter().filter(|e| &e.app_id == app).map(|e| e.seq).max().expect("told"))
            .collect();
        let floor = first.seq_high();
        drop(first);

        let (second, recorder) = table();
        second.raise_seq_floor(floor);
        second.connect("u", "phone", SessionHandle::new(1).0, state(Status::Online)).expect("within the cap");
        for (app, last) in apps.iter().zip(&last) {
            let again = recorder.all().into_iter().find(|e| &e.app_id == app).expect("told again");
            assert!(again.seq > *last, "{app}: {} after {last}", again.seq);
        }
        // The clock an hour behind: a view made anew still starts above the floor.
        let hour_ago = second.clock.unix_micros() - 3_600_000_000;
        let puid = second.puid("app_c", "u");
        let (seq, _) = second.stamp("app_c", &puid, None, hour_ago);
        assert!(seq > floor, "{seq} above the floor {floor}");
    }

    /// A drain with a grace: users going offline depart untold and stay readable; the next
    /// run takes the departures over: a user back with the same state makes no event, one
    /// back with another state makes one event above the last `seq`, and one who stays away
    /// is told `offline` at the deadline, not before, and then reads as offline.
    #[test]
    fn departed_users_are_held_across_a_restart_until_they_come_back_or_expire() {
        let chat = AppId::new("app_chat").expect("app id");
        let state = |status, message: &str| DeviceState {
            status,
            idle: false,
            message: message.to_owned(),
            visibility: vec![chat.clone()],
        };
        let config = TableConfig { max_devices_per_user: 4, drain_grace: Duration::from_secs(30) };
        let (first, recorder) = table();
        let first = first.with_config(config);
        for (id, user) in [(1, "alice"), (2, "bob"), (3, "carol")] {
            first.connect(user, "phone", SessionHandle::new(id).0, state(Status::Online, "hi")).expect("cap");
        }
        let told = recorder.all();
        assert!(first.begin_drain(), "a grace is configured");
        let before_ms = first.clock.unix_ms();
        for (id, user) in [(1, "alice"), (2, "bob"), (3, "carol")] {
            first.disconnect(user, "phone", id);
        }
        assert_eq!(recorder.all(), told, "nobody was told offline");
        let puid = |user| first.puid(&chat, user);
        let bob_view = first.lookup(&chat, &puid("bob")).expect("bob reads as he was told");
        assert_eq!((bob_view.status, bob_view.message.as_str()), (Status::Online, "hi"));
        let mut departures = first.departures();
        departures.sort_by(|a, b| a.user.cmp(&b.user));
        assert_eq!(departures.iter().map(|d| d.user.as_str()).collect::<Vec<_>>(), ["alice", "bob", "carol"]);
        let deadline = departures[1].deadline_ms;
        assert!((before_ms + 30_000..=first.clock.unix_ms() + 30_000).contains(&deadline), "{deadline}");
        let floor = first.seq_high();
        drop(first);

        let (second, recorder) = table();
        let second = second.with_config(config);
        second.raise_seq_floor(floor);
        let earliest = departures.iter().map(|d| d.deadline_ms).min();
        assert_eq!(second.restore_departures(departures), earliest);
        assert_eq!(second.lookup(&chat, &second.puid(&chat, "bob")), Some(bob_view.clone()), "polls agree");
        second.connect("alice", "phone", SessionHandle::new(1).0, state(Status::Online, "hi")).expect("cap");
        second.connect("carol", "phone", SessionHandle::new(3).0, state(Status::Away, "")).expect("cap");
        let events = recorder.all();
        assert_eq!(events.len(), 1, "alice came back as she was: nothing; carol changed: {events:?}");
        let carol = &events[0];
        assert_eq!((carol.puid.as_str(), carol.status), (second.puid(&chat, "carol").as_str(), Status::Away));
        assert!(carol.seq > told.iter().find(|e| e.puid == carol.puid).expect("told").seq);

        // Only bob is still held, with his deadline: what a second drain would record again.
        let held = second.departures();
        assert_eq!(
            held.iter().map(|d| (d.user.as_str(), d.deadline_ms)).collect::<Vec<_>>(),
            [("bob", deadline)]
        );
        assert_eq!(second.expire_departures(deadline - 1), Some(deadline), "not before the deadline");
        assert_eq!(recorder.all().len(), 1);
        assert_eq!(second.expire_departures(deadline), None, "bob was the last one held");
        let offline = recorder.all().pop().expect("bob's offline");
        assert_eq!(
            (offline.puid.as_str(), offline.status),
            (second.puid(&chat, "bob").as_str(), Status::Offline)
        );
        assert!(offline.seq > bob_view.seq);
        assert_eq!(second.lookup(&chat, &second.puid(&chat, "bob")), None, "bob reads as offline");
        assert!(second.departures().is_empty());
    }

    /// Without a grace the drain tells apps `offline`, as before the departures existed.
    #[test]
    fn without_a_grace_the_drain_tells_apps_offline() {
        let chat = AppId::new("app_chat").expect("app id");
        let (table, recorder) = table();
        let state = DeviceState {
            status: Status::Online,
            idle: false,
            message: String::new(),
            visibility: vec![chat],
        };
        table.connect("alice", "phone", SessionHandle::new(1).0, state).expect("cap");
        assert!(!table.begin_drain());
        table.disconnect("alice", "phone", 1);
        let statuses: Vec<Status> = recorder.all().iter().map(|e| e.status).collect();
        assert_eq!(statuses, [Status::Online, Status::Offline]);
        assert!(table.departures().is_empty());
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
    fn a_removed_apps_revocations_are_forgotten_and_no_other_apps() {
        let (table, _) = table();
        table.revoke("u", "app_chat");
        table.revoke("u", "app_mail");
        table.app_removed("app_chat");
        assert!(!table.is_revoked("u", "app_chat"), "forgotten with its app");
        assert!(table.is_revoked("u", "app_mail"), "another app's stays");
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
