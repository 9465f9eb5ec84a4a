//! Tree blobs: the JSON decoders (whole and lazy) directly, and behind a sealed tree blob.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::pack::{self, BlobType};
use vault::format::tree::{LazyTree, Tree};
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
    let lazy = LazyTree::decode(plain.clone());
    let Ok(tree) = Tree::decode(&plain) else {
        // What the whole decoder refuses, the lazy one refuses too, or it holds a node
        // that does not decode.
        if let Ok(l) = lazy {
            assert!(
                (0..l.len()).any(|i| l.node(i).is_err()),
                "a refused tree read lazily"
            );
        }
        return;
    };
    // The lazy decoder finds and decodes every node as the whole one has it.
    let lazy = lazy.expect("a tree that decodes whole decodes lazily");
    assert_eq!(lazy.len(), tree.nodes.len());
    for (i, node) in tree.nodes.iter().enumerate() {
        assert_eq!(lazy.find(&node.name.0), Some(i));
        assert_eq!(lazy.node(i).as_ref(), Ok(node));
    }
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
