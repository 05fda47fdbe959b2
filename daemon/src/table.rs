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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use presence_protocol::{AppId, Puid, Status};

use crate::clock::Clock;
use crate::handle::SessionHandle;
use crate::metrics::Metrics;
use crate::puid::PuidKey;

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
/// Most changes produce none or one; a device listing many apps produces one per app.
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
}

#[derive(Debug)]
struct ViewEntry {
    app_id: AppId,
    puid: Puid,
    view: AppView,
}

#[derive(Debug, Default)]
struct UserEntry {
    devices: Vec<Device>,
    views: Vec<ViewEntry>,
}

/// The sharded presence table.
#[derive(Debug)]
pub struct PresenceTable {
    users: DashMap<String, UserEntry>,
    /// PUID → (app, user), for users with a device that lists the app.
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
        }
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
    /// still connected (a ghost after a network change): the caller closes that one.
    pub fn connect(
        &self,
        user: &str,
        device_id: &str,
        handle: SessionHandle,
        state: DeviceState,
    ) -> Option<SessionHandle> {
        let mut events = Events::new();
        let mut entry = self.users.entry(user.to_owned()).or_default();
        let mut apps: Vec<AppId> = state.visibility.clone();
        let device = Device { id: device_id.to_owned(), handle, state, silent: false, changed: self.tick() };
        self.metrics.move_session(None, Some(device.gauge_state()));
        let replaced = match entry.devices.iter_mut().find(|d| d.id == device_id) {
            Some(old) => {
                self.metrics.move_session(Some(old.gauge_state()), None);
                apps.extend(old.state.visibility.iter().cloned());
                Some(std::mem::replace(old, device).handle)
            }
            None => {
                entry.devices.push(device);
                None
            }
        };
        self.refresh(user, &mut entry, apps, &mut events);
        drop(entry);
        self.publish(events);
        replaced
    }

    /// Applies a change to a device's state, if `session` is still the device's session.
    pub fn update(&self, user: &str, device_id: &str, session: u64, change: impl FnOnce(&mut DeviceState)) {
        self.with_device(user, device_id, session, |device| {
            let before = device.state.visibility.clone();
            change(&mut device.state);
            before
        });
    }

    /// Marks a device silent (past its heartbeat grace) or heard again.
    pub fn set_silent(&self, user: &str, device_id: &str, session: u64, silent: bool) {
        self.with_device(user, device_id, session, |device| {
            device.silent = silent;
            Vec::new()
        });
    }

    /// Removes a device's session (clean close or connection loss), if it is still current.
    pub fn disconnect(&self, user: &str, device_id: &str, session: u64) {
        let Some(mut entry) = self.users.get_mut(user) else {
            return;
        };
        let Some(index) = entry.devices.iter().position(|d| d.id == device_id && d.handle.id == session)
        else {
            return;
        };
        let device = entry.devices.swap_remove(index);
        self.metrics.move_session(Some(device.gauge_state()), None);
        let mut events = Events::new();
        self.refresh(user, &mut entry, device.state.visibility, &mut events);
        let empty = entry.devices.is_empty();
        drop(entry);
        if empty {
            self.users.remove_if(user, |_, entry| entry.devices.is_empty());
        }
        self.publish(events);
    }

    /// What `app_id` currently sees of the user behind `puid`; `None` reads as offline.
    pub fn lookup(&self, app_id: &str, puid: &str) -> Option<AppView> {
        let (app, user) = self.reverse.get(puid).map(|r| r.value().clone())?;
        if app.as_str() != app_id {
            return None;
        }
        let entry = self.users.get(&user)?;
        entry.views.iter().find(|v| v.app_id.as_str() == app_id).map(|v| v.view.clone())
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
        entry
            .devices
            .iter()
            .filter(|d| !d.silent && d.state.status != Status::Offline)
            .filter(|d| d.state.visibility.iter().any(|app| app.as_str() == app_id))
            .map(|d| d.handle.clone())
            .collect()
    }

    /// Removes an app from every visibility list of a user (a revocation): the app stops
    /// seeing the user at once, and learns `offline` if it saw them.
    pub fn revoke(&self, user: &str, app_id: &str) {
        let Some(mut entry) = self.users.get_mut(user) else { return };
        let mut apps = Vec::new();
        for device in &mut entry.devices {
            if let Some(index) = device.state.visibility.iter().position(|app| app.as_str() == app_id) {
                apps.push(device.state.visibility.remove(index));
            }
        }
        let mut events = Events::new();
        self.refresh(user, &mut entry, apps, &mut events);
        drop(entry);
        self.publish(events);
    }

    /// Every session of a user, for notifications and drains.
    pub fn sessions_of(&self, user: &str) -> Vec<SessionHandle> {
        self.users.get(user).map(|e| e.devices.iter().map(|d| d.handle.clone()).collect()).unwrap_or_default()
    }

    /// Number of users with at least one session.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn with_device(
        &self,
        user: &str,
        device_id: &str,
        session: u64,
        change: impl FnOnce(&mut Device) -> Vec<AppId>,
    ) {
        let Some(mut entry) = self.users.get_mut(user) else {
            return;
        };
        let Some(device) = entry.devices.iter_mut().find(|d| d.id == device_id && d.handle.id == session)
        else {
            return;
        };
        let before = device.gauge_state();
        let mut apps = change(device);
        device.changed = self.tick();
        self.metrics.move_session(Some(before), Some(device.gauge_state()));
        apps.extend(device.state.visibility.iter().cloned());
        let mut events = Events::new();
        self.refresh(user, &mut entry, apps, &mut events);
        drop(entry);
        self.publish(events);
    }

    /// Recomputes what each of `apps` sees of the user and collects the changes into
    /// `events`, for the caller to publish once it has released the entry.
    fn refresh(&self, user: &str, entry: &mut UserEntry, mut apps: Vec<AppId>, events: &mut Events) {
        apps.sort_unstable();
        apps.dedup();
        for app in apps {
            let listing = entry.devices.iter().filter(|d| d.state.visibility.contains(&app));
            let best = listing
                .clone()
                .filter(|d| !d.silent)
                .min_by_key(|d| (d.state.status, std::cmp::Reverse(d.changed)));
            let (status, message) =
                best.map_or((Status::Offline, String::new()), |d| (d.state.status, d.state.message.clone()));
            let listed = listing.count() > 0;
            let index = entry.views.iter().position(|v| v.app_id == app);
            let index = match index {
                Some(i) if entry.views[i].view.status == status && entry.views[i].view.message == message => {
                    Some(i)
                }
                Some(i) => {
                    let view = &mut entry.views[i].view;
                    let now = self.clock.unix_micros();
                    let seq = self.next_seq(view.seq, now);
                    *view = AppView { status, message, seq, since_ms: now / 1_000 };
                    events.push(event(&entry.views[i]));
                    Some(i)
                }
                // An app that never saw the user online learns nothing from "offline".
                None if status == Status::Offline => None,
                None => {
                    let puid = self.puid(&app, user);
                    self.reverse.insert(puid.clone(), (app.clone(), user.to_owned()));
                    let now = self.clock.unix_micros();
                    let view = AppView { status, message, seq: self.next_seq(0, now), since_ms: now / 1_000 };
                    let added = ViewEntry { app_id: app, puid, view };
                    events.push(event(&added));
                    entry.views.push(added);
                    None
                }
            };
            if let Some(i) = index.filter(|_| !listed) {
                let gone = entry.views.swap_remove(i);
                self.reverse.remove(&gone.puid);
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

fn event(entry: &ViewEntry) -> PresenceEvent {
    PresenceEvent {
        app_id: entry.app_id.clone(),
        puid: entry.puid.clone(),
        status: entry.view.status,
        message: entry.view.message.clone(),
        seq: entry.view.seq,
        at_ms: entry.view.since_ms,
    }
}
