//! Tree blobs: the JSON decoder directly, and behind a sealed tree blob.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::pack::{self, BlobType};
use vault::format::tree::Tree;
use vault_fuzz::keys;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let plain = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        // As read from a pack: sealed (and compressed when it helps) under its id.
        let keys = keys();
        let id = keys.blob_id(BlobType::Tree as u8, rest);
        let blob = pack::seal_blob(keys, BlobType::Tree, id, rest, 3);
        pack::open_blob(keys, &blob.entry(0), &blob.bytes).expect("a sealed blob opens")
    };
    let Ok(tree) = Tree::decode(&plain) else {
        return;
    };
    for node in &tree.nodes {
        assert!(tree.find(&node.name.0).is_some(), "every node is found");
        let _ = node.data_extents();
        let _ = node.name.lossy();
    }
    // The canonical encoding decodes to the same tree, and is a fixed point.
    let enc = tree.clone().encode();
    let again = Tree::decode(&enc).expect("an encoded tree decodes");
    assert_eq!(again, tree);
    assert_eq!(again.clone().encode(), enc);
});
