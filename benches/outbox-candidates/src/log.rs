//! `log`: the daemon's own outbox (`LogOutbox`, behind `EmbeddedStore`), unchanged, through
//! `presenced::testing`.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use presenced::testing::store::embedded::EmbeddedStore;
use presenced::testing::store::{AppRecord, AppStore, Outbox, OutboxEvent};

use crate::store::{Candidate, Entry, Event};

/// A flush future, its error made a bool (the daemon's future type is crate-private).
type Flush = Pin<Box<dyn Future<Output = bool> + Send>>;

pub struct Log {
    store: Arc<EmbeddedStore>,
    runtime: tokio::runtime::Handle,
    apps: Vec<String>,
    /// One flush future per round appended and not yet waited for, oldest first.
    flushes: Mutex<VecDeque<Flush>>,
    waited: Mutex<u64>,
}

impl Log {
    /// Opens the store at `dir/presenced.redb` (its outbox log in `dir/presenced.outbox/`)
    /// and registers `apps`, as the fan-out bench does.
    pub fn open(dir: &Path, apps: &[String], runtime: tokio::runtime::Handle) -> Log {
        let store = Arc::new(EmbeddedStore::open(&dir.join("presenced.redb")).expect("open the log store"));
        let secret = presenced::testing::webhook::WebhookSecret::generate().to_string();
        for id in apps {
            let record = AppRecord {
                id: id.clone(),
                name: format!("candidates bench {id}"),
                webhook_url: "https://127.0.0.1:9/hook".to_owned(),
                api_key_sha256: String::new(),
                webhook_secret: secret.clone(),
                created_ms: 0,
                disabled: false,
                previous_secret: None,
            };
            store.put_app(&record).expect("register app");
        }
        Log {
            store,
            runtime,
            apps: apps.to_vec(),
            flushes: Mutex::new(VecDeque::new()),
            waited: Mutex::new(0),
        }
    }
}

impl Candidate for Log {
    fn append(&self, round: Vec<Vec<Event>>) {
        let _inside = self.runtime.enter();
        for (app, events) in round.into_iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            let events = events
                .into_iter()
                .map(|Event { key, version, at_ms, json }| OutboxEvent { key, version, at_ms, json })
                .collect();
            self.store.append(&self.apps[app], events);
        }
        // Resolves once everything appended so far is durable.
        let flush = self.store.flush();
        self.flushes.lock().unwrap().push_back(Box::pin(async move { flush.await.is_ok() }));
    }

    fn wait_durable(&self, rounds: u64) {
        let mut waited = self.waited.lock().unwrap();
        while *waited < rounds {
            let flush = self.flushes.lock().unwrap().pop_front().expect("a round appended");
            assert!(self.runtime.block_on(flush), "flush");
            *waited += 1;
        }
    }

    fn next_batch(&self, app: usize, after: u64, max: usize) -> Vec<Entry> {
        let _inside = self.runtime.enter();
        let batch = self.runtime.block_on(self.store.next_batch(&self.apps[app], after, max, usize::MAX));
        batch
            .expect("batch")
            .into_iter()
            .map(|entry| Entry { key: entry.key, serial: entry.serial, json: entry.event })
            .collect()
    }

    fn ack(&self, app: usize, delivered: Vec<(String, u64)>) {
        let _inside = self.runtime.enter();
        self.runtime.block_on(self.store.ack(&self.apps[app], delivered)).expect("ack");
    }

    fn close(&self) {
        let _inside = self.runtime.enter();
        self.runtime.block_on(self.store.flush()).expect("flush");
    }
}
