//! Content-defined chunking: FastCDC v2020 with gear tables keyed by a repository secret,
//! so that chunk boundaries (visible to the storage provider as blob sizes) do not reveal
//! which known files a repository holds.

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::config::{ChunkerParams, Gear};
use super::crypto::{ChunkerSecret, GearKey};
use super::error::Result;

/// A gear table `G` and its shifted twin `G_LS` (§16). Whoever holds them predicts every
/// chunk boundary, so they are wiped when dropped, like the keys they come from.
#[derive(Clone)]
pub struct GearTables {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl GearTables {
    /// FastCDC's public table XORed with a 64-bit seed: the table of repositories whose
    /// config names no gear. About 49 bits of the seed can be recovered from observed
    /// chunk sizes (Truong et al. 2025), which is why new repositories use [`Self::prf`].
    pub fn xor_seed(seed: u64) -> GearTables {
        // Seed 0 borrows the crate's public tables; XORing here rather than taking the
        // crate's seeded copy leaves no unwiped copy of the keyed table behind.
        let (public, public_ls) = get_gear_with_seed(0);
        GearTables::from_fn(|i| (public[i] ^ seed, public_ls[i] ^ (seed << 1)))
    }

    /// Each entry an independent PRF output: `G[i]` = the first 8 bytes (u64 LE) of
    /// keyed BLAKE3 under the gear key of the single byte `i`; `G_LS[i] = G[i] << 1`.
    pub fn prf(key: &GearKey) -> GearTables {
        GearTables::from_fn(|i| {
            let out = blake3::keyed_hash(key.as_bytes(), &[i as u8]);
            let mut first = [0u8; 8];
            first.copy_from_slice(&out.as_bytes()[..8]);
            let g = u64::from_le_bytes(first);
            (g, g << 1)
        })
    }

    fn from_fn(entry: impl Fn(usize) -> (u64, u64)) -> GearTables {
        let mut t = GearTables {
            gear: Box::new([0; 256]),
            gear_ls: Box::new([0; 256]),
        };
        for i in 0..256 {
            (t.gear[i], t.gear_ls[i]) = entry(i);
        }
        t
    }

    /// `G[i]`.
    pub fn entry(&self, i: u8) -> u64 {
        self.gear[usize::from(i)]
    }
}

impl Drop for GearTables {
    fn drop(&mut self) {
        self.gear.zeroize();
        self.gear_ls.zeroize();
    }
}

impl ZeroizeOnDrop for GearTables {}

#[derive(Clone)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    masks: (u64, u64),
    tables: GearTables,
}

impl Chunker {
    /// The chunker of a repository: its config picks the gear table, the master key
    /// keys it. Fails only on a gear value this vault does not know (which config
    /// validation already refuses).
    pub fn new(p: &ChunkerParams, secret: &ChunkerSecret) -> Result<Chunker> {
        let tables = match p.gear()? {
            Gear::XorSeed => GearTables::xor_seed(secret.seed),
            Gear::PrfV2 => GearTables::prf(&secret.gear),
        };
        Ok(Chunker::with_tables(p, tables))
    }

    /// A chunker with the given tables, whatever `p.gear` says.
    pub fn with_tables(p: &ChunkerParams, tables: GearTables) -> Chunker {
        let level = match p.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        Chunker {
            min: p.min_size as usize,
            avg: p.avg_size as usize,
            max: p.max_size as usize,
            masks: select_masks(p.avg_size as usize, level),
            tables,
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
            &self.tables.gear[..],
            &self.tables.gear_ls[..],
        );
        n.max(1).min(buf.len())
    }

    /// Where each chunk of the whole stream `data` ends (the last is `data.len()`).
    pub fn boundaries(&self, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            pos += self.next_cut(&data[pos..]);
            out.push(pos);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::config::GEAR_PRF_V2;
    use crate::format::crypto::MasterKey;

    #[test]
    fn gear_tables_zeroize_on_drop() {
        fn wipes<T: ZeroizeOnDrop>() {}
        wipes::<GearTables>();
    }

    fn chunks(c: &Chunker, data: &[u8]) -> Vec<usize> {
        let mut prev = 0;
        c.boundaries(data)
            .into_iter()
            .map(|end| end - std::mem::replace(&mut prev, end))
            .collect()
    }

    /// The small parameters of the spec's test vectors (Appendix A).
    fn params(gear: Option<&str>) -> ChunkerParams {
        ChunkerParams {
            algorithm: "fastcdc-v2020".into(),
            min_size: 2048,
            avg_size: 8192,
            max_size: 65536,
            normalization: 1,
            gear: gear.map(String::from),
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
        let key = MasterKey::from_bytes([7; 32]).gear_key();
        for tables in [GearTables::xor_seed(7), GearTables::prf(&key)] {
            let c = Chunker::with_tables(&params(None), tables);
            let data = noise(1 << 20);
            let whole = c.next_cut(&data);
            for len in (1..whole + 100).step_by(97) {
                let expected = if len > whole { whole } else { len };
                assert_eq!(c.next_cut(&data[..len]), expected, "window of {len}");
            }
        }
    }

    #[test]
    fn seeded_boundaries_differ_and_cover() {
        let p = params(None);
        let data = noise(1 << 20);
        let a = chunks(&Chunker::with_tables(&p, GearTables::xor_seed(1)), &data);
        let b = chunks(&Chunker::with_tables(&p, GearTables::xor_seed(2)), &data);
        assert_eq!(a.iter().sum::<usize>(), data.len());
        assert_ne!(a, b);
        assert!(a.iter().all(|&n| n <= 65536));
    }

    /// The config, not the caller, picks the table: no gear is the XOR-seeded table of
    /// the master key's chunker seed, "prf-v2" the PRF table of its gear key.
    #[test]
    fn the_config_selects_the_table() {
        let master = MasterKey::from_bytes([9; 32]);
        let data = noise(1 << 20);
        let old = Chunker::new(&params(None), &master.chunker_secret()).unwrap();
        let new = Chunker::new(&params(Some(GEAR_PRF_V2)), &master.chunker_secret()).unwrap();
        let p = params(None);
        let xor = Chunker::with_tables(&p, GearTables::xor_seed(master.chunker_seed()));
        let prf = Chunker::with_tables(&p, GearTables::prf(&master.gear_key()));
        assert_eq!(old.boundaries(&data), xor.boundaries(&data));
        assert_eq!(new.boundaries(&data), prf.boundaries(&data));
        assert_ne!(old.boundaries(&data), new.boundaries(&data));
        assert!(Chunker::new(&params(Some("prf-v9")), &master.chunker_secret()).is_err());
    }

    /// The stream of the spec's chunking vectors: the first 1 MiB of the BLAKE3 XOF of
    /// `"vault chunker test vector stream"`.
    fn vector_stream() -> Vec<u8> {
        let mut out = vec![0u8; 1 << 20];
        blake3::Hasher::new()
            .update(b"vault chunker test vector stream")
            .finalize_xof()
            .fill(&mut out);
        out
    }

    fn vector_master() -> MasterKey {
        MasterKey::from_bytes(std::array::from_fn(|i| i as u8))
    }

    /// The spec's own text (repo-format/README.md), read at build time: the vectors
    /// below are checked against it, so that spec and code cannot drift apart.
    const SPEC: &str = include_str!("../../repo-format/README.md");

    /// The numbers of the code block after `heading` in Appendix A.
    fn spec_list(heading: &str) -> Vec<usize> {
        let appendix = &SPEC[SPEC.find("## Appendix A").expect("Appendix A")..];
        let after = &appendix[appendix.find(heading).expect(heading)..];
        let block = after.split("```").nth(1).expect("a code block");
        block
            .split_whitespace()
            .map(|n| n.parse().expect("a number"))
            .collect()
    }

    /// Appendix A's row `| name | value |`.
    fn spec_row(name: &str) -> &'static str {
        let appendix = &SPEC[SPEC.find("## Appendix A").expect("Appendix A")..];
        let row = appendix
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .expect(name);
        row.trim_end_matches('|').rsplit('|').next().unwrap().trim()
    }

    /// Appendix A of the spec, which the Python reference implementation is held to as
    /// well (tests/reference_reader.rs).
    #[test]
    fn spec_test_vectors() {
        let m = vector_master();
        let key = m.gear_key();
        let key_hex = "77f96419c2048b4a92d45e9783aeacc8fec33afebaa83bf623e8eaf246fc8d6a";
        assert_eq!(hex(key.as_bytes()), key_hex);
        assert_eq!(spec_row("gear key"), format!("`{key_hex}`"));
        let prf = GearTables::prf(&key);
        assert_eq!(prf.entry(0), 0x360f6b2847d1e820);
        assert_eq!(prf.entry(1), 0x32578d2e293fc73e);
        assert_eq!(prf.entry(255), 0x8695a50abe873d47);
        assert_eq!(prf.gear_ls[255], 0x8695a50abe873d47 << 1);
        let xor = GearTables::xor_seed(m.chunker_seed());
        assert_eq!(m.chunker_seed(), 0x4f1f28a2c452afb2);
        assert_eq!(xor.entry(0), 0x744214dfe42c986e);
        assert_eq!(xor.entry(1), 0x3752401855409f34);
        assert_eq!(xor.entry(255), 0xe5a203888147ab53);
        for (name, t) in [("PRF", &prf), ("XOR-seeded", &xor)] {
            let want = [0, 1, 255]
                .map(|i| format!("`{:#018x}`", t.entry(i)))
                .join(", ");
            assert_eq!(
                spec_row(&format!("{name} table `G[0]`, `G[1]`, `G[255]`")),
                want
            );
        }

        let data = vector_stream();
        let old = Chunker::new(&params(None), &m.chunker_secret())
            .unwrap()
            .boundaries(&data);
        let new = Chunker::new(&params(Some(GEAR_PRF_V2)), &m.chunker_secret())
            .unwrap()
            .boundaries(&data);
        assert_eq!(old, VECTOR_XOR_ENDS);
        assert_eq!(new, VECTOR_PRF_ENDS);
        assert_eq!(old, spec_list("XOR-seeded table (config without `gear`)"));
        assert_eq!(new, spec_list("PRF table (`\"gear\": \"prf-v2\"`)"));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    const VECTOR_XOR_ENDS: [usize; 101] = [
        3497, 18897, 27689, 33524, 39475, 52421, 55707, 63886, 76643, 91897, 103874, 119838,
        129800, 142180, 147641, 152431, 154615, 159996, 175893, 185242, 189535, 198207, 206742,
        220568, 229042, 241190, 256178, 261832, 269490, 280079, 289894, 294110, 297878, 325619,
        337575, 352843, 364545, 377018, 386534, 400229, 418702, 436474, 446395, 468029, 478207,
        486646, 501746, 511292, 532602, 544675, 555057, 564284, 571912, 581216, 591946, 597693,
        606277, 619864, 629034, 643747, 651286, 657781, 673038, 693745, 696186, 702482, 711540,
        720459, 748390, 761278, 779693, 791874, 798953, 808500, 818825, 827260, 839720, 846140,
        854603, 871498, 882512, 891985, 895750, 905706, 916001, 920044, 922588, 931416, 937466,
        949285, 952026, 966093, 977882, 984776, 996831, 1003473, 1006207, 1018192, 1026878,
        1039147, 1048576,
    ];

    const VECTOR_PRF_ENDS: [usize; 106] = [
        9278, 18465, 23307, 39239, 50505, 66536, 74044, 82993, 87943, 96407, 105837, 117241,
        126255, 139473, 142977, 156302, 159152, 161331, 170779, 185259, 195214, 198922, 207646,
        220759, 232179, 240102, 254406, 264095, 275222, 286441, 292542, 300058, 311854, 322870,
        332546, 334876, 337805, 355591, 362858, 369454, 376366, 388386, 395356, 406543, 420905,
        424206, 433742, 448757, 456990, 467313, 472802, 481028, 485858, 494738, 507640, 516063,
        518968, 536452, 540947, 554988, 563514, 580209, 594220, 600328, 611161, 624968, 636789,
        646587, 653204, 658421, 668966, 678442, 698134, 700605, 720350, 729598, 751984, 760805,
        767707, 794635, 798189, 803123, 808120, 816814, 829975, 837064, 850227, 858124, 869401,
        889989, 897936, 917110, 930606, 939082, 948248, 958940, 967311, 976683, 981059, 990208,
        998491, 1001725, 1008044, 1017330, 1034882, 1048576,
    ];
}
