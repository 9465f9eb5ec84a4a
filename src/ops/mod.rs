//! Operations: what the commands do, above the repository layer and below the CLI.

pub mod audit;
pub mod backup;
pub mod check;
pub mod confirm;
pub mod diff;
pub mod dump;
pub mod exclude;
pub mod export;
pub mod find;
pub mod forget;
pub mod handoff;
pub mod image;
pub mod ls;
pub mod problem;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod select;
pub mod subset;
pub mod sync;
pub mod timespec;
pub mod twophase;
pub mod verify;
pub mod versions;
pub mod walk;
