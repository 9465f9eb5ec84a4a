//! Content-defined chunking: FastCDC v2020 with gear tables keyed by a repository secret,
//! so that chunk boundaries (visible to the storage provider as blob sizes) do not reveal
//! which known files a repository holds.

use std::borrow::Cow;

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};

use super::config::ChunkerParams;

#[derive(Clone)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    masks: (u64, u64),
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    pub fn new(p: &ChunkerParams, seed: u64) -> Chunker {
        let level = match p.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Chunker {
            min: p.min_size as usize,
            avg: p.avg_size as usize,
            max: p.max_size as usize,
            masks: select_masks(p.avg_size as usize, level),
            gear,
            gear_ls,
        }
    }

    pub fn max_size(&self) -> usize {
        self.max
    }

    /// Length of the next chunk at the start of `buf`. A result shorter than `buf` is
    /// final: the cut depends only on the bytes before it. A result equal to `buf.len()`
    /// is final only when `buf` holds `max_size` bytes or everything that is left.
    pub fn next_cut(&self, buf: &[u8]) -> usize {
        let window = &buf[..buf.len().min(self.max)];
        let (ms, ml) = self.masks;
        let (_, n) = cut_gear(
            window,
            self.min,
            self.avg,
            self.max,
            ms,
            ml,
            ms << 1,
            ml << 1,
            &self.gear,
            &self.gear_ls,
        );
        n.max(1).min(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(c: &Chunker, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let n = c.next_cut(&data[pos..]);
            out.push(n);
            pos += n;
        }
        out
    }

    fn params() -> ChunkerParams {
        ChunkerParams {
            min_size: 2048,
            avg_size: 8192,
            max_size: 65536,
            ..Default::default()
        }
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x: u64 = 1;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// Backup reads in steps and accepts a cut shorter than the bytes at hand: that cut
    /// must be the one the whole stream gives.
    #[test]
    fn a_cut_inside_a_short_window_is_final() {
        let c = Chunker::new(&params(), 7);
        let data = noise(1 << 20);
        let whole = c.next_cut(&data);
        for len in (1..whole + 100).step_by(97) {
            let expected = if len > whole { whole } else { len };
            assert_eq!(c.next_cut(&data[..len]), expected, "window of {len}");
        }
    }

    #[test]
    fn seeded_boundaries_differ_and_cover() {
        let p = params();
        let data = noise(1 << 20);
        let a = chunks(&Chunker::new(&p, 1), &data);
        let b = chunks(&Chunker::new(&p, 2), &data);
        assert_eq!(a.iter().sum::<usize>(), data.len());
        assert_ne!(a, b);
        assert!(a.iter().all(|&n| n <= 65536));
    }
}
