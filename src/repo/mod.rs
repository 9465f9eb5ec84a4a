//! The repository layer: storage, keys, index, packs, snapshots and locks.

pub mod backend;
pub mod cache;
pub mod cleanup;
pub mod index;
pub mod limits;
pub mod location;
pub mod lock;
pub mod marks;
pub mod packer;
pub mod remote;
pub mod repository;
pub mod sftp;
pub mod storage;

pub use backend::{Backend, FileKind};
pub use repository::{Repository, Secret};
