//! `vault mount`: every snapshot, and every version of every file, as a read-only FUSE
//! file system.
//!
//! ```text
//! latest/                      the newest snapshot of this host
//! snapshots/<local time>/      every snapshot; a second one of the same second is
//!                              "<local time> <short id>"
//! hosts/NAME/{latest,at,snapshots}/
//! tags/TAG/<local time>/       the snapshots with that tag
//! ids/<short id>/              (any unique prefix of 4 digits or more looks up)
//! at/<time>/                   the snapshot `--at <time>` chooses, for this host; looked
//!                              up only, so the listing of at/ is empty
//! versions/<path>/<local time> each distinct version of a file of this host, named by
//!                              the first snapshot that holds it; a directory there
//!                              lists what the newest snapshot holding it has (names
//!                              only older snapshots had still look up)
//! ```
//!
//! Files read byte for byte as `dump` gives them; a read fetches only the blobs its range
//! covers. Listing a directory reads trees only. A damaged or missing object fails the
//! reads that need it (EIO) and is reported once on stderr; everything else goes on.

mod cache;
mod catalog;
mod content;
mod fs;
mod packed;
mod view;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::session::Session;
use crate::session::state::Indexed;

/// How to mount.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let other users in (`allow_other`; needs `user_allow_other` in /etc/fuse.conf
    /// when not root). The stored modes decide what they may read.
    pub allow_other: bool,
}

/// Mounts the repository of `session` at `mountpoint` and serves it until it is
/// unmounted (`fusermount3 -u`, or the process being interrupted: a Ctrl-C unmounts it
/// before the process exits). `started` is told how many snapshots are mounted.
pub fn mount(
    session: Session<Indexed>,
    mountpoint: &Path,
    opts: &MountOptions,
    started: &dyn Fn(usize),
) -> Result<()> {
    use fuser::{Config, MountOption, SessionACL};
    let fs = fs::VaultFs::new(session)?;
    let count = fs.snapshot_count();
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("vault".into()),
        MountOption::Subtype("vault".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(4);
    let mut session = fuser::Session::new(fs, mountpoint, &cfg).with_context(|| {
        format!(
            "mounting at {} (needs /dev/fuse and fusermount3, from the fuse3 package)",
            mountpoint.display()
        )
    })?;
    let unmounter = Arc::new(Mutex::new(session.unmount_callable()));
    let at = mountpoint.to_path_buf();
    // On a signal: unmount, then wait for the session (and its lock) to be let go here
    // before the interrupt goes on to remove what is left on storage.
    let (released, wait) = std::sync::mpsc::channel::<()>();
    crate::repo::cleanup::on_interrupt(move || {
        unmount(&unmounter, &at);
        let _ = wait.recv_timeout(std::time::Duration::from_secs(10));
    });
    started(count);
    let served = session.run();
    let _ = released.send(());
    served.context("serving the mount")?;
    Ok(())
}

/// Unmounts; a mount still in use (a shell's working directory in it) is detached
/// instead, and goes away once its last user leaves.
fn unmount(unmounter: &Mutex<fuser::SessionUnmounter>, at: &Path) {
    let done = unmounter
        .lock()
        .map(|mut u| u.unmount().is_ok())
        .unwrap_or(false);
    if !done {
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(at)
            .status();
    }
}
