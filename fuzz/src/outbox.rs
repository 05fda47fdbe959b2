//! The outbox log target: arbitrary bytes as the records of a segment and of a snapshot,
//! read as the daemon's recovery reads its own files after a crash
//! (`presenced::testing::store::log`).
//!
//! Never a panic; every record that decodes encodes back to exactly its bytes; and
//! whatever the bytes, the outbox they leave is well formed: per app one entry per key,
//! serials strictly increasing, and batches (whole, cut by count, by bytes, or after a
//! serial, as the fan-out asks for them) that agree with each other.

use presenced::testing::store::OutboxEntry;
use presenced::testing::store::log::{Record, Replayed};

/// Checks `data` as a run of records, as a segment and as a snapshot: as given (torn and
/// damaged records), and with every record's checksum made right, so that mutations of a
/// record's fields reach the decoder and the outbox instead of stopping at the checksum.
pub fn outbox_log(data: &[u8]) {
    check(data);
    check(&with_checksums(data));
}

/// `data` with each framed record's checksum set to its body's, as far as the lengths
/// frame whole records.
fn with_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0;
    while let Some(header) = out.get(at..at + 4) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|end| *end <= out.len()) else { break };
        let crc = crc32fast::hash(&out[at + 8..end]);
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    out
}

fn check(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((record, used))) = Record::decode(rest) {
        assert!(used <= rest.len());
        let mut again = Vec::new();
        record.encode(&mut again);
        assert_eq!(again, &rest[..used], "{record:?} encodes back to its bytes");
        rest = &rest[used..];
    }
    let segment = Replayed::segment(data);
    assert!(segment.read <= data.len());
    assert_eq!(segment.read, data.len() - rest.len(), "a segment reads exactly the records that decode");
    well_formed(&segment);
    if let Some(snapshot) = Replayed::snapshot(data) {
        well_formed(&snapshot);
    }
}

fn well_formed(replayed: &Replayed) {
    for app in replayed.apps() {
        let all = replayed.batch(&app, 0, usize::MAX, usize::MAX);
        assert_eq!(all.len(), replayed.depth(&app), "a whole batch is the depth");
        let mut keys: Vec<&str> = all.iter().map(|entry| entry.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), all.len(), "one entry per key");
        assert!(all.windows(2).all(|pair| pair[0].serial < pair[1].serial), "serials increase");
        assert!(
            all.iter().all(|entry| entry.serial <= replayed.last_serial),
            "the counter covers every serial"
        );
        for cut in [0, 1, all.len() / 2, all.len().saturating_sub(1)] {
            let after = if cut == 0 { 0 } else { all.get(cut - 1).map_or(0, |entry| entry.serial) };
            let expected: Vec<&OutboxEntry> = all.iter().filter(|entry| entry.serial > after).collect();
            let batch = replayed.batch(&app, after, usize::MAX, usize::MAX);
            assert_eq!(batch.iter().collect::<Vec<_>>(), expected, "a batch after serial {after}");
            let first = replayed.batch(&app, 0, cut.max(1), usize::MAX);
            assert_eq!(first, all[..cut.max(1).min(all.len())], "a batch of {} events", cut.max(1));
        }
        let budget = all.first().map_or(0, |entry| entry.event.len() * 2);
        let by_bytes = replayed.batch(&app, 0, usize::MAX, budget);
        let bytes: usize = by_bytes.iter().map(|entry| entry.event.len()).sum();
        assert_eq!(by_bytes.is_empty(), all.is_empty(), "a batch holds one entry at least, if any waits");
        assert!(by_bytes.len() <= 1 || bytes <= budget, "a batch within {budget} bytes");
        assert_eq!(by_bytes, all[..by_bytes.len()], "a byte-cut batch is a prefix");
    }
}

/// Seeds: a segment's worth of every kind of record (appends of two apps, replacements,
/// a stale version, acks current and stale, a removal, a replayed serial), the same with
/// a torn tail, a complete snapshot, and an entry under serial 0.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let append = |app, key, serial, version, json: &'static [u8]| Record::Append {
        app,
        key,
        serial,
        version,
        at_ms: 1_764_400_000_000 + serial,
        json,
    };
    let encode = |records: &[Record<'_>]| {
        let mut out = Vec::new();
        for record in records {
            record.encode(&mut out);
        }
        out
    };
    let history = [
        append("app_a", "p:1", 1, 10, br#"{"type":"presence","puid":"1"}"#),
        append("app_a", "p:2", 2, 10, br#"{"type":"presence","puid":"2"}"#),
        append("app_b", "a:1", 3, 0, br#"{"type":"grant","puid":"1"}"#),
        append("app_a", "p:1", 4, 11, br#"{"type":"presence","puid":"1","v":2}"#),
        append("app_a", "p:1", 5, 9, br#"{"type":"presence","puid":"1","stale":true}"#),
        Record::Ack { app: "app_a", key: "p:2", serial: 2 },
        Record::Ack { app: "app_a", key: "p:1", serial: 1 },
        append("app_b", "n:7:1", 6, 0, br#"{"type":"notification","id":"7"}"#),
        append("app_c", "r", 7, 0, br#"{"type":"reset"}"#),
        Record::Drop { app: "app_c" },
        append("app_a", "p:3", 3, 1, br#"{"type":"presence","puid":"3","replayed":true}"#),
    ];
    let segment = encode(&history);
    let mut torn = segment.clone();
    torn.truncate(torn.len() - 5);
    let snapshot = encode(&[
        append("app_a", "p:1", 4, 11, br#"{"type":"presence","puid":"1","v":2}"#),
        append("app_b", "a:1", 3, 0, br#"{"type":"grant","puid":"1"}"#),
        Record::End { next_serial: 8, entries: 2 },
    ]);
    // Found by this target: an entry under serial 0 was stored, and no batch ever reached
    // it (a batch "after 0" starts past it).
    let serial_zero = encode(&[
        append("app_a", "p:1", 0, 10, br#"{"type":"presence","puid":"1"}"#),
        append("app_a", "p:2", 2, 10, br#"{"type":"presence","puid":"2"}"#),
    ]);
    vec![("segment", segment), ("torn_tail", torn), ("snapshot", snapshot), ("serial_zero", serial_zero)]
}
