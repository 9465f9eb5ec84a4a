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

    /// Length of the next chunk at the start of `buf`. Unless `eof`, `buf` must hold at
    /// least `max_size` bytes (or everything that is left), since a cut may lie anywhere
    /// up to there.
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

    #[test]
    fn seeded_boundaries_differ_and_cover() {
        let p = ChunkerParams {
            min_size: 2048,
            avg_size: 8192,
            max_size: 65536,
            ..Default::default()
        };
        let mut data = vec![0u8; 1 << 20];
        let mut x: u64 = 1;
        for b in data.iter_mut() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
        let a = chunks(&Chunker::new(&p, 1), &data);
        let b = chunks(&Chunker::new(&p, 2), &data);
        assert_eq!(a.iter().sum::<usize>(), data.len());
        assert_ne!(a, b);
        assert!(a.iter().all(|&n| n <= 65536));
    }
}
