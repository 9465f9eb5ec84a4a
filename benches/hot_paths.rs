//! Micro-benchmarks of the backup hot paths, reported as throughput (MB/s, or lookups/s
//! for the index) so that regressions show up as numbers.
//!
//! Run them with:
//!
//! ```text
//! cargo bench --bench hot_paths
//! cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 2   # quicker
//! cargo bench --bench hot_paths -- compression                             # one group
//! ```
//!
//! `cargo test --all-targets` runs each benchmark once as a smoke test (Criterion's test
//! mode), which takes about a second.
//!
//! Every input is deterministic (an inline xorshift generator with fixed seeds, and a fixed
//! master key), except the AEAD nonces, which vault always draws from the OS.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use vault::format::Id;
use vault::format::chunker::Chunker;
use vault::format::config::ChunkerParams;
use vault::format::crypto::{Keys, MasterKey};
use vault::format::pack::{self, BlobEntry, BlobType, PackBuilder, SealedBlob};
use vault::repo::index::IndexBuilder;

const MIB: usize = 1024 * 1024;
/// The zstd level of a repository made by a plain `vault init` (`--compression`'s
/// default), which `seal_blob` receives from `Config::compression_level`.
const LEVEL: i32 = 3;
/// The pack size of a plain `vault init` (`--pack-size` defaults to 16M).
const PACK_SIZE: usize = 16 * MIB;

/// xorshift64*: tiny, deterministic, good enough to defeat compression and chunk
/// boundaries that depend on structure.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    fn id(&mut self) -> Id {
        let mut b = [0u8; 32];
        self.fill(&mut b);
        Id(b)
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift::new(seed).fill(&mut v);
    v
}

/// Text-like bytes: words from a small vocabulary with punctuation, numbers and line
/// breaks, which zstd compresses roughly as well as source code or logs.
fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const VOCABULARY: &str = "the backup of a file is split into chunks and each chunk sealed \
        with key repository snapshot tree blob pack index to for in fn let mut return error \
        value data struct impl self match Some None Ok Err vault path";
    let words: Vec<&str> = VOCABULARY.split_whitespace().collect();
    let mut rng = XorShift::new(seed);
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        let r = rng.next_u64();
        out.extend_from_slice(words[(r % words.len() as u64) as usize].as_bytes());
        match (r >> 32) % 16 {
            0 => out.extend_from_slice(b".\n"),
            1 => out.extend_from_slice(b", "),
            2 => out.extend_from_slice(format!(" {} ", (r >> 40) % 10_000).as_bytes()),
            _ => out.push(b' '),
        }
    }
    out.truncate(len);
    out
}

/// Fixed working keys, so runs are comparable.
fn keys() -> Keys {
    MasterKey::from_bytes([7u8; 32]).derive()
}

fn chunking(c: &mut Criterion) {
    let data = random_bytes(32 * MIB, 1);
    let chunker = Chunker::new(
        &ChunkerParams::default(),
        &MasterKey::from_bytes([7u8; 32]).chunker_secret(),
    )
    .expect("the default gear table is known");
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    // Milliseconds per run: fewer, flat samples keep the group within its time.
    g.sample_size(20);
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("fastcdc_default_params_32MiB", |b| {
        b.iter(|| {
            let data = black_box(data.as_slice());
            let (mut pos, mut chunks) = (0, 0usize);
            while pos < data.len() {
                pos += chunker.next_cut(&data[pos..]);
                chunks += 1;
            }
            chunks
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let keys = keys();
    let data = random_bytes(MIB, 2);
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("blob_id_keyed_blake3_1MiB", |b| {
        b.iter(|| keys.blob_id(BlobType::Data as u8, black_box(&data)))
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let text = text_bytes(MIB, 3);
    let random = random_bytes(MIB, 4);
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(MIB as u64));
    for (name, data) in [("zstd3_text_1MiB", &text), ("zstd3_random_1MiB", &random)] {
        g.bench_function(name, |b| {
            b.iter(|| zstd::bulk::compress(black_box(data), LEVEL).expect("zstd compresses"))
        });
    }
    g.finish();
}

fn encryption(c: &mut Criterion) {
    let keys = keys();
    let random = random_bytes(MIB, 5);
    let text = text_bytes(MIB, 6);
    let id = keys.blob_id(BlobType::Data as u8, &random);
    let text_id = keys.blob_id(BlobType::Data as u8, &text);
    let mut g = c.benchmark_group("encryption");
    g.throughput(Throughput::Bytes(MIB as u64));
    // The AEAD alone (AES-256-GCM-SIV), into a reused buffer.
    let mut out = Vec::with_capacity(MIB + 64);
    g.bench_function("aead_seal_1MiB", |b| {
        b.iter(|| {
            out.clear();
            keys.cipher
                .seal_into(b"bench", black_box(&random), &mut out);
            out.len()
        })
    });
    // What the backup sealers do per blob: try zstd (useless here), then seal.
    g.bench_function("seal_blob_random_1MiB", |b| {
        b.iter(|| pack::seal_blob(&keys, BlobType::Data, id, black_box(&random), LEVEL))
    });
    // The same for compressible data: zstd, then seal the smaller payload.
    g.bench_function("seal_blob_text_1MiB", |b| {
        b.iter(|| pack::seal_blob(&keys, BlobType::Data, text_id, black_box(&text), LEVEL))
    });
    g.finish();
}

fn pack_writing(c: &mut Criterion) {
    const BLOB_LEN: usize = 64 * 1024;
    let keys = keys();
    let data = random_bytes(PACK_SIZE, 7);
    let sealed: Vec<SealedBlob> = data
        .chunks(BLOB_LEN)
        .map(|d| {
            let id = keys.blob_id(BlobType::Data as u8, d);
            pack::seal_blob(&keys, BlobType::Data, id, d, LEVEL)
        })
        .collect();
    let total: usize = sealed.iter().map(|s| s.bytes.len()).sum();
    let mut g = c.benchmark_group("pack_writing");
    g.throughput(Throughput::Bytes(total as u64));
    // Milliseconds per run: fewer, flat samples keep the group within its time.
    g.sample_size(20);
    g.sampling_mode(SamplingMode::Flat);
    // As the packer does: append sealed blobs to a builder sized for one pack, then seal
    // the header and hash the whole pack for its storage id. Copying the blobs in for
    // each run happens outside the timing.
    g.bench_function("pack_builder_256x64KiB_16MiB", |b| {
        b.iter_batched(
            || {
                sealed
                    .iter()
                    .map(|s| SealedBlob {
                        blob_type: s.blob_type,
                        flags: s.flags,
                        id: s.id,
                        raw_len: s.raw_len,
                        bytes: s.bytes.clone(),
                    })
                    .collect::<Vec<_>>()
            },
            |blobs| {
                let mut pb = PackBuilder::with_capacity(PACK_SIZE + PACK_SIZE / 8);
                for blob in blobs {
                    pb.add(blob);
                }
                pb.finish(&keys)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn index_lookup(c: &mut Criterion) {
    // A million blobs: some 20 TiB at the default 1 MiB average chunk size. Filling the
    // index takes well under a second even in the debug build of the smoke test.
    const IDS: usize = 1_000_000;
    const PER_PACK: usize = 1000;
    const LOOKUPS: usize = 10_000;
    let mut rng = XorShift::new(8);
    let ids: Vec<Id> = (0..IDS).map(|_| rng.id()).collect();
    let mut index = IndexBuilder::with_capacity(IDS);
    for blobs in ids.chunks(PER_PACK) {
        let entries: Vec<BlobEntry> = blobs
            .iter()
            .enumerate()
            .map(|(i, id)| BlobEntry {
                blob_type: BlobType::Data,
                flags: pack::FLAG_ZSTD,
                id: *id,
                offset: (i * 20_000) as u32,
                length: 20_000,
                raw_len: 40_000,
                inner: 0,
            })
            .collect();
        index.add_pack(rng.id(), &entries);
    }
    let index = index.finish();
    assert_eq!(index.len(), IDS);
    let present: Vec<Id> = ids.iter().step_by(IDS / LOOKUPS).copied().collect();
    let mut rng = XorShift::new(9);
    let absent: Vec<Id> = (0..LOOKUPS).map(|_| rng.id()).collect();

    let mut g = c.benchmark_group("index_lookup");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    // Backup's dedup check.
    g.bench_function("contains_present", |b| {
        b.iter(|| present.iter().filter(|id| index.contains(id)).count())
    });
    g.bench_function("contains_absent", |b| {
        b.iter(|| absent.iter().filter(|id| index.contains(id)).count())
    });
    // Restore's and check's lookup of where a blob lives.
    g.bench_function("get_present", |b| {
        b.iter(|| {
            present
                .iter()
                .filter_map(|id| index.get(id))
                .map(|(_, e)| u64::from(e.length))
                .sum::<u64>()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    chunking,
    hashing,
    compression,
    encryption,
    pack_writing,
    index_lookup
);
criterion_main!(benches);
