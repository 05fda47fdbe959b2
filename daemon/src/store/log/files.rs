//! The outbox log's directory: numbered segments and snapshots, written by one
//! [`Writer`] and read back by [`recover`].
//!
//! ```text
//! <dir>/LOCK                       held (flock) while an outbox has the directory open
//! <dir>/0000000000000007.snap      every live entry as of the start of segment 7, then End
//! <dir>/0000000000000007.log       records appended since, in order
//! <dir>/0000000000000008.log       ... (a segment is rolled at SEGMENT_MAX)
//! ```
//!
//! A snapshot numbered *n* replaces every segment and snapshot numbered below *n*: it is
//! written to a `.tmp` file, synced, renamed into place and the directory synced, and only
//! then are the older files removed, so a crash at any point leaves either the old files
//! or the new snapshot complete. Recovery reads the newest snapshot that ends with its
//! `End` record, then every segment from its number on.
//!
//! A write that fails (a full disk) is cut back off its segment, and the writer moves to a
//! new segment for the next write: so a damaged record is only ever a segment's last, and
//! reading a segment stops at its first record that does not check.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::record::{Record, RecordError};
use crate::store::queue::CompactingQueue;
use crate::store::{OutboxEntry, OutboxEvent, StoreError};

/// First bytes of a segment.
const SEGMENT_MAGIC: &[u8; 8] = b"PRSLOG\x00\x01";
/// First bytes of a snapshot.
const SNAPSHOT_MAGIC: &[u8; 8] = b"PRSSNP\x00\x01";
/// A segment that reaches this size is closed and the next write starts a new one, so
/// that no file grows without bound between compactions.
pub(crate) const SEGMENT_MAX: u64 = 64 << 20;

/// Every app's queue, as a record sequence leaves it.
pub(crate) type Queues = HashMap<String, CompactingQueue>;

/// Applies one record to the queues: the one rule shared by the running outbox and by
/// recovery, so that replaying the log gives the state the outbox had.
pub(crate) fn apply(queues: &mut Queues, record: &Record<'_>) {
    match *record {
        Record::Append { app, key, serial, version, at_ms, json } => {
            let event = OutboxEvent { key: key.to_owned(), version, at_ms, json: json.to_vec() };
            queues.entry(app.to_owned()).or_default().push(serial, event);
        }
        Record::Ack { app, key, serial } => {
            if let Some(queue) = queues.get_mut(app) {
                queue.ack(key, serial);
            }
        }
        Record::Drop { app } => {
            queues.remove(app);
        }
        Record::End { .. } => {}
    }
}

/// What [`recover`] found.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Every app's queue (apps since removed included: the caller keeps the registered).
    pub(crate) queues: Queues,
    /// The highest serial any record carried or any snapshot reserved.
    pub(crate) last_serial: u64,
    /// Ready to append, after everything read.
    pub(crate) writer: Writer,
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { what, path: path.to_owned(), source }
}

fn number_of(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    (digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.log"))
}

fn snapshot_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.snap"))
}

/// Makes a directory's entries (a new file, a rename, a removal) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens the directory (creating it), takes its lock and reads its state back.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, StoreError> {
    std::fs::create_dir_all(dir).map_err(io_error("create the outbox directory", dir))?;
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("open the outbox lock", &lock_path))?;
    match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(StoreError::Locked(dir.to_owned())),
        Err(errno) => {
            let source = io::Error::from(errno);
            return Err(StoreError::Io { what: "lock the outbox directory", path: lock_path, source });
        }
    }
    let (mut segments, mut snapshots) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(io_error("list the outbox directory", dir))? {
        let entry = entry.map_err(io_error("list the outbox directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = number_of(name, ".log") {
            segments.push(number);
        } else if let Some(number) = number_of(name, ".snap") {
            snapshots.push(number);
        } else if name.ends_with(".snap.tmp") {
            // A snapshot that never finished: the files it would have replaced are all here.
            let _ = std::fs::remove_file(entry.path());
        }
    }
    segments.sort_unstable();
    snapshots.sort_unstable_by(|a, b| b.cmp(a));

    let mut queues = Queues::new();
    let mut last_serial = 0u64;
    let mut base = 0u64;
    let mut snapshot_bytes = 0u64;
    for &number in &snapshots {
        let path = snapshot_path(dir, number);
        let bytes = std::fs::read(&path).map_err(io_error("read an outbox snapshot", &path))?;
        match read_snapshot(&bytes) {
            Some((read, serial)) => {
                (queues, last_serial, base, snapshot_bytes) = (read, serial, number, bytes.len() as u64);
                break;
            }
            None => {
                tracing::warn!(path = %path.display(), "outbox snapshot incomplete or damaged: an older one is used")
            }
        }
    }
    let mut since_snapshot = 0u64;
    for &number in segments.iter().filter(|&&number| number >= base) {
        let path = segment_path(dir, number);
        let bytes = std::fs::read(&path).map_err(io_error("read an outbox segment", &path))?;
        since_snapshot += bytes.len() as u64;
        let Some(records) = bytes.strip_prefix(SEGMENT_MAGIC) else {
            if bytes.len() >= SEGMENT_MAGIC.len() {
                tracing::warn!(path = %path.display(), "not an outbox segment: skipped");
            }
            continue;
        };
        let (read, stop) = replay(records, &mut queues, &mut last_serial);
        if let Some(error) = stop {
            let offset = SEGMENT_MAGIC.len() + read;
            tracing::warn!(path = %path.display(), offset, %error, "outbox segment ends in a damaged record (a write cut short): the rest is ignored");
        }
    }
    // What the snapshot replaced, if a crash came before it was removed.
    for &number in segments.iter().filter(|&&number| number < base) {
        let _ = std::fs::remove_file(segment_path(dir, number));
    }
    for &number in snapshots.iter().filter(|&&number| number != base) {
        let _ = std::fs::remove_file(snapshot_path(dir, number));
    }
    let next_number = segments.iter().chain(&snapshots).max().map_or(1, |last| last + 1);
    let mut writer = Writer {
        dir: dir.to_owned(),
        current: None,
        next_number,
        since_snapshot,
        snapshot_bytes,
        _lock: lock,
    };
    // The segment new records go to is made now: an outbox that cannot write says so at
    // start, as the database does, not at the first status change.
    writer.roll()?;
    Ok(Recovered { queues, last_serial, writer })
}

/// What a segment's or a snapshot's bytes leave when read as [`recover`] reads them. For
/// the fuzz target (through `presenced::testing`), which checks that any bytes at all read
/// back as a well-formed outbox: unique keys, serials in order, batches that agree.
#[derive(Debug)]
pub struct Replayed {
    queues: Queues,
    /// Bytes of records applied (a segment's reading stops at its first damaged record).
    pub read: usize,
    /// The highest serial read: the counter a recovered outbox resumes after.
    pub last_serial: u64,
}

impl Replayed {
    /// Reads `records` as a segment's body (what follows its magic).
    pub fn segment(records: &[u8]) -> Replayed {
        let mut queues = Queues::new();
        let mut last_serial = 0;
        let (read, _) = replay(records, &mut queues, &mut last_serial);
        Replayed { queues, read, last_serial }
    }

    /// Reads `records` as a snapshot's body; `None` when recovery would not use it.
    pub fn snapshot(records: &[u8]) -> Option<Replayed> {
        let bytes = [SNAPSHOT_MAGIC.as_slice(), records].concat();
        let (queues, last_serial) = read_snapshot(&bytes)?;
        Some(Replayed { queues, read: records.len(), last_serial })
    }

    /// The apps with a queue, sorted.
    pub fn apps(&self) -> Vec<String> {
        let mut apps: Vec<String> = self.queues.keys().cloned().collect();
        apps.sort();
        apps
    }

    /// Entries waiting for `app`.
    pub fn depth(&self, app: &str) -> usize {
        self.queues.get(app).map_or(0, CompactingQueue::len)
    }

    /// A batch of `app`'s entries, as the outbox would hand it out.
    pub fn batch(&self, app: &str, after: u64, max_events: usize, max_bytes: usize) -> Vec<OutboxEntry> {
        self.queues.get(app).map_or_else(Vec::new, |queue| queue.batch(after, max_events, max_bytes))
    }
}

/// Why a segment's replay stopped before its end.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error("the last record is incomplete")]
    Torn,
}

/// Applies every record of a segment's body; returns the bytes read and, if it stopped
/// early, why.
fn replay(mut bytes: &[u8], queues: &mut Queues, last_serial: &mut u64) -> (usize, Option<Stop>) {
    let mut read = 0;
    while !bytes.is_empty() {
        match Record::decode(bytes) {
            Ok(Some((record, used))) => {
                if let Record::Append { serial, .. } | Record::Ack { serial, .. } = record {
                    *last_serial = (*last_serial).max(serial);
                }
                apply(queues, &record);
                bytes = &bytes[used..];
                read += used;
            }
            Ok(None) => return (read, Some(Stop::Torn)),
            Err(error) => return (read, Some(error.into())),
        }
    }
    (read, None)
}

/// A snapshot's queues and reserved serial, if it is complete: every record checks, the
/// last is `End`, and it counts the appends before it.
fn read_snapshot(bytes: &[u8]) -> Option<(Queues, u64)> {
    let mut rest = bytes.strip_prefix(SNAPSHOT_MAGIC)?;
    let mut queues = Queues::new();
    let mut appends = 0u64;
    let mut last_serial = 0u64;
    loop {
        let (record, used) = Record::decode(rest).ok()??;
        rest = &rest[used..];
        match record {
            Record::End { next_serial, entries } => {
                return (rest.is_empty() && entries == appends)
                    .then_some((queues, last_serial.max(next_serial)));
            }
            Record::Append { serial, .. } => {
                appends += 1;
                last_serial = last_serial.max(serial);
            }
            Record::Ack { .. } | Record::Drop { .. } => return None,
        }
        apply(&mut queues, &record);
    }
}

/// The segment being appended to.
#[derive(Debug)]
struct Segment {
    file: File,
    number: u64,
    len: u64,
}

/// Appends records to the current segment and writes snapshots; one per directory (it
/// holds the directory's lock), used by one thread at a time.
#[derive(Debug)]
pub(crate) struct Writer {
    dir: PathBuf,
    /// None after a failed write: the next write starts a segment.
    current: Option<Segment>,
    /// The number the next segment (or snapshot) takes.
    next_number: u64,
    /// Bytes in the segments after the newest snapshot.
    since_snapshot: u64,
    /// Size of the newest snapshot: about the live data.
    snapshot_bytes: u64,
    /// Held for the writer's life: a second outbox on the same directory is refused.
    _lock: File,
}

impl Writer {
    /// Appends `records` (whole encoded records) to the log, synced to disk when `sync`.
    /// On an error nothing of them stays in the log.
    pub(crate) fn append(&mut self, records: &[u8], sync: bool) -> Result<(), StoreError> {
        if self.current.as_ref().is_none_or(|segment| segment.len >= SEGMENT_MAX) {
            self.roll()?;
        }
        let Some(segment) = self.current.as_mut() else { return Err(StoreError::Closed) };
        let written = segment
            .file
            .write_all(records)
            .and_then(|()| if sync { segment.file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                segment.len += records.len() as u64;
                self.since_snapshot += records.len() as u64;
                Ok(())
            }
            Err(source) => {
                // Cut the partial write off (a shrink needs no space); the next write goes
                // to a new segment either way, so a damaged record can only end a segment.
                let _ = segment.file.set_len(segment.len);
                let path = segment_path(&self.dir, segment.number);
                self.current = None;
                Err(StoreError::Io { what: "append to the outbox log", path, source })
            }
        }
    }

    /// Starts a new segment; what was appended before stays in the old one.
    fn roll(&mut self) -> Result<(), StoreError> {
        let number = self.next_number;
        let path = segment_path(&self.dir, number);
        let created = (|| {
            let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
            file.write_all(SEGMENT_MAGIC)?;
            file.sync_data()?;
            sync_dir(&self.dir)?;
            Ok(file)
        })();
        let file = match created {
            Ok(file) => file,
            Err(source) => {
                let _ = std::fs::remove_file(&path);
                return Err(StoreError::Io { what: "start an outbox segment", path, source });
            }
        };
        self.next_number += 1;
        self.since_snapshot += SEGMENT_MAGIC.len() as u64;
        self.current = Some(Segment { file, number, len: SEGMENT_MAGIC.len() as u64 });
        Ok(())
    }

    /// Whether the segments since the last snapshot hold enough replaced or delivered
    /// history that a snapshot is worth writing: more than `factor` times the newest
    /// snapshot (about the live data), and more than `floor` bytes.
    pub(crate) fn wants_snapshot(&self, floor: u64, factor: u64) -> bool {
        self.since_snapshot > floor.max(factor.saturating_mul(self.snapshot_bytes))
    }

    /// Bytes the outbox's files hold.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.since_snapshot + self.snapshot_bytes
    }

    /// Writes `records` (every live entry as Append records, then `End`) as a snapshot of
    /// the state at the start of a new segment, and removes every file it replaces. The
    /// caller takes the state between two appends, so that it holds exactly what the
    /// segments before the new one hold (acknowledgements not yet appended are already
    /// applied, which changes nothing when they are replayed after it).
    pub(crate) fn snapshot(&mut self, records: &[u8]) -> Result<(), StoreError> {
        self.roll()?;
        let Some(number) = self.current.as_ref().map(|segment| segment.number) else {
            return Err(StoreError::Closed);
        };
        let path = snapshot_path(&self.dir, number);
        let temporary = self.dir.join(format!("{number:016}.snap.tmp"));
        let written = (|| {
            let mut file = OpenOptions::new().create_new(true).write(true).open(&temporary)?;
            file.write_all(SNAPSHOT_MAGIC)?;
            file.write_all(records)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            sync_dir(&self.dir)
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(StoreError::Io { what: "write an outbox snapshot", path, source });
        }
        // The snapshot is durable: what it replaces can go (a crash now leaves extra files,
        // which the next recovery removes).
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let old = number_of(name, ".log").or_else(|| number_of(name, ".snap"));
            if old.is_some_and(|old| old < number) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = sync_dir(&self.dir);
        self.snapshot_bytes = (SNAPSHOT_MAGIC.len() + records.len()) as u64;
        self.since_snapshot = self.current.as_ref().map_or(0, |segment| segment.len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(app: &'static str, key: &'static str, serial: u64, json: &'static [u8]) -> Record<'static> {
        Record::Append { app, key, serial, version: 0, at_ms: serial, json }
    }

    fn encode(records: &[Record<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for record in records {
            record.encode(&mut out);
        }
        out
    }

    fn live(queues: &Queues, app: &str) -> Vec<(String, u64)> {
        queues.get(app).map_or(Vec::new(), |queue| {
            queue.entries().map(|(key, serial, ..)| (key.to_owned(), serial)).collect()
        })
    }

    #[test]
    fn a_second_writer_on_one_directory_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = recover(dir.path()).expect("first");
        assert!(matches!(recover(dir.path()), Err(StoreError::Locked(_))));
        drop(first);
        recover(dir.path()).expect("after the first is gone");
    }

    #[test]
    fn the_log_replays_appends_acks_and_drops_across_segments_and_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut writer = recover(dir.path()).expect("open").writer;
            writer
                .append(&encode(&[append("a", "p:1", 1, b"one"), append("a", "p:2", 2, b"two")]), true)
                .expect("write");
            writer.roll().expect("roll");
            writer
                .append(
                    &encode(&[Record::Ack { app: "a", key: "p:1", serial: 1 }, append("b", "p:1", 3, b"b")]),
                    true,
                )
                .expect("write");
            writer
                .append(&encode(&[Record::Drop { app: "b" }, append("a", "p:2", 4, b"new")]), true)
                .expect("write");
        }
        // A crash in the middle of a write: half a record at the end of the last segment.
        let last = segment_path(dir.path(), 2);
        let mut torn = encode(&[append("a", "p:9", 9, b"lost")]);
        torn.truncate(torn.len() / 2);
        OpenOptions::new().append(true).open(&last).expect("open").write_all(&torn).expect("tear");

        let recovered = recover(dir.path()).expect("recover");
        assert_eq!(live(&recovered.queues, "a"), [("p:2".to_owned(), 4)]);
        assert!(!recovered.queues.contains_key("b"), "the drop removed b");
        assert_eq!(recovered.last_serial, 4, "the torn record's serial is not counted");
        let current = recovered.writer.current.as_ref().map(|segment| segment.number);
        assert_eq!(current, Some(3), "new writes never go to a segment that may be torn");
    }

    #[test]
    fn a_snapshot_replaces_the_files_before_it_and_a_damaged_one_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut writer = recover(dir.path()).expect("open").writer;
            writer
                .append(&encode(&[append("a", "p:1", 1, b"one"), append("a", "p:2", 2, b"two")]), true)
                .expect("write");
            writer.append(&encode(&[Record::Ack { app: "a", key: "p:1", serial: 1 }]), false).expect("write");
            writer
                .snapshot(&encode(&[
                    append("a", "p:2", 2, b"two"),
                    Record::End { next_serial: 10, entries: 1 },
                ]))
                .expect("snapshot");
            writer.append(&encode(&[append("a", "p:3", 11, b"three")]), true).expect("write");
            assert!(!segment_path(dir.path(), 1).exists(), "the snapshot replaced segment 1");
            assert!(writer.disk_bytes() > 0);
        }
        let recovered = recover(dir.path()).expect("recover");
        assert_eq!(live(&recovered.queues, "a"), [("p:2".to_owned(), 2), ("p:3".to_owned(), 11)]);
        assert_eq!(recovered.last_serial, 11);
        drop(recovered);

        // A snapshot whose End does not count its entries is not trusted.
        let path = snapshot_path(dir.path(), 2);
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&encode(&[
            append("a", "p:2", 2, b"two"),
            Record::End { next_serial: 10, entries: 5 },
        ]));
        std::fs::write(&path, bytes).expect("damage");
        assert!(read_snapshot(&std::fs::read(&path).expect("read")).is_none());
    }

    #[test]
    fn names_are_sixteen_digits_and_nothing_else() {
        assert_eq!(number_of("0000000000000007.log", ".log"), Some(7));
        assert_eq!(number_of("7.log", ".log"), None);
        assert_eq!(number_of("000000000000000x.log", ".log"), None);
        assert_eq!(number_of("0000000000000007.snap.tmp", ".snap"), None);
    }
}
