//! Length-bounded strings and lists.
//!
//! Every variable-length field on the wire has a maximum. Encoding them as [`Text`] and
//! [`List`] makes an over-long value unrepresentable: constructors refuse it, and the serde
//! `Deserialize` impls check the length *before* they allocate, so a hostile length prefix
//! cannot make a decoder reserve more than the limit.

use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

/// A value was longer than its field allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("length {len} exceeds the limit of {max}")]
pub struct LimitError {
    /// The length that was offered (bytes for text, items for lists).
    pub len: usize,
    /// The largest length the field allows.
    pub max: usize,
}

/// UTF-8 text of at most `MAX` bytes. On the wire: a varint byte length, then the bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    /// The most bytes this text may hold.
    pub const MAX: usize = MAX;

    /// Checks the length once, here, so nothing downstream has to.
    pub fn new(value: impl Into<String>) -> Result<Self, LimitError> {
        let value = value.into();
        if value.len() > MAX {
            return Err(LimitError { len: value.len(), max: MAX });
        }
        Ok(Self(value))
    }

    /// The longest prefix of `value` that fits, cut at a character boundary: for
    /// human-readable text (reasons, messages) where a shortened value beats an error.
    pub fn truncating(value: &str) -> Self {
        let mut end = value.len().min(MAX);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        Self(value[..end].to_owned())
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Gives the owned string back without copying.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl<const MAX: usize> Deref for Text<MAX> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> AsRef<str> for Text<MAX> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Hash, Eq and Ord are those of the inner String, which agree with str's: maps keyed by
// Text can be queried with &str.
impl<const MAX: usize> core::borrow::Borrow<str> for Text<MAX> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> fmt::Debug for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<const MAX: usize> fmt::Display for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const MAX: usize> TryFrom<&str> for Text<MAX> {
    type Error = LimitError;
    fn try_from(value: &str) -> Result<Self, LimitError> {
        Self::new(value)
    }
}

impl<const MAX: usize> TryFrom<String> for Text<MAX> {
    type Error = LimitError;
    fn try_from(value: String) -> Result<Self, LimitError> {
        Self::new(value)
    }
}

impl<const MAX: usize> Serialize for Text<MAX> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<const MAX: usize>;
        impl<const MAX: usize> Visitor<'_> for TextVisitor<MAX> {
            type Value = Text<MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string of at most {MAX} bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<MAX>, E> {
                if v.len() > MAX {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(Text(v.to_owned()))
            }
        }
        deserializer.deserialize_str(TextVisitor::<MAX>)
    }
}

/// A list of at most `MAX` items. On the wire: a varint item count, then the items.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct List<T, const MAX: usize>(Vec<T>);

impl<T, const MAX: usize> Default for List<T, MAX> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T, const MAX: usize> List<T, MAX> {
    /// The most items this list may hold.
    pub const MAX: usize = MAX;

    /// Checks the count once, here, so nothing downstream has to.
    pub fn new(items: Vec<T>) -> Result<Self, LimitError> {
        if items.len() > MAX {
            return Err(LimitError { len: items.len(), max: MAX });
        }
        Ok(Self(items))
    }

    /// Gives the owned vector back without copying.
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<T, const MAX: usize> Deref for List<T, MAX> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: fmt::Debug, const MAX: usize> fmt::Debug for List<T, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl<T, const MAX: usize> TryFrom<Vec<T>> for List<T, MAX> {
    type Error = LimitError;
    fn try_from(items: Vec<T>) -> Result<Self, LimitError> {
        Self::new(items)
    }
}

impl<T: Serialize, const MAX: usize> Serialize for List<T, MAX> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for List<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T, const MAX: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for ListVisitor<T, MAX> {
            type Value = List<T, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {MAX} items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T, MAX>, A::Error> {
                let hint = seq.size_hint().unwrap_or(0);
                if hint > MAX {
                    return Err(de::Error::invalid_length(hint, &self));
                }
                let mut items = Vec::with_capacity(hint);
                while let Some(item) = seq.next_element()? {
                    if items.len() == MAX {
                        return Err(de::Error::invalid_length(MAX + 1, &self));
                    }
                    items.push(item);
                }
                Ok(List(items))
            }
        }
        deserializer.deserialize_seq(ListVisitor::<T, MAX>(PhantomData))
    }
}
