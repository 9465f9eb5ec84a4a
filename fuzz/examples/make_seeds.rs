//! Writes the binary part of the seed corpus: what vault itself writes (config, key file,
//! index, snapshot, tree, pack, blobs), sealed with the fuzz targets' fixed key and
//! prefixed with the mode byte each target reads first. Run by `fuzz/make-seeds.sh`:
//! `cargo run --example make_seeds -- fuzz/corpus`.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use vault::format::Id;
use vault::format::config::{ChunkerParams, Config, REPO_VERSION};
use vault::format::crypto::MasterKey;
use vault::format::index::{IndexFile, PackBlobs};
use vault::format::keyfile::{self, KeyFile, KeyMeta, KeyPayload};
use vault::format::pack::{self, BlobEntry, BlobType, PackBuilder};
use vault::format::snapshot::{SNAPSHOT_VERSION, Snapshot, Summary};
use vault::format::tree::{Node, NodeType, RawBytes, Tree, Xattr};
use vault_fuzz::{MASTER_KEY, PASSWORD, cheap_key_file, keys};

struct Out(PathBuf);

impl Out {
    /// Writes `corpus/<target>/<name>`: the mode byte, then `body`.
    fn seed(&self, target: &str, name: &str, mode: u8, body: &[u8]) {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        let mut bytes = vec![mode];
        bytes.extend_from_slice(body);
        std::fs::write(dir.join(name), bytes).expect("seed written");
    }
}

/// One zstd frame, whether or not it is smaller.
fn zstd(body: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(body, 3).expect("zstd compresses")
}

fn with_flag(flag: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(data);
    v
}

fn id(n: u8) -> Id {
    Id::of_stored(&[n])
}

fn config(out: &Out) {
    let cfg = Config {
        version: REPO_VERSION,
        id: "5f3c0e8a9b2d4c6e8f1a3b5c7d9e0f21".repeat(2),
        chunker: ChunkerParams::default(),
        pack_size: 16 << 20,
        compression_level: 3,
        created: "2026-11-21T14:30:00.123456789Z".into(),
    };
    let body = serde_json::to_vec(&cfg).unwrap();
    out.seed("config", "stored", 0, &cfg.seal(keys()));
    out.seed("config", "body", 1, &body);
    out.seed("config", "payload-zstd", 2, &with_flag(1, &zstd(&body)));
    out.seed("config", "payload-plain", 2, &with_flag(0, &body));
    // The gear tables (§16): none (the XOR-seeded table), the PRF table, an unknown one;
    // chunks small enough that the input itself is cut.
    for (name, gear) in [
        ("gear-none", None),
        ("gear-prf", Some("prf-v2")),
        ("gear-unknown", Some("prf-v3")),
    ] {
        let mut c = cfg.clone();
        c.chunker = ChunkerParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
            gear: gear.map(String::from),
            ..ChunkerParams::default()
        };
        out.seed("config", name, 1, &serde_json::to_vec(&c).unwrap());
    }
}

fn keyfile(out: &Out) {
    let salt = [9u8; 32];
    let payload = KeyPayload {
        master_key: keyfile::encode_master(&MasterKey::from_bytes(MASTER_KEY)),
        label: "initial".into(),
        host: "fuzzhost".into(),
        user: "root".into(),
        created: "2026-11-21T14:30:00Z".into(),
        backup: None,
    };
    let meta = KeyMeta {
        label: payload.label.clone(),
        host: payload.host.clone(),
        user: payload.user.clone(),
        created: payload.created.clone(),
        role: String::new(),
    };
    let payload_json = serde_json::to_vec(&payload).unwrap();
    let meta_json = serde_json::to_vec(&meta).unwrap();
    // Sealed under the cheap derivation the target uses, so its payload opens there.
    let kf = cheap_key_file(&salt, &payload_json, &meta_json);
    out.seed("keyfile", "opens", 0, &kf.to_bytes());
    // A real one, with real scrypt (its payload does not open in the target; its
    // metadata does).
    let real = KeyFile::create(PASSWORD, keyfile::KdfCost::FLOOR, &payload).unwrap();
    out.seed("keyfile", "real", 0, &real.to_bytes());
    out.seed("keyfile", "payload", 1, &payload_json);
    out.seed("keyfile", "meta", 1, &meta_json);
}

fn index() -> IndexFile {
    let entry = |n: u8, t: BlobType, offset: u32, length: u32| BlobEntry {
        blob_type: t,
        flags: n & 1,
        id: id(n),
        offset,
        length,
        raw_len: length * 3,
        inner: 0,
    };
    IndexFile {
        supersedes: vec![id(200)],
        packs: vec![
            PackBlobs {
                pack: id(100),
                blobs: vec![
                    entry(1, BlobType::Data, 0, 4096),
                    entry(2, BlobType::Data, 4096, 100),
                    entry(3, BlobType::Tree, 4196, 300),
                ],
            },
            PackBlobs {
                pack: id(101),
                blobs: vec![entry(4, BlobType::Tree, 0, 77)],
            },
        ],
    }
}

fn index_seeds(out: &Out) {
    let idx = index();
    let body = idx.encode();
    out.seed("index", "stored", 0, &idx.seal(keys()));
    out.seed("index", "body", 1, &body);
    out.seed("index", "payload-zstd", 2, &with_flag(1, &zstd(&body)));
    out.seed("index", "decode", 3, &body);
    out.seed("index", "decode-empty", 3, &IndexFile::default().encode());
}

fn snapshot(out: &Out) {
    let s = Snapshot {
        version: SNAPSHOT_VERSION,
        time: "2026-11-21T14:30:00.123456789Z".into(),
        host: "fuzzhost".into(),
        user: "root".into(),
        paths: vec!["/home/u/Documents".into(), "/etc".into()],
        tags: vec!["daily".into()],
        parent: Some(id(7)),
        tree: id(8),
        excludes: vec!["*.tmp".into(), "/home/*/.cache".into()],
        program: "vault 0.1.0".into(),
        summary: Summary {
            files_new: 12,
            files_changed: 3,
            files_unchanged: 400,
            dirs: 20,
            bytes_total: 1 << 30,
            bytes_read: 1 << 20,
            bytes_added: 1 << 19,
            bytes_stored: 1 << 18,
            blobs_added: 9,
            duration_s: 1.25,
            ..Summary::default()
        },
        original: None,
    };
    let body = serde_json::to_vec(&s).unwrap();
    out.seed("snapshot", "stored", 0, &s.seal(keys()));
    out.seed("snapshot", "body", 1, &body);
    out.seed("snapshot", "payload-zstd", 2, &with_flag(1, &zstd(&body)));
}

fn tree() -> Vec<u8> {
    let mut file = Node::new(b"notes.txt".to_vec(), NodeType::File);
    file.mode = 0o644;
    file.uid = 1000;
    file.gid = 1000;
    file.user = "u".into();
    file.group = "u".into();
    file.mtime_ns = 1_763_735_400_123_456_789;
    file.ctime_ns = 1_763_735_400_123_456_789;
    file.size = 5000;
    file.inode = 42;
    file.links = 1;
    file.content = vec![id(1), id(2)];
    file.xattrs = vec![Xattr {
        name: RawBytes(b"user.comment".to_vec()),
        value: B64.encode(b"hello"),
    }];
    let mut sparse = Node::new(b"disk.img".to_vec(), NodeType::File);
    sparse.size = 1 << 20;
    sparse.content = vec![id(3)];
    sparse.extents = Some(vec![[0, 4096], [65536, 4096]]);
    let mut dir = Node::new(b"sub".to_vec(), NodeType::Dir);
    dir.mode = 0o755;
    dir.subtree = Some(id(9));
    let mut link = Node::new(vec![b'l', 0xff, b'k'], NodeType::Symlink);
    link.target = Some(RawBytes(vec![b'/', 0xfe, b't']));
    let mut dev = Node::new(b"null".to_vec(), NodeType::Chardev);
    dev.rdev = 0x103;
    let fifo = Node::new(b"fifo".to_vec(), NodeType::Fifo);
    Tree {
        nodes: vec![file, sparse, dir, link, dev, fifo],
    }
    .encode()
}

fn tree_seeds(out: &Out) {
    let t = tree();
    out.seed("tree", "raw", 0, &t);
    out.seed("tree", "sealed", 1, &t);
    out.seed("tree", "empty", 0, &Tree::default().encode());
}

fn pack_seeds(out: &Out) {
    let k = keys();
    let blobs: [(BlobType, Vec<u8>); 3] = [
        (BlobType::Data, b"hello world, ".repeat(40)),
        (BlobType::Data, vec![0x5a; 17]),
        (BlobType::Tree, tree()),
    ];
    let mut pb = PackBuilder::default();
    for (t, d) in &blobs {
        pb.add(pack::seal_blob(k, *t, k.blob_id(*t as u8, d), d, 3));
    }
    let (bytes, _, entries) = pb.finish(k);
    out.seed("pack_header", "pack", 0, &bytes);
    let mut header = Vec::new();
    for e in &entries {
        header.push(e.blob_type as u8);
        header.push(e.flags);
        header.extend_from_slice(&e.id.0);
        header.extend_from_slice(&e.length.to_le_bytes());
        header.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    let data_len: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
    let mut plain = data_len.to_le_bytes().to_vec();
    plain.extend_from_slice(&header);
    out.seed("pack_header", "header", 1, &plain);
    // Builder input: type byte, length / 16, bytes.
    let mut build = Vec::new();
    for (t, d) in &blobs {
        let d = &d[..d.len().min(255 * 16) / 16 * 16];
        build.push(*t as u8);
        build.push((d.len() / 16) as u8);
        build.extend_from_slice(d);
    }
    out.seed("pack_header", "build", 2, &build);

    // Blob target: each stored blob with its entry (opens), and the other modes.
    for (i, (e, (_, d))) in entries.iter().zip(&blobs).enumerate() {
        let stored = &bytes[e.offset as usize..(e.offset + e.length) as usize];
        let mut v = vec![e.blob_type as u8, e.flags];
        v.extend_from_slice(&e.id.0);
        v.extend_from_slice(&e.raw_len.to_le_bytes());
        v.extend_from_slice(stored);
        out.seed("blob", &format!("stored-{i}"), 0, &v);
        let z = zstd(&d.repeat(2));
        let mut v = vec![e.blob_type as u8, pack::FLAG_ZSTD];
        v.extend_from_slice(&(d.len() as u32 * 2).to_le_bytes());
        v.extend_from_slice(&z);
        out.seed("blob", &format!("sealed-zstd-{i}"), 1, &v);
        let mut v = vec![e.blob_type as u8, 0];
        v.extend_from_slice(&(d.len() as u32).to_le_bytes());
        v.extend_from_slice(d);
        out.seed("blob", &format!("sealed-plain-{i}"), 1, &v);
        let mut v = vec![e.blob_type as u8, 0]; // type, zstd level 1
        v.extend_from_slice(d);
        out.seed("blob", &format!("roundtrip-{i}"), 2, &v);
    }
    let body = index().encode();
    let mut v = vec![1u8]; // Kind::Index
    v.extend_from_slice(&with_flag(1, &zstd(&body)));
    out.seed("blob", "object-zstd", 3, &v);
    let mut v = (body.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&zstd(&body));
    out.seed("blob", "decompress", 4, &v);
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let out = Out(dir);
    config(&out);
    keyfile(&out);
    index_seeds(&out);
    snapshot(&out);
    tree_seeds(&out);
    pack_seeds(&out);
    eprintln!("binary seeds written under {}", out.0.display());
}
