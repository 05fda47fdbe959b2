//! Live notifications: from an app to a user's online devices, answered or expired.
//!
//! A notification goes to every device of each recipient that lists the app in its
//! visibility, is not silent and does not appear offline. A recipient with no such device
//! is `undeliverable` at once. The first `accept` or `dismiss` from one of a recipient's
//! devices decides that recipient's outcome, and the recipient's other devices get
//! `Cancel(answered)`. In `first-accept` mode (ask several helpers at once) the first
//! acceptance also decides every other pending recipient as `taken`, and their devices get
//! `Cancel(taken)`. Whatever is still pending at the expiry is `missed`.
//!
//! Every decided outcome goes out as a webhook event (at least once, through the durable
//! outbox) and can be read with `GET /v1/notifications/{id}` until [`RETENTION`] after the
//! expiry. Records are kept in the store as well: after a restart the daemon still answers
//! `GET` for them, and recipients left pending (their devices' sessions are gone, so no
//! answer can come) become `missed` at the expiry, so every recipient gets an outcome.
//!
//! Apps are held to [`NotifyLimits`]: a rate per app, a rate per recipient (so one app
//! cannot buzz one user's phone without end) and a cap on undecided notifications per app
//! (each holds memory and timers until its expiry). A refused request changes nothing.
//!
//! Records reach the store through a writer task (`write_records`): a change is encoded
//! under its record's lock (so writes queue in the order the changes were made) and
//! handed over a channel; the writer runs the store calls on the blocking pool, and
//! [`Notifications::shutdown`] waits until it has written everything. So neither the QUIC
//! session task that delivers an answer nor the API handler that sends waits for an fsync,
//! and no lock is held across one.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use presence_protocol::{AppId, Body, CancelReason, Data, Notify, Response, Title};
use serde::Serialize;

use crate::clock::Clock;
use crate::handle::{SessionCommand, SessionHandle};
use crate::limit::{PerAppLimiter, RateLimiter};
use crate::metrics::{Metrics, ReasonLabel, Refusal};
use crate::outbound::Outbound;
use crate::settings::Rate;
use crate::store::{NotificationStore, StoreError, blocking};
use crate::table::PresenceTable;

/// How long a notification stays readable after it expired.
pub(crate) const RETENTION: Duration = Duration::from_secs(3_600);
/// Shortest time to live an app may ask for.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest time to live an app may ask for.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(600);
/// Most recipients of one notification.
pub(crate) const MAX_RECIPIENTS: usize = 1_000;
/// Buckets in each app's per-recipient rate table: fixed memory per app (384 KiB, made on
/// its first notification) whatever PUIDs it sends. One table per app, so apps that send
/// floods of made-up PUIDs empty only their own buckets, never another app's recipients'.
const RECIPIENT_SLOTS: usize = 16_384;
/// Most record writes the writer hands to one blocking call.
const WRITE_BATCH: usize = 256;

/// How much apps may notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotifyLimits {
    /// Notification requests per app.
    pub app: Rate,
    /// Notifications per recipient (app and PUID).
    pub recipient: Rate,
    /// Most undecided notifications per app.
    pub outstanding: u32,
}

/// Why a notification was refused; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotifyRefused {
    /// The app sends notifications faster than its rate.
    #[error("this app sends notifications faster than its rate allows")]
    AppRate {
        /// When a token is back.
        retry_after: Duration,
    },
    /// A recipient was sent notifications faster than the per-recipient rate.
    #[error("a recipient gets notifications from this app faster than the rate allows")]
    RecipientRate {
        /// When every recipient has a token again.
        retry_after: Duration,
    },
    /// The app has as many undecided notifications as it may.
    #[error("this app has {max} undecided notifications; wait for outcomes")]
    Outstanding {
        /// The cap.
        max: u32,
    },
}

/// Who decides a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    /// Each recipient answers for themselves.
    All,
    /// The first recipient to accept takes it from everyone else.
    FirstAccept,
}

/// A recipient's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Shown, not yet answered.
    Pending,
    /// Accepted on one of the user's devices.
    Accepted,
    /// Dismissed on one of the user's devices.
    Dismissed,
    /// Expired unanswered.
    Missed,
    /// The user had no device to show it on (offline, unknown or revoked: all read alike).
    Undeliverable,
    /// First-accept mode: another recipient accepted first.
    Taken,
}

impl Outcome {
    /// The stable name used in webhooks, the API and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Accepted => "accepted",
            Outcome::Dismissed => "dismissed",
            Outcome::Missed => "missed",
            Outcome::Undeliverable => "undeliverable",
            Outcome::Taken => "taken",
        }
    }
}

/// A validated request to notify.
#[derive(Debug, Clone)]
pub(crate) struct NewNotification {
    /// The sending app.
    pub app_id: AppId,
    /// Recipients' PUIDs (deduplicated by the caller or here).
    pub to: Vec<String>,
    /// Title.
    pub title: Title,
    /// Body.
    pub body: Body,
    /// Opaque data.
    pub data: Data,
    /// Time to live, within [`MIN_TTL`]..=[`MAX_TTL`].
    pub ttl: Duration,
    /// Who decides.
    pub mode: Mode,
}

/// What `GET /v1/notifications/{id}` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NotificationView {
    /// The id, as a decimal string.
    pub id: String,
    /// Who decides.
    pub mode: Mode,
    /// Creation time, Unix milliseconds.
    pub created_at: u64,
    /// Expiry, Unix milliseconds.
    pub expires_at: u64,
    /// Each recipient's outcome, in request order.
    pub recipients: Vec<RecipientView>,
}

/// One recipient in a [`NotificationView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RecipientView {
    /// The recipient.
    pub puid: String,
    /// Its outcome so far.
    pub outcome: Outcome,
    /// When it was decided, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct Recipient {
    puid: String,
    user: Option<String>,
    outcome: Outcome,
    decided_at: Option<u64>,
    /// The devices it was shown on; live handles, not stored.
    #[serde(skip)]
    sessions: Vec<SessionHandle>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct Record {
    app_id: String,
    mode: Mode,
    created_at: u64,
    expires_at: u64,
    recipients: Vec<Recipient>,
    /// Whether it counts towards its app's undecided notifications.
    #[serde(skip)]
    outstanding: bool,
}

/// The notification manager.
#[derive(Debug)]
pub(crate) struct Notifications {
    records: DashMap<u64, Mutex<Record>>,
    table: Arc<PresenceTable>,
    outbound: Arc<Outbound>,
    store: Arc<dyn NotificationStore>,
    /// To the writer task, in the order the changes were made.
    writes: tokio::sync::mpsc::UnboundedSender<Write>,
    /// The writer task, awaited at shutdown so the store is written and let go of.
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    /// Set at shutdown: the timers stop and let go of the store.
    stopped: tokio::sync::watch::Sender<bool>,
    limits: NotifyLimits,
    app_rate: RateLimiter,
    recipient_rate: PerAppLimiter,
    /// Undecided notifications per app.
    outstanding: DashMap<String, u32>,
    clock: Clock,
}

impl Notifications {
    /// A manager that reaches devices through `table`, reports through `outbound` and
    /// keeps its records in `store`. Starts its writer task on the current tokio runtime.
    pub(crate) fn new(
        table: Arc<PresenceTable>,
        outbound: Arc<Outbound>,
        store: Arc<dyn NotificationStore>,
        metrics: Arc<Metrics>,
        limits: NotifyLimits,
        clock: Clock,
    ) -> Notifications {
        let (stopped, _) = tokio::sync::watch::channel(false);
        let (writes, queued) = tokio::sync::mpsc::unbounded_channel();
        let writer = tokio::spawn(write_records(store.clone(), queued));
        Notifications {
            records: DashMap::new(),
            table,
            outbound,
            store,
            writes,
            writer: Mutex::new(Some(writer)),
            metrics,
            stopped,
            limits,
            app_rate: RateLimiter::new(limits.app.rate, limits.app.burst),
            recipient_rate: PerAppLimiter::new(limits.recipient, RECIPIENT_SLOTS),
            outstanding: DashMap::new(),
            clock,
        }
    }

    /// Takes back the records of a previous run: readable again, and their pending
    /// recipients decided as `missed` at the expiry. Start-up only: it blocks on the read.
    pub(crate) fn restore(self: &Arc<Self>) -> Result<usize, StoreError> {
        let now = self.clock.unix_ms();
        let mut restored = 0;
        for (id, bytes) in self.store.notifications()? {
            let record: Record = match serde_json::from_slice(&bytes) {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(id, %error, "dropping an unreadable notification record");
                    self.forget(id);
                    continue;
                }
            };
            let forget_at = record.expires_at + RETENTION.as_millis() as u64;
            if forget_at <= now {
                self.forget(id);
                continue;
            }
            let until_expiry = Duration::from_millis(record.expires_at.saturating_sub(now));
            let mut record = record;
            if record.recipients.iter().any(|r| r.outcome == Outcome::Pending) {
                *self.outstanding.entry(record.app_id.clone()).or_insert(0) += 1;
                record.outstanding = true;
            }
            self.records.insert(id, Mutex::new(record));
            self.schedule(id, until_expiry);
            restored += 1;
        }
        Ok(restored)
    }

    /// Sends a notification and returns its initial view (undeliverable recipients are
    /// already decided), unless the app is over one of its [`NotifyLimits`].
    pub(crate) fn send(
        self: &Arc<Self>,
        mut request: NewNotification,
    ) -> Result<NotificationView, NotifyRefused> {
        let mut seen = std::collections::HashSet::new();
        request.to.retain(|puid| seen.insert(puid.clone()));
        self.admit(&request).inspect_err(|refused| {
            let refusal = match refused {
                NotifyRefused::AppRate { .. } => Refusal::NotifyAppRate,
                NotifyRefused::RecipientRate { .. } => Refusal::NotifyUserRate,
                NotifyRefused::Outstanding { .. } => Refusal::NotifyOutstanding,
            };
            self.metrics.refuse(refusal);
        })?;
        Ok(self.deliver(request))
    }

    /// Checks the limits and, on success, reserves a place among the app's undecided
    /// notifications.
    fn admit(&self, request: &NewNotification) -> Result<(), NotifyRefused> {
        let app = request.app_id.as_str();
        self.app_rate
            .check(app, self.clock.now())
            .map_err(|retry_after| NotifyRefused::AppRate { retry_after })?;
        let mut outstanding = self.outstanding.entry(app.to_owned()).or_insert(0);
        if *outstanding >= self.limits.outstanding {
            return Err(NotifyRefused::Outstanding { max: self.limits.outstanding });
        }
        let keys: Vec<&str> = request.to.iter().map(|puid| puid.as_str()).collect();
        self.recipient_rate
            .check_all(app, &keys, self.clock.now())
            .map_err(|retry_after| NotifyRefused::RecipientRate { retry_after })?;
        *outstanding += 1;
        Ok(())
    }

    /// Gives back a record's place among its app's undecided notifications once nothing in
    /// it is pending.
    fn settle(&self, record: &mut Record) {
        if record.outstanding && record.recipients.iter().all(|r| r.outcome != Outcome::Pending) {
            record.outstanding = false;
            if let Some(mut count) = self.outstanding.get_mut(&record.app_id) {
                *count = count.saturating_sub(1);
            }
        }
    }

    fn deliver(self: &Arc<Self>, request: NewNotification) -> NotificationView {
        let id = self.fresh_id();
        let created_at = self.clock.unix_ms();
        let ttl_ms = u32::try_from(request.ttl.as_millis()).unwrap_or(u32::MAX);
        let notify = Notify {
            id,
            app_id: request.app_id.clone(),
            title: request.title,
            body: request.body,
            data: request.data,
            expires_in_ms: ttl_ms,
        };
        let mut recipients = Vec::with_capacity(request.to.len());
        // `send` removed repeated recipients.
        for puid in request.to {
            let user = self.table.user_of(&request.app_id, &puid);
            let sessions =
                user.as_deref().map(|u| self.table.reachable(u, &request.app_id)).unwrap_or_default();
            recipients.push(Recipient { puid, user, outcome: Outcome::Pending, decided_at: None, sessions });
        }
        let record = Record {
            app_id: request.app_id.into_string(),
            mode: request.mode,
            created_at,
            expires_at: created_at + u64::from(ttl_ms),
            recipients,
            outstanding: true,
        };
        // The record is in place before any device sees the notification, so even the
        // fastest answer finds it.
        // The record is in place before any device sees the notification: an answer that
        // comes at once waits on this entry's shard lock, then finds it.
        let mut entry = self.records.entry(id).insert(Mutex::new(record));
        let record = entry.value_mut().get_mut().unwrap_or_else(PoisonError::into_inner);
        for recipient in &mut record.recipients {
            recipient.sessions.retain(|session| session.send(SessionCommand::Notify(notify.clone())));
            if recipient.sessions.is_empty() && recipient.outcome == Outcome::Pending {
                self.decide(&record.app_id, id, recipient, Outcome::Undeliverable);
            }
        }
        self.settle(record);
        self.persist(id, record);
        let view = view(id, record);
        drop(entry);
        self.schedule(id, request.ttl);
        view
    }

    /// Stops every timer and waits until every record change so far is written (then the
    /// writer lets go of the store). What is pending stays in the store, for the next start.
    pub(crate) async fn shutdown(&self) {
        self.stopped.send_replace(true);
        let _ = self.writes.send(Write::Close);
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(writer) = writer {
            if let Err(error) = writer.await {
                tracing::warn!(%error, "the notification writer failed");
            }
        }
    }

    /// Decides what is pending at the expiry, then forgets the record after the retention.
    fn schedule(self: &Arc<Self>, id: u64, until_expiry: Duration) {
        let manager = Arc::clone(self);
        let mut stopped = self.stopped.subscribe();
        tokio::spawn(async move {
            let timers = async {
                tokio::time::sleep(until_expiry).await;
                manager.expire(id);
                tokio::time::sleep(RETENTION).await;
                manager.records.remove(&id);
                manager.forget(id);
            };
            tokio::select! {
                _ = timers => {}
                _ = stopped.wait_for(|stopped| *stopped) => {}
            }
        });
    }

    /// Queues a record for the writer. Called under the record's lock, so the writes of
    /// one record queue in the order its changes were made. A failure costs the restart
    /// guarantee for this notification, not the notification itself.
    fn persist(&self, id: u64, record: &Record) {
        match serde_json::to_vec(record) {
            Ok(bytes) => self.queue(Write::Put(id, bytes)),
            Err(source) => {
                let error = StoreError::Encode { table: "notifications", source };
                tracing::warn!(id, %error, "cannot store a notification record");
            }
        }
    }

    /// Queues the deletion of a record whose retention has passed.
    /// An app was removed: its rate buckets and recipient table go (about 384 KiB, which
    /// an operator adding and removing apps would otherwise pile up). Its notifications
    /// keep their records until they expire, as any others.
    pub(crate) fn app_removed(&self, app_id: &str) {
        self.app_rate.forget(app_id);
        self.recipient_rate.forget(app_id);
    }

    fn forget(&self, id: u64) {
        self.queue(Write::Delete(id));
    }

    fn queue(&self, write: Write) {
        if self.writes.send(write).is_err() {
            tracing::warn!("the notification writer has stopped; a record change is not stored");
        }
    }

    /// A device answered. Only the first answer per recipient counts.
    pub(crate) fn respond(&self, id: u64, user: &str, session: u64, response: Response) {
        let Some(record) = self.records.get(&id) else { return };
        let mut record = lock(&record);
        let record = &mut *record;
        let Some(index) = record.recipients.iter().position(|r| {
            r.outcome == Outcome::Pending
                && r.user.as_deref() == Some(user)
                && r.sessions.iter().any(|s| s.id == session)
        }) else {
            return;
        };
        let outcome = match response {
            Response::Accepted => Outcome::Accepted,
            Response::Dismissed => Outcome::Dismissed,
        };
        let recipient = &mut record.recipients[index];
        self.decide(&record.app_id, id, recipient, outcome);
        cancel(recipient.sessions.iter().filter(|s| s.id != session), id, CancelReason::Answered);
        if record.mode == Mode::FirstAccept && outcome == Outcome::Accepted {
            for (other, recipient) in record.recipients.iter_mut().enumerate() {
                if other != index && recipient.outcome == Outcome::Pending {
                    self.decide(&record.app_id, id, recipient, Outcome::Taken);
                    cancel(recipient.sessions.iter(), id, CancelReason::Taken);
                }
            }
        }
        self.settle(record);
        self.persist(id, record);
    }

    /// The view of a notification, for the app that sent it only.
    pub(crate) fn get(&self, app_id: &str, id: u64) -> Option<NotificationView> {
        let record = self.records.get(&id)?;
        let record = lock(&record);
        (record.app_id == app_id).then(|| view(id, &record))
    }

    fn expire(&self, id: u64) {
        let Some(record) = self.records.get(&id) else { return };
        let mut record = lock(&record);
        let record = &mut *record;
        let mut changed = false;
        for recipient in &mut record.recipients {
            if recipient.outcome == Outcome::Pending {
                self.decide(&record.app_id, id, recipient, Outcome::Missed);
                // Devices expire it themselves at the same moment; the cancel tidies up any
                // whose clock runs slow.
                cancel(recipient.sessions.iter(), id, CancelReason::Expired);
                changed = true;
            }
        }
        if changed {
            self.settle(record);
            self.persist(id, record);
        }
    }

    fn decide(&self, app_id: &str, id: u64, recipient: &mut Recipient, outcome: Outcome) {
        recipient.outcome = outcome;
        recipient.decided_at = Some(self.clock.unix_ms());
        self.metrics.notifications.get_or_create(&ReasonLabel { reason: outcome.as_str() }).inc();
        self.outbound.outcome(app_id, id, &recipient.puid, outcome.as_str());
    }

    /// A fresh id: random, non-zero, below 2^53 so that JSON number readers keep it exact.
    fn fresh_id(&self) -> u64 {
        loop {
            let id = fastrand::u64(1..(1 << 53));
            if !self.records.contains_key(&id) {
                return id;
            }
        }
    }
}

/// A change for the writer task.
#[derive(Debug)]
enum Write {
    /// Insert or replace a record.
    Put(u64, Vec<u8>),
    /// Forget a record.
    Delete(u64),
    /// Write what came before, then stop.
    Close,
}

/// The writer task: applies queued changes in order, up to [`WRITE_BATCH`] per blocking
/// call, until [`Write::Close`] (or every sender is gone).
async fn write_records(
    store: Arc<dyn NotificationStore>,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<Write>,
) {
    let mut closing = false;
    while !closing {
        let Some(first) = queued.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match queued.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        if let Some(close) = batch.iter().position(|write| matches!(write, Write::Close)) {
            // Whatever was queued after the close is dropped: the timers have stopped.
            batch.truncate(close);
            closing = true;
        }
        let store = store.clone();
        let written = blocking(move || {
            for write in batch {
                let (id, result) = match write {
                    Write::Put(id, bytes) => (id, store.put_notification(id, &bytes)),
                    Write::Delete(id) => (id, store.delete_notification(id)),
                    Write::Close => continue,
                };
                if let Err(error) = result {
                    tracing::warn!(id, %error, "cannot store a notification record change");
                }
            }
            Ok(())
        })
        .await;
        if let Err(error) = written {
            tracing::warn!(%error, "notification records were not written");
        }
    }
}

/// Locks a record. A panic while it was locked left plain data behind (outcomes are set
/// one field at a time), so a poisoned lock is used as it is rather than losing the record.
fn lock(record: &Mutex<Record>) -> MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(PoisonError::into_inner)
}

fn cancel<'a>(sessions: impl Iterator<Item = &'a SessionHandle>, id: u64, reason: CancelReason) {
    for session in sessions {
        session.send(SessionCommand::Cancel { id, reason });
    }
}

fn view(id: u64, record: &Record) -> NotificationView {
    NotificationView {
        id: id.to_string(),
        mode: record.mode,
        created_at: record.created_at,
        expires_at: record.expires_at,
        recipients: record
            .recipients
            .iter()
            .map(|r| RecipientView { puid: r.puid.clone(), outcome: r.outcome, decided_at: r.decided_at })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use presence_protocol::{Status, Text};

    use super::*;
    use crate::apps::Apps;
    use crate::handle::SessionHandle;
    use crate::store::memory::MemoryStore;
    use crate::store::{AppStore, Outbox};
    use crate::table::DeviceState;
    use crate::webhook::fanout::{Fanout, FanoutConfig};

    /// On tokio's paused clock: the five-second expiry and the hour of retention pass
    /// without waiting, and every part of the manager follows the same clock.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_notification_is_missed_at_its_expiry_and_forgotten_after_the_retention() {
        let clock = Clock::system();
        let store = Arc::new(MemoryStore::default());
        // Disabled: its events wait in the outbox, and nothing is POSTed anywhere.
        let mut app = crate::store::contract::app("app_chat");
        app.disabled = true;
        store.put_app(&app).expect("app");
        let metrics = Arc::new(Metrics::default());
        let apps = Arc::new(Apps::load(store.clone(), clock).expect("apps"));
        let fanout =
            Fanout::start(store.clone(), apps.clone(), FanoutConfig::default(), metrics.clone(), clock)
                .expect("fan-out");
        let fanout = Arc::new(fanout);
        let outbound = Arc::new(Outbound::new(apps, fanout.clone(), clock));
        let key = crate::puid::PuidKey::new(&[5; 32]).expect("key");
        let table = Arc::new(PresenceTable::new(key, metrics.clone(), clock, None));
        let chat = AppId::new("app_chat").expect("app id");
        let (handle, mut device) = SessionHandle::new(1);
        let state = DeviceState {
            status: Status::Online,
            idle: false,
            message: String::new(),
            visibility: vec![chat.clone()],
        };
        table.connect("alice", "phone", handle, state).expect("within the cap");
        let puid = table.puid("app_chat", "alice").to_string();
        let limits = NotifyLimits {
            app: Rate { rate: 10, burst: 10 },
            recipient: Rate { rate: 10, burst: 10 },
            outstanding: 10,
        };
        let notifications =
            Arc::new(Notifications::new(table, outbound, store.clone(), metrics, limits, clock));

        let started = clock.now();
        let view = notifications
            .send(NewNotification {
                app_id: chat,
                to: vec![puid.clone()],
                title: Text::new("Join?").expect("title"),
                body: Text::default(),
                data: Text::default(),
                ttl: MIN_TTL,
                mode: Mode::All,
            })
            .expect("sent");
        let id: u64 = view.id.parse().expect("id");
        assert_eq!(view.recipients[0].outcome, Outcome::Pending);
        assert!(matches!(device.recv().await, SessionCommand::Notify(notify) if notify.id == id));

        tokio::time::sleep(MIN_TTL + Duration::from_millis(1)).await;
        let view = notifications.get("app_chat", id).expect("still readable");
        assert_eq!(view.recipients[0].outcome, Outcome::Missed);
        assert!(
            matches!(device.recv().await, SessionCommand::Cancel { id: cancelled, reason: CancelReason::Expired } if cancelled == id)
        );
        fanout.flush().await;
        let batch = store.next_batch("app_chat", 0, 10, 1 << 20).await.expect("batch");
        let outcome: serde_json::Value = serde_json::from_slice(&batch[0].event).expect("json");
        assert_eq!(
            (outcome["outcome"].as_str(), outcome["puid"].as_str()),
            (Some("missed"), Some(puid.as_str()))
        );

        tokio::time::sleep(RETENTION).await;
        assert!(notifications.get("app_chat", id).is_none(), "forgotten after the retention");
        assert!(clock.now() - started >= RETENTION + MIN_TTL, "an hour passed on the virtual clock");
        notifications.shutdown().await;
        fanout.shutdown(Duration::from_secs(1)).await;
    }
}
