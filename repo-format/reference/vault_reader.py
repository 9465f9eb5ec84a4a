#!/usr/bin/env python3
"""Independent reference reader for vault repositories, format versions 1 to 4.

Written from repo-format/README.md alone (section numbers below refer to it). Read-only:
it lists snapshots and restores one; it never writes to the repository (no locks, no cache).

    python3 vault_reader.py --repo DIR --password-file FILE snapshots
    python3 vault_reader.py --repo DIR --password-file FILE restore ID|PREFIX|latest TARGET
    python3 vault_reader.py --repo DIR --password-file FILE chunks FILE

`chunks` prints the blob id of each chunk of FILE as the repository's chunker cuts it
(§16): not needed to read, it checks a chunker written from the spec against vault's.

It reads with a full key (a password whose key file holds the master key); a backup-role
key (§20) cannot restore, by design.

Dependencies: cryptography >= 42 (AES-GCM-SIV, X25519), blake3, zstandard.
"""
import argparse
import base64
import hashlib
import json
import math
import os
import re
import stat
import struct
import sys
from datetime import datetime, timedelta, timezone

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

ENC_CONTEXT = "vault 2026-11-21 encryption key v1"  # §2.1
IDK_CONTEXT = "vault 2026-11-21 blob id key v1"
SEED_CONTEXT = "vault 2026-11-21 chunker seed v1"  # the XOR-seeded gear table, §16
GEAR_CONTEXT = "vault 2026-12-03 chunker gear key v2"  # the PRF gear table ("prf-v2"), §16
X25519_CONTEXT = "vault 2026-12-03 repository x25519 secret v1"  # roles, §20.1
ADMIN_CONTEXT = "vault 2026-12-03 admin record key v1"
HOST_ROOT_CONTEXT = "vault 2026-12-03 host root key v1"
HOST_KEY_CONTEXT = "vault 2026-12-03 host key v1"
UNIT_CONTEXT = "vault 2026-12-03 data unit key v1"
DATA, TREE = 0, 1  # blob types, §2.3
BUNDLE = 2  # pack header / index flag: the blob is a member of a bundle, §6.4
PUBLIC, HOST = 4, 8  # flags of units sealed to the public key / under a host key, §20.2
# Kinds only a full key may write in version 4: they need a valid admin tag (§20.2).
ADMIN_KINDS = (b"forget", b"mark", b"deletion", b"format", b"mirror", b"export")
MAX_BUNDLE = 16 << 20  # largest bundle plaintext, §6.4
ID_NAME = re.compile(r"^[0-9a-fA-F]{64}$")  # object names in listings, §1


class FormatError(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise FormatError(msg)


def warn(msg):
    print(f"vault_reader: warning: {msg}", file=sys.stderr)


def refuse_misnamed(what, name, raw):
    """§10 "Name mismatch": an object that opens but does not hash to its name is another
    object under this name (swapped or forged); reading on would pass it off as this one."""
    check(blake3.blake3(raw).hexdigest() == name.lower(),
          f"{what} {name[:8]}: stored bytes do not match its name (swapped or forged)")


# ---------------------------------------------------------------- primitives (§2, §4)

def aead_open(key, aad, m):
    """m = nonce(12) ‖ ciphertext ‖ tag(16); raises InvalidTag on any failure (§2.2)."""
    if len(m) < 28:
        raise InvalidTag()
    return AESGCMSIV(key).decrypt(m[:12], m[12:], aad)


def unzstd(data, limit=None):
    """Decompress one zstd frame; with limit, refuse output longer than limit."""
    out = bytearray()
    with zstandard.ZstdDecompressor().stream_reader(data) as r:
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                return bytes(out)
            out += chunk
            check(limit is None or len(out) <= limit, "zstd output exceeds raw_len")


def open_object(enc, kind, stored, checksummed=False, roles=None):
    """Open a sealed object envelope (§4); kind is b"config", b"index", b"snapshot", …
    With the role keys of a version-4 repository (§20.2), also host-sealed snapshots
    (0x02) and admin records (0x03); an admin kind without a valid tag is refused."""
    return open_authenticated(enc, kind, stored, checksummed, roles)[0]


def open_authenticated(enc, kind, stored, checksummed=False, roles=None):
    """(body, whether a full key vouches for it): always below version 4 (§20.3)."""
    if checksummed:
        check(len(stored) >= 32 and blake3.blake3(stored[:-32]).digest() == stored[-32:],
              f"{kind.decode()}: checksum mismatch")
        stored = stored[:-32]
    aad = b"vault object v1 " + kind
    check(len(stored) >= 1, f"{kind.decode()}: empty object")
    if stored[0] == 1:
        check(roles is None or kind not in ADMIN_KINDS,
              f"{kind.decode()}: not authenticated by a full key")
        payload, vouched = aead_open(enc, aad, stored[1:]), roles is None
    elif stored[0] == 2 and roles is not None:
        key, at = roles.unit_key(HOST, stored[1:])
        payload, vouched = aead_open(key, aad, stored[1 + at:]), False
    elif stored[0] == 3 and roles is not None:
        check(len(stored) > 33 and blake3.blake3(stored[:-32], key=roles.admin).digest()
              == stored[-32:], f"{kind.decode()}: not authenticated by a full key")
        payload, vouched = aead_open(enc, aad, stored[1:-32]), True
    else:
        raise FormatError(f"{kind.decode()}: object version {stored[0]} is not known")
    check(len(payload) >= 1 and payload[0] in (0, 1), f"{kind.decode()}: bad compression byte")
    return (payload[1:] if payload[0] == 0 else unzstd(payload[1:])), vouched


class RoleKeys:
    """What a full key derives in a version-4 repository (§20.1)."""

    def __init__(self, master, enc):
        self.enc = enc
        self.secret = X25519PrivateKey.from_private_bytes(
            blake3.blake3(master, derive_key_context=X25519_CONTEXT).digest())
        self.public = self.secret.public_key().public_bytes_raw()
        self.admin = blake3.blake3(master, derive_key_context=ADMIN_CONTEXT).digest()
        self.host_root = blake3.blake3(master, derive_key_context=HOST_ROOT_CONTEXT).digest()

    def unit_key(self, flag, unit):
        """(key of the unit's sealed payload, where that payload starts) (§20.2)."""
        if flag == PUBLIC:
            epk = aead_open(self.enc, b"vault unit epk v1", unit[:60])
            shared = self.secret.exchange(X25519PublicKey.from_public_bytes(epk))
            check(shared != bytes(32), "data unit: ephemeral key of low order")
            key = blake3.blake3(shared + epk + self.public,
                                derive_key_context=UNIT_CONTEXT).digest()
            return key, 60
        host_id = aead_open(self.enc, b"vault unit host v1", unit[:44])
        check(len(host_id) == 16, "host id is not 16 bytes")
        return blake3.blake3(self.host_root + host_id,
                             derive_key_context=HOST_KEY_CONTEXT).digest(), 44


def blob_id(idk, btype, plaintext):
    return blake3.blake3(bytes([btype]) + plaintext, key=idk).digest()  # §2.3


def b64(s):
    return base64.b64decode(s, validate=True)


def parse_time_ns(s):
    """RFC 3339 -> nanoseconds since the epoch (fractions up to 9 digits, any offset)."""
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
                     r"([Zz]|[+-]\d\d:\d\d)", s)
    check(m is not None, f"bad RFC 3339 time {s!r}")
    y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
    tz = timezone.utc
    if m[8] not in "Zz":
        sign = -1 if m[8][0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(m[8][1:3]), minutes=int(m[8][4:6])))
    whole = datetime(y, mo, d, h, mi, min(sec, 59), tzinfo=tz).timestamp()  # leap second: :59
    return int(whole) * 10**9 + int(((m[7] or "") + "000000000")[:9])


# ---------------------------------------------------------------- chunking (§16)
# Not needed to read; here so that an implementation written from the spec alone can be
# checked against vault's boundaries (tests/reference_reader.rs).

M64 = (1 << 64) - 1
MASKS = [0, 0, 0, 0, 0,
         0x0000000001804110, 0x0000000001803110, 0x0000000018035100, 0x0000001800035300,
         0x0000019000353000, 0x0000590003530000, 0x0000d90003530000, 0x0000d90103530000,
         0x0000d90303530000, 0x0000d90313530000, 0x0000d90f03530000, 0x0000d90303537000,
         0x0000d90703537000, 0x0000d90707537000, 0x0000d91707537000, 0x0000d91747537000,
         0x0000d91767537000, 0x0000d93767537000, 0x0000d93777537000, 0x0000d93777577000,
         0x0000db3777577000]


def gear_key(master):
    return blake3.blake3(master, derive_key_context=GEAR_CONTEXT).digest()


def gear_tables(master, gear=None):
    """(G, G_LS) of the config's `chunker.gear`: None is the XOR-seeded table,
    "prf-v2" the PRF table; any other value is refused, as vault refuses it."""
    if gear is None:
        seed = int.from_bytes(blake3.blake3(master, derive_key_context=SEED_CONTEXT)
                              .digest()[:8], "little")
        public = [int.from_bytes(hashlib.md5(bytes([i]) * 64).digest()[:8], "big")
                  for i in range(256)]
        g = [v ^ seed for v in public]
    else:
        check(gear == "prf-v2", f"chunker gear {gear!r} is unknown")
        key = gear_key(master)
        g = [int.from_bytes(blake3.blake3(bytes([i]), key=key).digest()[:8], "little")
             for i in range(256)]
    return g, [(v << 1) & M64 for v in g]


def _gear_scan(data, start, i, limit, h, g, g_ls, m):
    """One loop of the cut (§16): (cut, None, None) at a boundary, else (None, i, h)."""
    m_ls = (m << 1) & M64
    while i < limit:
        a = start + 2 * i
        h = ((h << 2) + g_ls[data[a]]) & M64
        if h & m_ls == 0:
            return 2 * i, None, None
        h = (h + g[data[a + 1]]) & M64
        if h & m == 0:
            return 2 * i + 1, None, None
        i += 1
    return None, i, h


def chunk_boundaries(data, chunker, master):
    """Where each chunk of the stream `data` ends, for the config's `chunker` object."""
    g, g_ls = gear_tables(master, chunker.get("gear"))
    lo, avg, hi = chunker["min_size"], chunker["avg_size"], chunker["max_size"]
    bits = round(math.log2(avg))
    mask_s, mask_l = MASKS[bits + chunker["normalization"]], MASKS[bits - chunker["normalization"]]
    ends, start = [], 0
    while start < len(data):
        rem = len(data) - start
        chunk = rem
        if rem > lo:
            center = avg
            if rem > hi:
                rem = hi
            elif rem < center:
                center = rem
            h, i = 0, lo // 2
            chunk = rem
            for limit, m in ((center // 2, mask_s), (rem // 2, mask_l)):
                cut = _gear_scan(data, start, i, limit, h, g, g_ls, m)
                if cut[0] is not None:
                    chunk = cut[0]
                    break
                i, h = cut[1], cut[2]
        start += max(chunk, 1)
        ends.append(start)
    return ends


# ---------------------------------------------------------------- repository

class Repo:
    def __init__(self, root, password):
        self.root = root
        master, content = self.master_key(password)
        self.master = master
        self.enc = blake3.blake3(master, derive_key_context=ENC_CONTEXT).digest()  # §2.1
        # Format 5 (§3.3): after a key rotation blob ids derive from the content key.
        self.idk = blake3.blake3(content, derive_key_context=IDK_CONTEXT).digest()
        try:  # §5: a tag failure means the master key belongs to another repository
            config = json.loads(open_object(self.enc, b"config", self.read("config"), True))
        except InvalidTag:
            raise FormatError("config does not open: key file of another repository?")
        self.config = config
        check(config["version"] in (1, 2, 3, 4, 5),
              f"unsupported repository version {config['version']}")
        self.roles = RoleKeys(master, self.enc) if config["version"] >= 4 else None
        # §12a: format records may raise the version; one this reader does not know is refused.
        for name in self.list_ids("format"):
            raw = self.read("format", name)
            if blake3.blake3(raw).hexdigest() != name:
                continue
            try:
                record = json.loads(open_object(self.enc, b"format", raw, roles=self.roles))
            except (InvalidTag, FormatError, ValueError):
                continue
            check(record.get("version") in (1, 2, 3, 4, 5),
                  f"repository format {record.get('version')} is newer than this reader knows")
        check(isinstance(config.get("id"), str) and re.fullmatch(r"[0-9a-f]{64}", config["id"]),
              "config: repository id is not 64 lowercase hex digits")  # §5
        self.index = self.load_index()

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def read(self, *parts):
        with open(self.path(*parts), "rb") as f:
            return f.read()

    def list_ids(self, directory):
        """Object names (64 hex digits) in a directory; a missing directory is empty (§1)."""
        try:
            names = os.listdir(self.path(directory))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if ID_NAME.match(n))

    # -- §3 key files
    def master_key(self, password):
        for name in self.list_ids("keys"):
            try:
                key = json.loads(self.read("keys", name))
                kdf = key["kdf"]
                log_n, r, p = kdf["log_n"], kdf["r"], kdf["p"]
                check(key["version"] in (1, 2) and kdf["algorithm"] == "scrypt", "unsupported")
                check(15 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16, "KDF out of range")
                check(128 * r * 2**log_n <= 1 << 30 and r * p * 2**log_n <= 1 << 23,
                      "KDF above the ceiling")
            except (ValueError, KeyError, TypeError, FormatError) as e:
                warn(f"skipping malformed key file {name}: {e}")
                continue
            kek = hashlib.scrypt(password, salt=b64(kdf["salt"]), n=2**log_n, r=r, p=p,
                                 dklen=32, maxmem=128 * r * (2**log_n + p + 2) + (1 << 20))
            try:
                payload = json.loads(aead_open(kek, b"vault key v1", b64(key["sealed"])))
            except InvalidTag:
                continue  # not this password
            check(not payload.get("backup"),
                  "this password opens a backup-role key, which cannot restore (§20): "
                  "use a full key's password")
            master = b64(payload["master_key"])
            check(len(master) == 32, "master key is not 32 bytes")
            content = b64(payload["content_key"]) if payload.get("content_key") else master
            check(len(content) == 32, "content key is not 32 bytes")
            return master, content
        raise FormatError("no key file opens with this password")

    # -- §6 packs
    def pack_path(self, pack_hex):
        return self.path("data", pack_hex[:2], pack_hex)

    def pack_header(self, pack_hex):
        """The entries of a pack's own header (§6.2, §6.3) as index-style tuples."""
        with open(self.pack_path(pack_hex), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            check(size >= 8, "pack too short")
            f.seek(size - 8)
            hlen, magic = struct.unpack("<I4s", f.read(8))
            check(magic == b"vpk1" and hlen + 8 <= size, "bad pack trailer")
            f.seek(size - 8 - hlen)
            header = aead_open(self.enc, b"vault pack header v1", f.read(hlen))
        check(len(header) % 42 == 0, "pack header length not a multiple of 42")
        entries, offset = [], 0
        for i in range(0, len(header), 42):
            btype, flags, bid, length, raw_len = struct.unpack_from("<BB32sII", header, i)
            check(btype in (DATA, TREE), "bad blob type in pack header")
            if flags & BUNDLE and length == 0:  # a later member of the bundle before it
                check(entries and entries[-1][1][2] == flags and entries[-1][1][1] == btype,
                      "bundle member without its bundle")
                _, t, f, off, ln, raw, inner = entries[-1][1]
                entries.append((bid, (pack_hex, btype, flags, off, ln, raw_len, inner + raw)))
            else:
                check(length >= 28, "pack header: a unit shorter than its seal")
                entries.append((bid, (pack_hex, btype, flags, offset, length, raw_len, 0)))
            offset += length
        check(offset == size - 8 - hlen, "pack header lengths do not add up")
        return entries

    def read_blob(self, btype, bid):
        """Read, authenticate, decompress and verify one blob (§6.3)."""
        loc = self.index.get(bid)
        check(loc is not None, f"blob {bid.hex()} is in no index file")
        pack_hex, t, flags, offset, length, raw_len, inner = loc
        check(t == btype, f"blob {bid.hex()} has type {t}, expected {btype}")
        with open(self.pack_path(pack_hex), "rb") as f:
            f.seek(offset)
            sealed = f.read(length)
        check(len(sealed) == length, f"pack {pack_hex} is truncated")
        if flags & BUNDLE:  # §6.4: open the whole bundle, then take the member's bytes
            aad = b"vault bundle v1" + bytes([btype])
        else:
            aad = b"vault blob v1" + bytes([btype]) + bid
        try:
            key, at = self.enc, 0
            if flags & (PUBLIC | HOST):  # §20.2: a unit of version 4
                check(self.roles is not None and flags & (PUBLIC | HOST) != PUBLIC | HOST,
                      f"blob {bid.hex()}: role flags outside version 4, or both")
                key, at = self.roles.unit_key(flags & (PUBLIC | HOST), sealed)
            p = aead_open(key, aad, sealed[at:])
        except InvalidTag:
            raise FormatError(f"blob {bid.hex()} in pack {pack_hex} fails authentication")
        if flags & BUNDLE:
            if flags & 1:
                p = unzstd(p, MAX_BUNDLE)
            check(len(p) <= MAX_BUNDLE, "bundle larger than allowed")
            p = p[inner:inner + raw_len]
        elif flags & 1:
            p = unzstd(p, raw_len)
        check(len(p) == raw_len, f"blob {bid.hex()}: length {len(p)} != raw_len {raw_len}")
        check(blob_id(self.idk, btype, p) == bid, f"blob {bid.hex()}: id mismatch")
        return p

    # -- §7 index files
    @staticmethod
    def parse_index(body):
        """Binary index body -> (superseded ids, [(pack id, [(type, flags, bid, off, len, raw, inner)])])."""
        pos = 0

        def take(n):
            nonlocal pos
            check(pos + n <= len(body), "index body truncated")
            pos += n
            return body[pos - n:pos]

        check(take(4) == b"vidx", "bad index magic")
        version = take(1)[0]
        check(version in (1, 2), f"unsupported index version {version}")
        (s,) = struct.unpack("<I", take(4))
        supersedes = [take(32) for _ in range(s)]
        (npacks,) = struct.unpack("<I", take(4))
        packs = []
        for _ in range(npacks):
            pack_id = take(32)
            (nblobs,) = struct.unpack("<I", take(4))
            if version == 1:
                blobs = [struct.unpack("<BB32sIII", take(46)) + (0,) for _ in range(nblobs)]
            else:  # version 2 adds each blob's offset inside its bundle
                blobs = [struct.unpack("<BB32sIIII", take(50)) for _ in range(nblobs)]
            check(all(b[0] in (DATA, TREE) for b in blobs), "bad blob type in index")
            packs.append((pack_id, blobs))
        check(pos == len(body), "trailing bytes after index body")
        bundled = any(b[1] & BUNDLE for _, blobs in packs for b in blobs)
        check(bundled == (version == 2), "bundle members and index version disagree")
        return supersedes, packs

    def load_index(self):
        files = {}
        for name in self.list_ids("index"):
            raw = self.read("index", name)
            try:
                plain, vouched = open_authenticated(self.enc, b"index", raw, roles=self.roles)
                body = self.parse_index(plain)
            except (FormatError, InvalidTag, zstandard.ZstdError) as e:
                warn(f"skipping damaged index file {name}: {str(e) or 'tag mismatch'}")
                continue
            refuse_misnamed("index", name, raw)
            # §20.3: only a full key's index file may make others' entries vanish.
            files[name.lower()] = body if vouched else ([], body[1])
        superseded = {sid.hex() for sup, _ in files.values() for sid in sup}
        index, indexed_packs = {}, set()
        for name, (_, packs) in sorted(files.items()):
            if name in superseded:
                continue
            for pack_id, blobs in packs:
                indexed_packs.add(pack_id.hex())
                for btype, flags, bid, offset, length, raw_len, inner in blobs:
                    index.setdefault(bid, (pack_id.hex(), btype, flags, offset, length, raw_len,
                                           inner))
        # Unindexed packs are legal (§7, §17): describe them from their own headers.
        for sub in self.list_dirs("data"):
            for name in self.list_ids(os.path.join("data", sub)):
                if name.lower() in indexed_packs:
                    continue
                try:
                    for bid, loc in self.pack_header(name):
                        index.setdefault(bid, loc)
                except (FormatError, InvalidTag, OSError) as e:
                    warn(f"unindexed pack {name} has no readable header: {e}")
        return index

    def list_dirs(self, directory):
        try:
            return sorted(os.listdir(self.path(directory)))
        except FileNotFoundError:
            return []

    # -- §10 snapshots
    def snapshots(self):
        """[(id hex, snapshot dict)] oldest first (§10 "Order")."""
        out = []
        for name in self.list_ids("snapshots"):
            raw = self.read("snapshots", name)
            try:
                snap = json.loads(open_object(self.enc, b"snapshot", raw, roles=self.roles))
            except (FormatError, InvalidTag, zstandard.ZstdError) as e:
                warn(f"skipping unreadable snapshot {name}: {str(e) or 'tag mismatch'}")
                continue
            refuse_misnamed("snapshot", name, raw)
            check(snap["version"] == 1, f"snapshot {name}: unsupported version")
            out.append((name.lower(), snap))
        out.sort(key=lambda s: (parse_time_ns(s[1]["time"]), "original" in s[1], s[0]))
        return out

    def tree(self, tree_hex):
        """Decode a tree blob (§9): list of nodes with raw-bytes names, validated."""
        nodes = json.loads(self.read_blob(TREE, bytes.fromhex(tree_hex)))["nodes"]
        prev = None
        for node in nodes:
            name = node["name"] = raw_bytes(node["name"])
            check(name not in (b"", b".", b"..") and b"/" not in name and b"\0" not in name,
                  f"illegal name {name!r} in tree")
            check(prev is None or prev < name, "tree nodes not strictly sorted by name")
            prev = name
        return nodes


def raw_bytes(v):
    """RawBytes (§9.2): a JSON string (UTF-8) or {"b64": "..."}."""
    return v.encode("utf-8") if isinstance(v, str) else b64(v["b64"])


# ---------------------------------------------------------------- restore (§9)

class Restorer:
    def __init__(self, repo):
        self.repo = repo
        self.links = {}  # (dev, inode) -> first restored path, for hard links (§9.5)
        self.is_root = os.geteuid() == 0

    def restore_dir(self, tree_hex, target):
        for node in self.repo.tree(tree_hex):
            path = os.path.join(target, node["name"])
            kind = node["type"]
            if kind == "dir":
                os.makedirs(path, exist_ok=True)
                if node.get("subtree"):
                    self.restore_dir(node["subtree"], path)
            elif kind == "file":
                if self.hard_link(node, path):
                    continue
                self.write_file(node, path)
            elif kind == "symlink":
                os.symlink(raw_bytes(node["target"]), path)
            elif kind == "fifo":
                os.mkfifo(path)
            else:  # chardev, blockdev, socket
                warn(f"skipping {kind} {os.fsdecode(path)}")
                continue
            self.set_metadata(node, path)  # dirs last: after their contents

    def hard_link(self, node, path):
        if node.get("links", 0) <= 1:
            return False
        first = self.links.setdefault((node.get("dev", 0), node.get("inode", 0)), path)
        if first == path:
            return False
        os.link(first, path)
        return True

    def write_file(self, node, path):
        """Zero-filled file of `size`, data stream laid over the data extents (§9.4)."""
        size = node.get("size", 0)
        extents = node.get("extents")
        if extents is None:
            extents = [[0, size]] if size > 0 else []
        check(all(off + n <= size for off, n in extents), "extent beyond file size")
        pending = iter(extents)
        left = 0  # bytes left in the current extent
        with open(path, "xb") as f:
            f.truncate(size)  # holes stay holes
            for bid in node.get("content", []):
                data = memoryview(self.repo.read_blob(DATA, bytes.fromhex(bid)))
                while data:
                    if left == 0:
                        ext = next(pending, None)
                        check(ext is not None, f"{os.fsdecode(path)}: stream longer than extents")
                        f.seek(ext[0])
                        left = ext[1]
                        continue
                    n = min(left, len(data))
                    f.write(data[:n])
                    data, left = data[n:], left - n
        # A stream shorter than the extents is legal: the rest stays zero.

    def set_metadata(self, node, path):
        is_link = node["type"] == "symlink"
        if self.is_root:
            try:
                os.chown(path, node["uid"], node["gid"], follow_symlinks=False)
            except OSError as e:
                warn(f"chown {os.fsdecode(path)}: {e}")
        for x in node.get("xattrs", []):
            try:
                os.setxattr(path, raw_bytes(x["name"]), b64(x["value"]), follow_symlinks=False)
            except OSError as e:
                warn(f"setxattr {os.fsdecode(path)}: {e}")
        if not is_link:  # Linux cannot chmod a symlink
            os.chmod(path, stat.S_IMODE(node["mode"]))
        mtime = node["mtime_ns"]
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


# ---------------------------------------------------------------- CLI

def pick_snapshot(snaps, which):
    if which == "latest":
        check(snaps, "repository has no snapshots")
        return snaps[-1]
    matches = [s for s in snaps if s[0].startswith(which.lower())]
    check(len(matches) == 1, f"{len(matches)} snapshots match {which!r}")
    return matches[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True)
    ap.add_argument("--password-file", required=True)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("snapshots", help="list snapshots, oldest first")
    rp = sub.add_parser("restore", help="restore a snapshot into TARGET (should be empty)")
    rp.add_argument("snapshot", help="full id, unique id prefix, or 'latest'")
    rp.add_argument("target")
    cp = sub.add_parser("chunks", help="blob ids of FILE's chunks, as this repository cuts them")
    cp.add_argument("file")
    args = ap.parse_args()

    with open(args.password_file, "rb") as f:
        password = f.read().rstrip(b"\r\n")  # §3.2: trailing CR/LF bytes are stripped
    try:
        repo = Repo(args.repo, password)
        if args.command == "chunks":
            with open(args.file, "rb") as f:
                data = f.read()
            start = 0
            for end in chunk_boundaries(data, repo.config["chunker"], repo.master):
                print(blob_id(repo.idk, DATA, data[start:end]).hex(), end - start)
                start = end
            return
        snaps = repo.snapshots()
        if args.command == "snapshots":
            for sid, s in snaps:
                print(" ".join([sid, s["time"], s["host"], *s["paths"]]))
        else:
            sid, snap = pick_snapshot(snaps, args.snapshot)
            target = os.fsencode(args.target)
            os.makedirs(target, exist_ok=True)
            Restorer(repo).restore_dir(snap["tree"], target)
            print(f"restored snapshot {sid} to {args.target}", file=sys.stderr)
    except (FormatError, InvalidTag, zstandard.ZstdError, KeyError, ValueError) as e:
        print(f"vault_reader: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
