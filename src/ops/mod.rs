//! Operations: what the commands do, above the repository layer and below the CLI.

pub mod backup;
pub mod dump;
pub mod exclude;
pub mod ls;
pub mod restore;
pub mod select;
pub mod walk;
