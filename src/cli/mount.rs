//! `vault mount`: parses, opens the repository for reading, and hands over to the library.

use anyhow::{Result, bail};

use super::commands::reading;
use super::{Global, MountArgs};
use crate::error::exit;
use crate::ops::mount::{MountOptions, mount as serve};

pub fn mount(g: &Global, a: &MountArgs) -> Result<i32> {
    if !a.mountpoint.is_dir() {
        bail!("{}: not a directory", a.mountpoint.display());
    }
    let session = reading(g, "mount")?;
    let opts = MountOptions {
        allow_other: a.allow_other,
    };
    let at = a.mountpoint.display().to_string();
    let started = |n: usize| {
        if !g.quiet {
            eprintln!(
                "vault: {n} snapshot(s) mounted at {at}; Ctrl-C or `fusermount3 -u {at}` unmounts"
            );
        }
    };
    serve(session, &a.mountpoint, &opts, &started)?;
    Ok(exit::OK)
}
