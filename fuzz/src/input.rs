//! The byte reader the session targets interpret their input with.

/// Reads a fuzz input front to back. Once it runs out every read gives zeros, so any input
/// is a complete program: the fuzzer never has to get lengths exactly right.
#[derive(Debug)]
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One byte, or zero at the end.
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&byte, rest)) => {
                self.0 = rest;
                byte
            }
            None => 0,
        }
    }

    /// Bit 0 of the next byte.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// Up to `len` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }

    /// Bytes whose count is the next byte.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.u8());
        self.bytes(len)
    }

    /// Bytes whose count is the next two bytes.
    pub fn long_bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16());
        self.bytes(len)
    }

    /// A string of up to `len` bytes, invalid UTF-8 replaced (the daemon's decoders take
    /// `&str`: invalid UTF-8 never reaches them).
    pub fn text(&mut self, len: usize) -> String {
        String::from_utf8_lossy(self.bytes(len)).into_owned()
    }

    /// A string whose length is the next byte.
    pub fn short_text(&mut self) -> String {
        let len = usize::from(self.u8());
        self.text(len)
    }

    /// Everything left, as a string.
    pub fn rest_text(&mut self) -> String {
        self.text(usize::MAX)
    }
}

/// Writes what [`Input`] reads: the seed generator builds session scripts with it.
#[derive(Debug, Default, Clone)]
pub struct Script(Vec<u8>);

impl Script {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one byte.
    pub fn u8(mut self, value: u8) -> Self {
        self.0.push(value);
        self
    }

    /// Appends two bytes, little-endian.
    pub fn u16(mut self, value: u16) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends four bytes, little-endian.
    pub fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends eight bytes, little-endian.
    pub fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a string with its length as one byte (what [`Input::short_text`] reads).
    pub fn short_text(mut self, text: &str) -> Self {
        let len = u8::try_from(text.len()).expect("at most 255 bytes");
        self.0.push(len);
        self.0.extend_from_slice(text.as_bytes());
        self
    }

    /// Appends raw bytes.
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// The finished script.
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}
