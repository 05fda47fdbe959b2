//! The outbox log's records: how an append, an acknowledgement, an app's removal and a
//! snapshot's end are laid out on disk, and a decoder that is bounded and total (any bytes
//! give a record, "not yet complete" or a clear error; never a panic or an unbounded
//! allocation).
//!
//! ```text
//! record = len: u32 LE | crc: u32 LE | body (len bytes)        crc = CRC-32 (IEEE) of body
//! body   = kind: u8 | fields
//!   1 append  : app | key | serial u64 | version u64 | at_ms u64 | json (u32 LE length, bytes)
//!   2 ack     : app | key | serial u64
//!   3 drop    : app
//!   4 end     : next_serial u64 | entries u64                    (closes a snapshot)
//! app, key = u16 LE length, UTF-8 bytes                          integers little-endian
//! ```
//!
//! The length and checksum come first so that a torn tail (a crash in the middle of a
//! write) reads as incomplete or as a checksum mismatch, never as a shorter valid record.

/// Bytes before a record's body: its length and checksum.
pub(crate) const HEADER: usize = 8;
/// The largest body accepted: far above any event (webhook events are a few hundred bytes,
/// notification outcomes at most a few KB), small enough that a corrupt length cannot make
/// the reader allocate much.
pub(crate) const MAX_BODY: usize = 1 << 24;

const APPEND: u8 = 1;
const ACK: u8 = 2;
const DROP: u8 = 3;
const END: u8 = 4;

/// One record, borrowing from the bytes it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// An event stored in an app's outbox under `serial`.
    Append {
        /// The app.
        app: &'a str,
        /// The compaction key.
        key: &'a str,
        /// The entry's serial, never reused.
        serial: u64,
        /// Orders the versions of one key (see `OutboxEvent::version`).
        version: u64,
        /// The event's `at`, Unix milliseconds.
        at_ms: u64,
        /// The event's JSON.
        json: &'a [u8],
    },
    /// A delivered entry, removed if its serial still matches.
    Ack {
        /// The app.
        app: &'a str,
        /// The compaction key.
        key: &'a str,
        /// The serial that was delivered.
        serial: u64,
    },
    /// An app removed: everything it had goes.
    Drop {
        /// The app.
        app: &'a str,
    },
    /// The last record of a snapshot: proves it complete.
    End {
        /// The serial counter when the snapshot was taken (no serial below it is handed
        /// out again).
        next_serial: u64,
        /// Append records in the snapshot, checked when it is read.
        entries: u64,
    },
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The length field is over [`MAX_BODY`].
    #[error("record length {0} is over the limit")]
    TooLong(usize),
    /// The body does not match its checksum (a torn or corrupted write).
    #[error("record checksum mismatch")]
    Checksum,
    /// The checksum matched but the body does not parse.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

impl Record<'_> {
    /// Appends the record, framed, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        match *self {
            Record::Append { app, key, serial, version, at_ms, json } => {
                out.push(APPEND);
                put_str(out, app);
                put_str(out, key);
                for value in [serial, version, at_ms] {
                    out.extend_from_slice(&value.to_le_bytes());
                }
                let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&json[..len as usize]);
            }
            Record::Ack { app, key, serial } => {
                out.push(ACK);
                put_str(out, app);
                put_str(out, key);
                out.extend_from_slice(&serial.to_le_bytes());
            }
            Record::Drop { app } => {
                out.push(DROP);
                put_str(out, app);
            }
            Record::End { next_serial, entries } => {
                out.push(END);
                out.extend_from_slice(&next_serial.to_le_bytes());
                out.extend_from_slice(&entries.to_le_bytes());
            }
        }
        let body = &out[start + HEADER..];
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(body);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the record at the start of `bytes`: `Ok(None)` when `bytes` ends before the
    /// record does (a torn tail, or more to read), else the record and the bytes it took.
    pub fn decode(bytes: &[u8]) -> Result<Option<(Record<'_>, usize)>, RecordError> {
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER>() else { return Ok(None) };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_BODY {
            return Err(RecordError::TooLong(len));
        }
        let Some(body) = rest.get(..len) else { return Ok(None) };
        if crc32fast::hash(body) != crc {
            return Err(RecordError::Checksum);
        }
        let mut reader = Reader(body);
        let record = match reader.u8()? {
            APPEND => Record::Append {
                app: reader.str()?,
                key: reader.str()?,
                serial: reader.u64()?,
                version: reader.u64()?,
                at_ms: reader.u64()?,
                json: {
                    let len = reader.u32()? as usize;
                    reader.take(len)?
                },
            },
            ACK => Record::Ack { app: reader.str()?, key: reader.str()?, serial: reader.u64()? },
            DROP => Record::Drop { app: reader.str()? },
            END => Record::End { next_serial: reader.u64()?, entries: reader.u64()? },
            _ => return Err(RecordError::Malformed("unknown kind")),
        };
        if !reader.0.is_empty() {
            return Err(RecordError::Malformed("bytes after the record"));
        }
        Ok(Some((record, HEADER + len)))
    }
}

/// Writes a string with its u16 length; app ids and keys are far shorter (the API bounds
/// them), so the cut never happens in practice and keeps the record decodable if it did.
fn put_str(out: &mut Vec<u8>, value: &str) {
    let mut end = value.len().min(usize::from(u16::MAX));
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&value.as_bytes()[..end]);
}

/// Reads fields off a body, each step checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < len {
            return Err(RecordError::Malformed("truncated field"));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut value = [0; 8];
        value.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(value))
    }

    fn str(&mut self) -> Result<&'a str, RecordError> {
        let bytes = self.take(2)?;
        let len = usize::from(u16::from_le_bytes([bytes[0], bytes[1]]));
        std::str::from_utf8(self.take(len)?).map_err(|_| RecordError::Malformed("a string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Record<'static>> {
        vec![
            Record::Append {
                app: "app_a",
                key: "p:puid",
                serial: 7,
                version: 9,
                at_ms: 1_764_400_000_123,
                json: br#"{"type":"presence"}"#,
            },
            Record::Append { app: "", key: "", serial: 0, version: 0, at_ms: 0, json: b"" },
            Record::Ack { app: "app_a", key: "n:1:x", serial: u64::MAX },
            Record::Drop { app: "app_b" },
            Record::End { next_serial: 42, entries: 3 },
        ]
    }

    #[test]
    fn every_record_reads_back_as_written_and_takes_exactly_its_bytes() {
        let mut bytes = Vec::new();
        for record in all() {
            record.encode(&mut bytes);
        }
        let mut rest = bytes.as_slice();
        for record in all() {
            let (read, used) = Record::decode(rest).expect("valid").expect("complete");
            assert_eq!(read, record);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(Record::decode(rest), Ok(None));
    }

    #[test]
    fn a_torn_tail_is_incomplete_and_a_flipped_bit_is_a_checksum_error() {
        let mut bytes = Vec::new();
        all()[0].encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(Record::decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        for at in HEADER..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert_eq!(Record::decode(&flipped), Err(RecordError::Checksum), "bit at {at}");
        }
    }

    #[test]
    fn lengths_are_bounded_and_bodies_checked_field_by_field() {
        let mut huge = Vec::from(((MAX_BODY + 1) as u32).to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(Record::decode(&huge), Err(RecordError::TooLong(MAX_BODY + 1)));
        let framed = |body: &[u8]| {
            let mut out = Vec::from((body.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            out.extend_from_slice(body);
            out
        };
        assert_eq!(Record::decode(&framed(&[9])), Err(RecordError::Malformed("unknown kind")));
        assert_eq!(Record::decode(&framed(&[])), Err(RecordError::Malformed("truncated field")));
        assert_eq!(
            Record::decode(&framed(&[DROP, 5, 0, b'a'])),
            Err(RecordError::Malformed("truncated field"))
        );
        assert_eq!(
            Record::decode(&framed(&[DROP, 1, 0, 0xff])),
            Err(RecordError::Malformed("a string is not UTF-8"))
        );
        assert_eq!(
            Record::decode(&framed(&[DROP, 1, 0, b'a', 0])),
            Err(RecordError::Malformed("bytes after the record"))
        );
        // An append whose JSON length points past the body.
        let mut body = vec![APPEND, 0, 0, 0, 0];
        body.extend_from_slice(&[0; 24]);
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Record::decode(&framed(&body)), Err(RecordError::Malformed("truncated field")));
    }
}
