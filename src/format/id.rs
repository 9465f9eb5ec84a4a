//! 32-byte identifiers: storage names (BLAKE3 of stored bytes) and blob ids (keyed BLAKE3).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 256-bit identifier, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The storage name of an object: the unkeyed BLAKE3 hash of its stored bytes, so that
    /// any copy can be checked for integrity without the password.
    pub fn of_stored(bytes: &[u8]) -> Id {
        Id(*blake3::hash(bytes).as_bytes())
    }

    pub fn random() -> Id {
        let mut b = [0u8; 32];
        crate::format::crypto::fill_random(&mut b);
        Id(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The 8-digit prefix users see in tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn from_hex(s: &str) -> Option<Id> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(Id(b))
    }

    pub fn from_slice(s: &[u8]) -> Option<Id> {
        Some(Id(s.try_into().ok()?))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // On the stack: trees hold an id for every chunk of every file.
        let mut hex = [0u8; 64];
        hex::encode_to_slice(self.0, &mut hex).map_err(serde::ser::Error::custom)?;
        s.serialize_str(std::str::from_utf8(&hex).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        struct HexId;
        impl serde::de::Visitor<'_> for HexId {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Id, E> {
                Id::from_hex(s).ok_or_else(|| E::custom("expected 64 hex digits"))
            }
        }
        d.deserialize_str(HexId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = Id::of_stored(b"abc");
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.short().len(), 8);
        assert!(Id::from_hex("zz").is_none());
    }

    #[test]
    fn json_round_trip() {
        let id = Id::of_stored(b"abc");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.to_hex()));
        assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
        assert!(serde_json::from_str::<Id>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Id>("7").is_err());
    }
}
