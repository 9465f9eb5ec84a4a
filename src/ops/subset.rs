//! Which packs a partial read covers: `10%` (a random tenth), `1/7` (the first of seven
//! fixed parts; running 1/7 .. 7/7 covers every pack once), or `2G` (random packs up to
//! that many bytes).

use std::str::FromStr;

use crate::format::Id;

#[derive(Clone, Debug, PartialEq)]
pub enum Subset {
    All,
    Percent(f64),
    Part { n: u32, of: u32 },
    Bytes(u64),
}

impl FromStr for Subset {
    type Err = String;

    fn from_str(s: &str) -> Result<Subset, String> {
        let bad = || format!("{s:?}: give a percentage (10%), a part (1/7) or a size (2G)");
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!(
                    "{s:?}: the percentage must be above 0 and at most 100"
                ));
            }
            return Ok(if v == 100.0 {
                Subset::All
            } else {
                Subset::Percent(v)
            });
        }
        if let Some((n, of)) = s.split_once('/') {
            let n: u32 = n.trim().parse().map_err(|_| bad())?;
            let of: u32 = of.trim().parse().map_err(|_| bad())?;
            if n == 0 || of == 0 || n > of {
                return Err(format!("{s:?}: a part n/N needs 1 <= n <= N"));
            }
            return Ok(Subset::Part { n, of });
        }
        crate::units::parse_size(s)
            .map(Subset::Bytes)
            .map_err(|_| bad())
    }
}

impl Subset {
    /// Picks packs from `packs` (id, size). Random choices use a fresh key each run, so
    /// successive runs cover different packs.
    pub fn choose(&self, packs: &[(Id, u64)]) -> Vec<(Id, u64)> {
        match *self {
            Subset::All => packs.to_vec(),
            Subset::Part { n, of } => packs
                .iter()
                .filter(|(id, _)| {
                    u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]) % of == n - 1
                })
                .copied()
                .collect(),
            Subset::Percent(p) => {
                let want = ((packs.len() as f64 * p / 100.0).ceil() as usize).min(packs.len());
                shuffled(packs).into_iter().take(want).collect()
            }
            Subset::Bytes(limit) => {
                let mut total = 0u64;
                shuffled(packs)
                    .into_iter()
                    .take_while(|(_, size)| {
                        let take = total < limit;
                        total += size;
                        take
                    })
                    .collect()
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Subset::All => "all data".into(),
            Subset::Percent(p) => format!("{p}% of the packs"),
            Subset::Part { n, of } => format!("part {n}/{of} of the packs"),
            Subset::Bytes(b) => format!("{} of packs", crate::units::human_bytes(*b)),
        }
    }
}

/// A random order: packs sorted by a keyed hash of their id under a one-time key.
fn shuffled(packs: &[(Id, u64)]) -> Vec<(Id, u64)> {
    let key = Id::random().0;
    let mut v = packs.to_vec();
    v.sort_by_cached_key(|(id, _)| *blake3::keyed_hash(&key, &id.0).as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packs(n: usize) -> Vec<(Id, u64)> {
        (0..n)
            .map(|i| (Id::of_stored(&i.to_le_bytes()), 100))
            .collect()
    }

    #[test]
    fn parses() {
        assert_eq!("10%".parse::<Subset>(), Ok(Subset::Percent(10.0)));
        assert_eq!("100%".parse::<Subset>(), Ok(Subset::All));
        assert_eq!("2/7".parse::<Subset>(), Ok(Subset::Part { n: 2, of: 7 }));
        assert_eq!("2K".parse::<Subset>(), Ok(Subset::Bytes(2048)));
        for bad in ["0%", "101%", "0/3", "4/3", "x", ""] {
            assert!(bad.parse::<Subset>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_cover_everything_once() {
        let all = packs(1000);
        let mut seen: Vec<Id> = (1..=7)
            .flat_map(|n| Subset::Part { n, of: 7 }.choose(&all))
            .map(|(id, _)| id)
            .collect();
        seen.sort();
        let mut want: Vec<Id> = all.iter().map(|(id, _)| *id).collect();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn percent_and_bytes_pick_enough() {
        let all = packs(1000);
        assert_eq!(Subset::Percent(10.0).choose(&all).len(), 100);
        assert_eq!(Subset::Percent(0.01).choose(&all).len(), 1);
        assert_eq!(Subset::Bytes(1050).choose(&all).len(), 11);
    }
}
