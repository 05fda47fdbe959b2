//! The storage contract, once, as test suites generic over the implementation; the
//! [`contract_suite!`] invocations at the bottom run every suite against every
//! implementation (redb in a temporary directory, and memory). A new implementation adds
//! one line there.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::{
    AppRecord, AppStore, Commit, CommitListener, Departure, NotificationStore, Outbox, OutboxEntry,
    OutboxEvent, PreviousSecret, RevocationStore, RunJournal, SessionChange, StoredSession, TicketStore,
    Tombstone,
};

/// A registered app with a made-up record (shared with the implementations' own tests).
pub(crate) fn app(id: &str) -> AppRecord {
    AppRecord {
        id: id.to_owned(),
        name: format!("{id} name"),
        webhook_url: format!("https://{id}.example/hook"),
        api_key_sha256: "00".repeat(32),
        webhook_secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        created_ms: 1_700_000_000_000,
        disabled: false,
        previous_secret: None,
    }
}

fn ev(key: &str, body: &str) -> OutboxEvent {
    OutboxEvent {
        key: key.to_owned(),
        version: 0,
        at_ms: 1_700_000_000_000 + body.len() as u64,
        json: body.as_bytes().to_vec(),
    }
}

fn keys(entries: &[OutboxEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.key.as_str()).collect()
}

fn acks(entries: &[OutboxEntry]) -> Vec<(String, u64)> {
    entries.iter().map(|e| (e.key.clone(), e.serial)).collect()
}

/// A commit as a [`Recorder`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Told {
    pub(crate) app_id: String,
    pub(crate) registered: bool,
    pub(crate) events: usize,
    pub(crate) bytes: usize,
    pub(crate) oldest_at_ms: u64,
    pub(crate) depth: u64,
}

/// A [`CommitListener`] that keeps every report, one `Vec` per commit.
#[derive(Debug, Default)]
pub(crate) struct Recorder(Mutex<Vec<Vec<Told>>>);

impl CommitListener for Recorder {
    fn committed(&self, commits: &[Commit<'_>]) {
        let told = commits
            .iter()
            .map(|c| Told {
                app_id: c.app_id.to_owned(),
                registered: c.registered,
                events: c.events,
                bytes: c.bytes,
                oldest_at_ms: c.oldest_at_ms,
                depth: c.depth,
            })
            .collect();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(told);
    }
}

impl Recorder {
    /// A recorder listening to `outbox` from now on.
    pub(crate) fn on<O: Outbox>(outbox: &O) -> Arc<Recorder> {
        let recorder = Arc::new(Recorder::default());
        let listener: Weak<dyn CommitListener> = Arc::downgrade(&recorder) as Weak<Recorder>;
        outbox.listen(listener);
        recorder
    }

    /// Every report so far, per commit.
    pub(crate) fn commits(&self) -> Vec<Vec<Told>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every report so far, flattened.
    pub(crate) fn told(&self) -> Vec<Told> {
        self.commits().into_iter().flatten().collect()
    }
}

/// Appends, waits until it is durable, and returns whether the outbox reported it stored.
async fn append<O: Outbox>(outbox: &O, app_id: &str, events: &[OutboxEvent]) -> bool {
    let recorder = Recorder::on(outbox);
    outbox.append(app_id, events.to_vec());
    outbox.flush().await.expect("flush");
    let told = recorder.told();
    assert_eq!(told.len(), 1, "one report for one append: {told:?}");
    assert_eq!(told[0].app_id, app_id);
    assert_eq!(told[0].events, events.len());
    told[0].registered
}

async fn batch<O: Outbox>(outbox: &O, app_id: &str) -> Vec<OutboxEntry> {
    outbox.next_batch(app_id, 0, 100, 1 << 20).await.expect("batch")
}

/// Apps round-trip, list in id order, update in place, delete once.
pub(crate) fn apps<S: AppStore>(store: &S) {
    store.put_app(&app("app_b")).expect("put b");
    store.put_app(&app("app_a")).expect("put a");
    let mut changed = app("app_a");
    changed.disabled = true;
    store.put_app(&changed).expect("replace");
    assert_eq!(store.get_app("app_a").expect("get"), Some(changed));
    assert_eq!(store.get_app("app_zzz").expect("get"), None);
    let ids: Vec<String> = store.list_apps().expect("list").into_iter().map(|a| a.id).collect();
    assert_eq!(ids, ["app_a", "app_b"]);

    assert_eq!(store.update_app("app_none", &mut |app| app.disabled = true).expect("update"), None);
    assert_eq!(store.get_app("app_none").expect("get"), None, "no app is created by an update");
    let secret = store.get_app("app_b").expect("get").expect("app").webhook_secret;
    let updated = store.update_app("app_b", &mut |app| app.disabled = true).expect("update").expect("app");
    assert!(updated.disabled);
    let stored = store.get_app("app_b").expect("get").expect("app");
    assert!(stored.disabled);
    assert_eq!(stored.webhook_secret, secret);
    // A rotation's previous secret and its expiry are kept, and removed by a later write.
    let previous = PreviousSecret { secret: secret.clone(), expires_ms: 1_700_000_086_400_000 };
    let kept = Some(previous.clone());
    store.update_app("app_b", &mut |app| app.previous_secret = kept.clone()).expect("update");
    assert_eq!(store.get_app("app_b").expect("get").expect("app").previous_secret, Some(previous));
    store.update_app("app_b", &mut |app| app.previous_secret = None).expect("update");
    assert_eq!(store.get_app("app_b").expect("get").expect("app").previous_secret, None);

    assert!(store.delete_app("app_a").expect("delete"));
    assert!(!store.delete_app("app_a").expect("delete again"));
    assert_eq!(store.get_app("app_a").expect("get"), None);
}

/// A newer event for a waiting key replaces it and moves to the back; within one append
/// the last one wins; depth counts distinct keys per app; `at` travels with the event.
pub(crate) async fn outbox_compaction<S: AppStore + Outbox>(store: &S) {
    store.put_app(&app("app_a")).expect("put");
    store.put_app(&app("app_b")).expect("put");
    assert_eq!(store.depth("app_a"), 0);
    assert!(append(store, "app_a", &[ev("p:1", "1a"), ev("p:2", "2a")]).await);
    for round in 0..50 {
        assert!(append(store, "app_a", &[ev("p:1", &format!("1-{round}"))]).await);
    }
    assert_eq!(store.depth("app_a"), 2);
    let entries = batch(store, "app_a").await;
    assert_eq!(keys(&entries), ["p:2", "p:1"]);
    assert_eq!(entries[1].event, b"1-49");
    assert_eq!(entries[1].at_ms, ev("p:1", "1-49").at_ms, "the event's at is kept beside it");
    assert!(entries[0].serial < entries[1].serial);
    assert!(append(store, "app_a", &[ev("p:3", "x"), ev("p:3", "yy")]).await);
    let entries = batch(store, "app_a").await;
    assert_eq!(keys(&entries), ["p:2", "p:1", "p:3"]);
    assert_eq!(entries[2].event, b"yy");
    assert_eq!(store.depth("app_a"), 3);
    assert!(append(store, "app_b", &[ev("p:1", "other")]).await);
    assert_eq!(store.depth("app_b"), 1, "apps are separate");
    assert_eq!(store.depth("app_a"), 3);
}

/// A late event with a lower version never replaces the newer state of its key, whether
/// the newer one is still waiting to be written or already stored; an equal or higher one
/// does. Unversioned events (0) always replace.
pub(crate) async fn outbox_versions<S: AppStore + Outbox>(store: &S) {
    store.put_app(&app("app_a")).expect("put");
    let versioned = |key: &str, version, body: &str| OutboxEvent { version, ..ev(key, body) };
    // In one append (the pending queue).
    assert!(append(store, "app_a", &[versioned("p:1", 20, "new"), versioned("p:1", 10, "stale")]).await);
    assert_eq!(batch(store, "app_a").await[0].event, b"new");
    // Across appends (what is stored).
    assert!(append(store, "app_a", &[versioned("p:1", 19, "stale again")]).await);
    let entries = batch(store, "app_a").await;
    assert_eq!((entries.len(), entries[0].event.as_slice()), (1, &b"new"[..]));
    assert_eq!(store.depth("app_a"), 1);
    assert!(append(store, "app_a", &[versioned("p:1", 21, "newer")]).await);
    assert_eq!(batch(store, "app_a").await[0].event, b"newer");
    assert!(append(store, "app_a", &[ev("a:1", "grant"), ev("a:1", "revoke")]).await);
    assert_eq!(batch(store, "app_a").await[1].event, b"revoke");
}

/// Appends that are not waited for in between still land in call order, `flush` waits for
/// all of them, and every one was reported (per app, once per commit) before it resolves.
pub(crate) async fn outbox_call_order_and_flush<S: AppStore + Outbox>(store: &S) {
    store.put_app(&app("app_a")).expect("put");
    store.put_app(&app("app_b")).expect("put");
    let recorder = Recorder::on(store);
    for i in 0..20 {
        store.append("app_a", vec![ev("p:1", &i.to_string())]);
    }
    store.append("app_b", vec![ev("p:9", "b"), ev("p:9", "bb")]);
    store.append("app_a", vec![ev("p:2", "last")]);
    store.append("app_nobody", vec![ev("p:1", "lost")]);
    store.flush().await.expect("flush");
    assert_eq!(store.depth("app_a"), 2, "flushed means stored");
    let commits = recorder.commits();
    for commit in &commits {
        let mut apps: Vec<_> = commit.iter().map(|told| told.app_id.as_str()).collect();
        let reported = apps.len();
        apps.dedup();
        assert_eq!(apps.len(), reported, "one report per app per commit: {commit:?}");
    }
    let told = recorder.told();
    let of = |app_id: &str| told.iter().filter(|t| t.app_id == app_id).cloned().collect::<Vec<_>>();
    let (a, b, nobody) = (of("app_a"), of("app_b"), of("app_nobody"));
    assert_eq!(a.iter().map(|t| t.events).sum::<usize>(), 21, "every append counted, before compaction");
    assert_eq!(
        a.iter().map(|t| t.bytes).sum::<usize>(),
        (0..20).map(|i: u32| i.to_string().len()).sum::<usize>() + 4
    );
    assert_eq!(a.iter().map(|t| t.oldest_at_ms).min(), Some(1_700_000_000_001), "the oldest event's at");
    assert_eq!(a.last().map(|t| t.depth), Some(2), "the depth after the last commit");
    assert!(a.iter().all(|t| t.registered));
    assert_eq!(b.len(), 1, "one append, one commit: {b:?}");
    assert_eq!((b[0].events, b[0].bytes, b[0].depth, b[0].oldest_at_ms), (2, 3, 1, 1_700_000_000_001));
    assert_eq!(nobody.len(), 1);
    assert!(!nobody[0].registered, "an unregistered app is reported as such");
    let entries = batch(store, "app_a").await;
    assert_eq!(keys(&entries), ["p:1", "p:2"]);
    assert_eq!(entries[0].event, b"19", "the last call won");
}

/// An ack removes only entries whose serial still matches.
pub(crate) async fn outbox_stale_ack<S: AppStore + Outbox>(store: &S) {
    store.put_app(&app("app_a")).expect("put");
    store.put_app(&app("app_b")).expect("put");
    append(store, "app_a", &[ev("p:1", "old"), ev("p:2", "two")]).await;
    let in_flight = batch(store, "app_a").await;
    // p:1 changes while the batch is in flight.
    append(store, "app_a", &[ev("p:1", "new")]).await;
    assert_eq!(store.ack("app_a", acks(&in_flight)).await.expect("ack"), 1);
    let left = batch(store, "app_a").await;
    assert_eq!(keys(&left), ["p:1"]);
    assert_eq!(left[0].event, b"new");
    assert_eq!(store.depth("app_a"), 1);
    // Acking again, or acking another app's keys, removes nothing.
    assert_eq!(store.ack("app_a", acks(&in_flight)).await.expect("ack"), 0);
    assert_eq!(store.ack("app_b", acks(&left)).await.expect("ack"), 0);
    assert_eq!(store.ack("app_a", Vec::new()).await.expect("ack"), 0);
    assert_eq!(store.ack("app_a", acks(&left)).await.expect("ack"), 1);
    assert_eq!(store.depth("app_a"), 0);
    assert!(batch(store, "app_a").await.is_empty());
}

/// Batches honour the event and byte limits but hold at least one entry.
pub(crate) async fn outbox_batch_limits<S: AppStore + Outbox>(store: &S) {
    store.put_app(&app("app_a")).expect("put");
    store.put_app(&app("app_b")).expect("put");
    let events: Vec<_> = (0..10).map(|i| ev(&format!("p:{i}"), &"x".repeat(100))).collect();
    append(store, "app_a", &events).await;
    let sizes = async |max_events, max_bytes| {
        store.next_batch("app_a", 0, max_events, max_bytes).await.expect("batch").len()
    };
    assert_eq!(sizes(3, 1 << 20).await, 3);
    assert_eq!(sizes(100, 350).await, 3);
    assert_eq!(sizes(100, 300).await, 3);
    assert_eq!(sizes(100, 299).await, 2);
    let one = store.next_batch("app_a", 0, 100, 10).await.expect("batch");
    assert_eq!(keys(&one), ["p:0"], "an entry larger than the limit still goes, alone");
    assert_eq!(sizes(0, 10).await, 1);
    assert_eq!(sizes(100, 1 << 20).await, 10);
    assert!(store.next_batch("app_b", 0, 100, 1 << 20).await.expect("batch").is_empty(), "apps are separate");
}

/// A batch after a serial holds only later entries, the replacement of an entry in flight
/// among them, in serial order.
pub(crate) async fn outbox_batch_after<S: AppStore + Outbox>(store: &S) {
    store.put_app(&app("app_a")).expect("put");
    let events: Vec<_> = (0..6).map(|i| ev(&format!("p:{i}"), "x")).collect();
    append(store, "app_a", &events).await;
    let first = store.next_batch("app_a", 0, 2, 1 << 20).await.expect("batch");
    assert_eq!(keys(&first), ["p:0", "p:1"]);
    let cursor = first.last().expect("entry").serial;
    let second = store.next_batch("app_a", cursor, 2, 1 << 20).await.expect("batch");
    assert_eq!(keys(&second), ["p:2", "p:3"]);
    append(store, "app_a", &[ev("p:0", "y")]).await;
    let cursor = second.last().expect("entry").serial;
    let third = store.next_batch("app_a", cursor, 100, 1 << 20).await.expect("batch");
    assert_eq!(keys(&third), ["p:4", "p:5", "p:0"], "the replaced p:0 waits after the cursor");
    let last = third.last().expect("entry").serial;
    assert!(store.next_batch("app_a", last, 100, 1 << 20).await.expect("batch").is_empty());
    // The first batch's stale p:0 acknowledges nothing; the rest of it goes.
    assert_eq!(store.ack("app_a", acks(&first)).await.expect("ack"), 1);
    let front = store.next_batch("app_a", 0, 100, 1 << 20).await.expect("batch");
    assert_eq!(keys(&front), ["p:2", "p:3", "p:4", "p:5", "p:0"]);
}

/// Appends for an unknown app are refused; deleting an app removes its outbox only, and an
/// id registered again starts empty.
pub(crate) async fn outbox_follows_the_apps<S: AppStore + Outbox>(store: &S) {
    assert!(!append(store, "app_nobody", &[ev("p:1", "1")]).await);
    assert_eq!(store.depth("app_nobody"), 0);
    assert!(batch(store, "app_nobody").await.is_empty());
    store.put_app(&app("app_a")).expect("put");
    store.put_app(&app("app_b")).expect("put");
    append(store, "app_a", &[ev("p:1", "a"), ev("p:2", "b")]).await;
    append(store, "app_b", &[ev("p:1", "a")]).await;
    assert!(store.delete_app("app_a").expect("delete"));
    assert_eq!(store.depth("app_a"), 0);
    assert!(batch(store, "app_a").await.is_empty());
    assert!(!append(store, "app_a", &[ev("p:3", "c")]).await, "a removed app gets nothing stored");
    assert_eq!(store.depth("app_b"), 1);
    store.put_app(&app("app_a")).expect("put");
    assert!(batch(store, "app_a").await.is_empty(), "re-registering starts from an empty outbox");
    assert_eq!(store.depth("app_a"), 0);
}

/// Notification records are put, replaced, listed in id order and deleted.
pub(crate) fn notifications<S: NotificationStore>(store: &S) {
    assert!(store.notifications().expect("none yet").is_empty());
    store.put_notification(9, b"other").expect("put");
    store.put_notification(7, b"first").expect("put");
    store.put_notification(7, b"second").expect("replace");
    assert_eq!(store.notifications().expect("list"), [(7, b"second".to_vec()), (9, b"other".to_vec())]);
    store.delete_notification(9).expect("delete");
    store.delete_notification(12345).expect("deleting an unknown id is fine");
    assert_eq!(store.notifications().expect("list"), [(7, b"second".to_vec())]);
}

fn session(key: u8, created_secs: u64) -> StoredSession {
    StoredSession { key: vec![key; 32], created_secs, value: vec![key, 1, 2, 3] }
}

/// TLS sessions: put, remove, load those issued since a time (oldest first), expired ones
/// deleted on the way.
pub(crate) fn tickets<S: TicketStore>(store: &S) {
    assert!(store.load_sessions(0).expect("empty").is_empty());
    store
        .save_sessions(&[
            SessionChange::Put(session(1, 1_000)),
            SessionChange::Put(session(2, 500)),
            SessionChange::Put(session(3, 2_000)),
            SessionChange::Put(session(4, 1_500)),
        ])
        .expect("save");
    store.save_sessions(&[SessionChange::Remove(vec![3; 32])]).expect("take");
    // A put then a remove of the same ticket in one batch leaves nothing.
    store
        .save_sessions(&[SessionChange::Put(session(5, 1_700)), SessionChange::Remove(vec![5; 32])])
        .expect("save");
    store.save_sessions(&[]).expect("nothing to save");
    let loaded = store.load_sessions(900).expect("load");
    assert_eq!(loaded, [session(1, 1_000), session(4, 1_500)], "oldest first, expired and taken gone");
    assert_eq!(store.load_sessions(0).expect("load"), loaded, "the expired one was deleted");
}

/// A run that never ended is reported as a crash by the next begin; the seq floor keeps
/// the maximum of what it was given.
pub(crate) fn journal<S: RunJournal>(store: &S) {
    assert!(!store.begin_run().expect("first run"), "a new store has no crashed run");
    store.end_run().expect("clean end");
    assert!(!store.begin_run().expect("after a clean end"));
    assert!(store.begin_run().expect("after a run that never ended"), "a crash");
    store.end_run().expect("clean end");

    assert_eq!(store.seq_floor().expect("none yet"), 0);
    store.set_seq_floor(500).expect("set");
    assert_eq!(store.seq_floor().expect("floor"), 500);
    store.set_seq_floor(300).expect("lower");
    assert_eq!(store.seq_floor().expect("floor"), 500, "a lower value leaves the maximum");
    store.set_seq_floor(501).expect("higher");
    assert_eq!(store.seq_floor().expect("floor"), 501);

    // Departures: taken once, replaced whole.
    assert_eq!(store.take_departures().expect("none yet"), []);
    let departure = |user: &str, deadline_ms| Departure {
        user: user.to_owned(),
        app_id: "app_a".to_owned(),
        status: "away".to_owned(),
        message: "lunch ✓".to_owned(),
        seq: 7,
        since_ms: 1_000,
        deadline_ms,
    };
    store.set_departures(&[departure("old", 1)]).expect("set");
    let both = [departure("alice", 5_000), departure("bob", 6_000)];
    store.set_departures(&both).expect("replace");
    assert_eq!(store.take_departures().expect("take"), both, "the last set, in order");
    assert_eq!(store.take_departures().expect("taken"), [], "taking removes them");
}

/// Tombstones are kept per (app, PUID), listed in that order, replaced by a newer revoke of
/// the same pair, and deleted once.
pub(crate) fn revocations<S: RevocationStore + AppStore>(store: &S) {
    let stone =
        |app: &str, puid: &str, at: u64| Tombstone { app_id: app.into(), puid: puid.into(), revoked_ms: at };
    assert_eq!(store.list_tombstones().expect("list"), []);
    store.put_tombstone(&stone("app_b", "p1", 1)).expect("put");
    store.put_tombstone(&stone("app_a", "p2", 2)).expect("put");
    store.put_tombstone(&stone("app_a", "p1", 3)).expect("put");
    store.put_tombstone(&stone("app_a", "p1", 4)).expect("again");
    let listed = store.list_tombstones().expect("list");
    assert_eq!(listed, [stone("app_a", "p1", 4), stone("app_a", "p2", 2), stone("app_b", "p1", 1)]);
    assert!(store.delete_tombstone("app_a", "p1").expect("delete"));
    assert!(!store.delete_tombstone("app_a", "p1").expect("delete again"));
    assert!(!store.delete_tombstone("app_c", "p2").expect("never there"));
    assert_eq!(store.list_tombstones().expect("list"), [stone("app_a", "p2", 2), stone("app_b", "p1", 1)]);
    // Removing an app removes its tombstones, and only its own.
    store.put_app(&app("app_a")).expect("put app");
    store.put_tombstone(&stone("app_ab", "p3", 5)).expect("put");
    assert!(store.delete_app("app_a").expect("delete app"));
    assert_eq!(store.list_tombstones().expect("list"), [stone("app_ab", "p3", 5), stone("app_b", "p1", 1)]);
}

/// Runs every suite against one implementation. `$open` turns a fresh temporary directory
/// into a store; every suite gets its own.
macro_rules! contract_suite {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;

            fn open() -> (
                tempfile::TempDir,
                impl AppStore + Outbox + NotificationStore + TicketStore + RunJournal + RevocationStore,
            ) {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = ($open)(dir.path());
                (dir, store)
            }

            #[test]
            fn apps() {
                super::apps(&open().1);
            }

            #[tokio::test]
            async fn outbox_compaction() {
                super::outbox_compaction(&open().1).await;
            }

            #[tokio::test]
            async fn outbox_versions() {
                super::outbox_versions(&open().1).await;
            }

            #[tokio::test]
            async fn outbox_call_order_and_flush() {
                super::outbox_call_order_and_flush(&open().1).await;
            }

            #[tokio::test]
            async fn outbox_stale_ack() {
                super::outbox_stale_ack(&open().1).await;
            }

            #[tokio::test]
            async fn outbox_batch_limits() {
                super::outbox_batch_limits(&open().1).await;
            }

            #[tokio::test]
            async fn outbox_batch_after() {
                super::outbox_batch_after(&open().1).await;
            }

            #[tokio::test]
            async fn outbox_follows_the_apps() {
                super::outbox_follows_the_apps(&open().1).await;
            }

            #[test]
            fn notifications() {
                super::notifications(&open().1);
            }

            #[test]
            fn tickets() {
                super::tickets(&open().1);
            }

            #[test]
            fn journal() {
                super::journal(&open().1);
            }

            #[test]
            fn revocations() {
                super::revocations(&open().1);
            }
        }
    };
}

contract_suite!(embedded, |dir: &std::path::Path| {
    super::super::embedded::EmbeddedStore::open(&dir.join(crate::STORE_FILE)).expect("open")
});
contract_suite!(memory, |_dir: &std::path::Path| super::super::memory::MemoryStore::default());
