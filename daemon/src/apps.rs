//! The registered AppServices, cached in memory over the [`AppStore`]: API-key lookups
//! happen on every API request and must not touch the disk.
//!
//! Every change goes through [`Apps`] (the admin API and the fan-out's 410 handling alike),
//! so the cache is always what is stored: the writes run on the blocking pool, one at a
//! time, and the cache takes each after it committed.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use dashmap::DashMap;
use ring::rand::{SecureRandom, SystemRandom};

use crate::clock::Clock;
use crate::store::{AppRecord, AppStore, PreviousSecret, StoreError, blocking};
use crate::webhook::secret::WebhookSecret;

/// Prefix of API keys, so a leaked one is recognisable in logs and secret scanners.
pub(crate) const API_KEY_PREFIX: &str = "pk_";
/// Prefix of app ids.
pub(crate) const APP_ID_PREFIX: &str = "app_";

/// What `create` returns: the record and the API key, which is shown once and never stored.
#[derive(Debug, Clone)]
pub struct Created {
    /// The stored record.
    pub app: AppRecord,
    /// The API key in clear.
    pub api_key: String,
}

/// The app registry.
#[derive(Debug)]
pub struct Apps {
    store: Arc<dyn AppStore>,
    by_id: DashMap<String, Arc<AppRecord>>,
    /// SHA-256 of the API key (hex) → app id.
    by_key: DashMap<String, String>,
    /// Held from a store write until the cache has it, so that two concurrent changes (an
    /// admin's and a 410's) reach the cache in the order they committed.
    writes: tokio::sync::Mutex<()>,
    clock: Clock,
}

impl Apps {
    /// Loads every app from the store (start-up: it blocks on the read).
    pub fn load(store: Arc<dyn AppStore>, clock: Clock) -> Result<Apps, StoreError> {
        let apps = Apps {
            store,
            by_id: DashMap::new(),
            by_key: DashMap::new(),
            writes: tokio::sync::Mutex::new(()),
            clock,
        };
        for app in apps.store.list_apps()? {
            apps.cache(app);
        }
        Ok(apps)
    }

    /// Registers an app with a fresh id, API key and webhook secret.
    pub async fn create(&self, name: &str, webhook_url: &str) -> Result<Created, StoreError> {
        let api_key = format!("{API_KEY_PREFIX}{}", random_b64(32));
        let app = AppRecord {
            id: format!("{APP_ID_PREFIX}{}", random_b64(12)),
            name: name.to_owned(),
            webhook_url: webhook_url.to_owned(),
            api_key_sha256: sha256_hex(&api_key),
            webhook_secret: WebhookSecret::generate().to_string(),
            created_ms: self.clock.unix_ms(),
            disabled: false,
            previous_secret: None,
        };
        let (store, record) = (self.store.clone(), app.clone());
        let _writes = self.writes.lock().await;
        blocking(move || store.put_app(&record)).await?;
        self.cache(app.clone());
        Ok(Created { app, api_key })
    }

    /// The app an API key belongs to.
    pub fn authenticate(&self, api_key: &str) -> Option<Arc<AppRecord>> {
        let id = self.by_key.get(&sha256_hex(api_key))?.clone();
        self.get(&id)
    }

    /// One app, from the cache.
    pub fn get(&self, id: &str) -> Option<Arc<AppRecord>> {
        self.by_id.get(id).map(|app| app.clone())
    }

    /// Whether an app id is registered.
    pub fn exists(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Every app, ordered by id, from the cache.
    pub fn list(&self) -> Vec<AppRecord> {
        let mut apps: Vec<AppRecord> = self.by_id.iter().map(|app| AppRecord::clone(app.value())).collect();
        apps.sort_by(|a, b| a.id.cmp(&b.id));
        apps
    }

    /// Replaces an app's webhook secret. With a zero `overlap` the old one stops working at
    /// once; otherwise it keeps signing beside the new one for `overlap`, so receivers can
    /// switch without a gap. A previous secret still in its overlap is dropped: only the
    /// one just replaced is kept, so a receiver is never more than one rotation behind.
    pub async fn rotate_secret(&self, id: &str, overlap: Duration) -> Result<Option<AppRecord>, StoreError> {
        let expires_ms = self.clock.unix_ms().saturating_add(overlap.as_millis() as u64);
        self.modify(id, move |app| {
            let old = std::mem::replace(&mut app.webhook_secret, WebhookSecret::generate().to_string());
            app.previous_secret = (!overlap.is_zero()).then_some(PreviousSecret { secret: old, expires_ms });
        })
        .await
    }

    /// Replaces an app's API key, for a key that leaked: the old one stops working at once
    /// (no overlap: a stolen key must not keep working), everything else stays, the app's
    /// id and so its users' PUIDs included. Returns the record and the new key, which is
    /// shown this once (only its digest is kept).
    pub async fn rotate_key(&self, id: &str) -> Result<Option<(AppRecord, String)>, StoreError> {
        let api_key = format!("{API_KEY_PREFIX}{}", random_b64(32));
        let digest = sha256_hex(&api_key);
        let app = self.modify(id, move |app| app.api_key_sha256 = digest.clone()).await?;
        Ok(app.map(|app| (app, api_key)))
    }

    /// Turns webhook deliveries back on after a 410 disabled them.
    pub async fn enable(&self, id: &str) -> Result<Option<AppRecord>, StoreError> {
        self.modify(id, |app| app.disabled = false).await
    }

    /// Turns webhook deliveries off: the endpoint answered 410 Gone.
    pub async fn disable(&self, id: &str) -> Result<Option<AppRecord>, StoreError> {
        self.modify(id, |app| app.disabled = true).await
    }

    /// Removes an app and its undelivered events.
    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let (store, owned) = (self.store.clone(), id.to_owned());
        let _writes = self.writes.lock().await;
        let removed = blocking(move || store.delete_app(&owned)).await?;
        if let Some((_, app)) = self.by_id.remove(id) {
            self.by_key.remove(&app.api_key_sha256);
        }
        Ok(removed)
    }

    /// Changes one app in one store transaction, then caches the result.
    async fn modify(
        &self,
        id: &str,
        change: impl FnMut(&mut AppRecord) + Send + 'static,
    ) -> Result<Option<AppRecord>, StoreError> {
        let (store, owned) = (self.store.clone(), id.to_owned());
        let clock = self.clock;
        let mut change = change;
        // Every write also drops an expired previous secret, so one rotated with an overlap
        // leaves the store at the next change after its expiry (it is never used once
        // expired in any case: see `AppRecord::live_previous_secret`).
        let mut change = move |app: &mut AppRecord| {
            change(app);
            if app.live_previous_secret(clock.unix_ms()).is_none() {
                app.previous_secret = None;
            }
        };
        let _writes = self.writes.lock().await;
        let app = blocking(move || store.update_app(&owned, &mut change)).await?;
        if let Some(app) = &app {
            self.cache(app.clone());
        }
        Ok(app)
    }

    /// Caches a record just written, under the writes lock (so the record it replaces is
    /// the one cached). A key that changed leaves the key index: the old key is refused from
    /// this write on.
    fn cache(&self, app: AppRecord) {
        let stale = self
            .by_id
            .get(&app.id)
            .map(|old| old.api_key_sha256.clone())
            .filter(|old| *old != app.api_key_sha256);
        if let Some(stale) = stale {
            self.by_key.remove(&stale);
        }
        self.by_key.insert(app.api_key_sha256.clone(), app.id.clone());
        self.by_id.insert(app.id.clone(), Arc::new(app));
    }
}

/// Lowercase hex SHA-256, for API keys at rest.
pub(crate) fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The system RNG failing is not recoverable; an all-zero key would be worse than none.
    SystemRandom::new().fill(&mut buf).expect("system randomness");
    B64URL.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// Rotations racing each other leave exactly the last key working: the key index
    /// follows the record each write replaces, not a copy read before the write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_key_rotations_leave_only_the_last_key() {
        let apps = Arc::new(Apps::load(Arc::new(MemoryStore::default()), Clock::system()).expect("apps"));
        let created = apps.create("chat", "https://example.com/hook").await.expect("create");
        let id = created.app.id.clone();
        let rotations: Vec<_> = (0..8)
            .map(|_| {
                let (apps, id) = (apps.clone(), id.clone());
                tokio::spawn(async move { apps.rotate_key(&id).await.expect("rotate").expect("app").1 })
            })
            .collect();
        let mut keys = vec![created.api_key];
        for rotation in rotations {
            keys.push(rotation.await.expect("task"));
        }
        let current = apps.get(&id).expect("app").api_key_sha256.clone();
        let working: Vec<&String> = keys.iter().filter(|key| apps.authenticate(key).is_some()).collect();
        assert_eq!(working.len(), 1, "one key works, the last written");
        assert_eq!(sha256_hex(working[0]), current);
        assert_eq!(apps.by_key.len(), 1, "no stale key is left in the index");
    }
}
