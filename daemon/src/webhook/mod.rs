//! Webhooks: how AppServices learn, in signed and batched HTTPS POSTs, what their users'
//! presence is and how their notifications ended.
//!
//! ## The contract with an AppService
//!
//! Every POST carries one JSON object, `{"app_id": "...", "events": [...]}`, and the three
//! [Standard Webhooks](https://www.standardwebhooks.com/) headers, so that a receiver in any
//! language verifies it with an off-the-shelf library ([`secret`]):
//!
//! - `webhook-id`: the same for every retry of the same content, so receivers can
//!   deduplicate;
//! - `webhook-timestamp`: Unix seconds at send time, signed, against replays;
//! - `webhook-signature`: `v1,` + base64 HMAC-SHA256 over `id.timestamp.body` under the
//!   app's `whsec_` secret.
//!
//! Only a 2xx answer acknowledges a batch. 3xx is a failure (redirects are not followed),
//! 410 Gone disables the app's deliveries until an admin re-enables it, 429/502/503/504
//! throttle (honouring `Retry-After`), and everything else, timeouts and connection errors
//! included, is retried with exponential backoff and jitter.
//!
//! ## Presence is state, not a log
//!
//! The durable outbox ([`Outbox`](crate::store::Outbox)) is compacted by key: a PUID's newer
//! presence event replaces the waiting one. An AppService that was down for hours receives,
//! once back, the latest state of each PUID that changed (each with its `seq`, so stale
//! events can be dropped) and every notification outcome (those have unique keys), never a
//! replay of every flap. The outbox survives `kill -9`: an event is in it once a store
//! transaction committed it.
//!
//! ## The engine ([`fanout`])
//!
//! ```text
//! publish() ──> Outbox::append ──(the outbox's group commit)──> stored
//!                                                                 │ commit report (CommitListener):
//!                                                                 │ one wake per app per commit
//!                                                                 v
//!                 per-app delivery task: wait for the window ──> next batches ──> sign ──> POSTs
//!                                        ^                 (after those in flight)           │
//!                                        └── ack on 2xx / backoff, from the front again ─────┘
//! ```
//!
//! - **Durability is the outbox's.** `publish` hands events to the outbox and returns; the
//!   outbox decides how appends share a transaction (the redb one commits whatever
//!   accumulated during its previous fsync, see [`crate::store::embedded`]) and reports
//!   each commit, once durable, to the fan-out ([`CommitListener`](crate::store::CommitListener)):
//!   per app, how many events and bytes, the oldest `at`, the depth after it. Only then is
//!   the app's delivery task woken, and only if that changes what it waits for (a first
//!   event, or a batch just filled): publishing costs no future, channel or task hop.
//!   The batch window counts from the oldest event's `at` (the change itself), so the
//!   commit's fsync does not lengthen it.
//! - **One task per app, several batches in flight where order allows.** Presence events
//!   carry `seq` (receivers keep the latest) and outcomes and pings stand alone, so batches
//!   of those overlap, up to `max_in_flight` (4 by default; over HTTP/2 they share one
//!   connection): a batch starts with the entries after those already in flight. Grant,
//!   revoke and reset carry no `seq`, so a batch holding one never overlaps another: the
//!   batches before it land first, and nothing starts until it is answered. A slow or dead
//!   AppService only ever blocks its own task: every POST has a timeout, and the pooled
//!   client serves all apps concurrently.
//! - **Batching.** A batch forms when its first waiting event is one window old (250 ms by
//!   default), or at once when enough is waiting to fill it (1,000 events or 256 KiB).
//! - **Retries read again.** A failed batch stops new ones; once those in flight have
//!   landed and the backoff has passed, batches are read afresh from the front, so events
//!   that changed while the receiver was failing are coalesced into the retry; the `webhook-id`, a hash of the
//!   batch's (key, serial) pairs, changes exactly when the content does. Acknowledging only
//!   removes entries whose serial still matches, so an update that arrived while its
//!   predecessor was in flight is delivered too.
//!
//! ## What happened to each POST ([`log`])
//!
//! Every attempt (time, `webhook-id`, events, status or error, latency, attempt number,
//! next retry) goes into a bounded in-memory ring per app, which the API serves to the app
//! and the operator and the console shows.
//!
//! ## Not into the operator's network ([`guard`])
//!
//! Webhook URLs must be https and reach public addresses only (unless in dev mode or
//! allow-listed). This is checked when an app registers and again at every connection,
//! through a DNS resolver that drops forbidden addresses, so DNS rebinding cannot get
//! around it.

pub(crate) mod fanout;
pub(crate) mod guard;
pub(crate) mod log;
pub(crate) mod secret;
