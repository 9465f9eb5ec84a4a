//! Manifests: a plaintext list, per index file, of the packs it covers and their sizes.
//!
//! They let `vault audit` find missing and truncated packs without the key. They reveal
//! nothing the storage provider does not already see (names and sizes of stored objects,
//! and which were uploaded together), so they are not encrypted. Text, one item per line:
//!
//! ```text
//! vault manifest v1
//! index <64 hex> <size>
//! pack <64 hex> <size>        (zero or more)
//! blake3 <64 hex of every byte before this line>
//! ```

use super::error::{FormatError, Result};
use super::id::Id;

const HEADER: &str = "vault manifest v1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub index: (Id, u64),
    pub packs: Vec<(Id, u64)>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("{HEADER}\nindex {} {}\n", self.index.0, self.index.1);
        for (id, size) in &self.packs {
            s.push_str(&format!("pack {id} {size}\n"));
        }
        let sum = blake3::hash(s.as_bytes());
        s.push_str(&format!("blake3 {}\n", sum.to_hex()));
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        let text = std::str::from_utf8(bytes).map_err(|e| FormatError::malformed("manifest", e))?;
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or(FormatError::Truncated("manifest"))?;
        let (body, last) = text.split_at(body_end);
        let sum = last
            .strip_prefix("blake3 ")
            .map(|s| s.trim_end_matches('\n'))
            .ok_or(FormatError::Truncated("manifest checksum line"))?;
        if sum != blake3::hash(body.as_bytes()).to_hex().as_str() {
            return Err(FormatError::Checksum);
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err(FormatError::malformed("manifest", "bad first line"));
        }
        let index = lines
            .next()
            .and_then(|l| l.strip_prefix("index "))
            .ok_or_else(|| FormatError::malformed("manifest", "no index line"))
            .and_then(parse_item)?;
        let packs = lines
            .map(|l| {
                l.strip_prefix("pack ")
                    .ok_or_else(|| FormatError::malformed("manifest", "unknown line"))
                    .and_then(parse_item)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Manifest { index, packs })
    }
}

fn parse_item(s: &str) -> Result<(Id, u64)> {
    let (id, size) = s
        .split_once(' ')
        .ok_or_else(|| FormatError::malformed("manifest", "item without size"))?;
    let id = Id::from_hex(id).ok_or_else(|| FormatError::malformed("manifest", "bad id"))?;
    let size = size
        .parse()
        .map_err(|_| FormatError::malformed("manifest", "bad size"))?;
    Ok((id, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let m = Manifest {
            index: (Id::of_stored(b"i"), 123),
            packs: vec![(Id::of_stored(b"a"), 1), (Id::of_stored(b"b"), 2 << 40)],
        };
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(Manifest::decode(&bad).is_err());
        assert!(Manifest::decode(&bytes[..bytes.len() - 10]).is_err());
        let empty = Manifest {
            index: (Id::of_stored(b"i"), 1),
            packs: vec![],
        };
        assert_eq!(Manifest::decode(&empty.encode()).unwrap(), empty);
    }
}
