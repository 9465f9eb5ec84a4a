//! At WAN distance an operation that finds nothing to do must cost a fixed number of
//! round trips, not one per object. Through the latency proxy in front of real SFTP and
//! S3 servers, the round trips of a no-change backup, of listing snapshots and of a
//! no-op sync are counted on a repository with two snapshots and again with 23: the
//! twenty snapshots more may not cost twenty round trips more.

mod common;

use common::proxy::Proxy;
use common::servers::{S3, Sftp};
use common::{Env, bytes};

/// Round trips a command costs through `proxy`.
fn round_trips(env: &Env, proxy: &Proxy, url: &str, extra: &[(&str, &str)], args: &[&str]) -> u64 {
    let before = proxy.stats().round_trips;
    let out = env
        .cmd()
        .envs(extra.iter().copied())
        .env("VAULT_REPOSITORY", url)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vault {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.stats().round_trips - before
}

/// The costs of the three operations, in round trips.
#[derive(Debug)]
struct Costs {
    backup: u64,
    snapshots: u64,
    sync: u64,
}

fn costs(env: &Env, proxy: &Proxy, url: &str, extra: &[(&str, &str)], src: &str) -> Costs {
    let rt = |args: &[&str]| round_trips(env, proxy, url, extra, args);
    Costs {
        backup: rt(&["backup", "-q", src]),
        snapshots: rt(&["snapshots"]),
        sync: rt(&["sync", "-q"]),
    }
}

fn nothing_to_do_costs_a_fixed_number_of_round_trips(
    url: &str,
    proxy: &Proxy,
    env: &Env,
    extra: &[(&str, &str)],
) {
    let src = env.source_with_file(bytes(3, 2 << 20));
    let src = src.to_str().unwrap();
    let run = |args: &[&str]| round_trips(env, proxy, url, extra, args);
    run(&["init"]);
    let mirror = env.path("mirror");
    run(&["mirror", "add", "disk", mirror.to_str().unwrap()]);
    run(&["backup", "-q", src]);
    run(&["sync", "-q"]);
    let few = costs(env, proxy, url, extra, src);
    for _ in 0..20 {
        run(&["backup", "-q", src]);
    }
    run(&["sync", "-q"]);
    let many = costs(env, proxy, url, extra, src);
    eprintln!("{url}: with 2 snapshots {few:?}, with 23 {many:?}");
    // A few round trips of slack for a lock refresh or a retry; twenty more snapshots
    // read one by one would cost at least twenty.
    let slack = 8;
    assert!(
        many.backup <= few.backup + slack,
        "backup: {few:?} -> {many:?}"
    );
    assert!(
        many.snapshots <= few.snapshots + slack,
        "snapshots: {few:?} -> {many:?}"
    );
    assert!(many.sync <= few.sync + slack, "sync: {few:?} -> {many:?}");
}

#[test]
fn sftp_nothing_to_do_costs_a_fixed_number_of_round_trips() {
    let env = Env::new();
    let Some(sftp) = Sftp::start(&env.path("sshd")) else {
        return;
    };
    let proxy = Proxy::start(sftp.server.port, 20);
    let url = sftp.url(&env.path("remote/vault")).replace(
        &format!(":{}/", sftp.server.port),
        &format!(":{}/", proxy.port()),
    );
    // One connection: a second one, opened when requests queue up on a loaded machine,
    // costs its own ssh handshake (a dozen round trips) whatever the repository holds.
    let one = [("VAULT_CONNECTIONS", "1")];
    nothing_to_do_costs_a_fixed_number_of_round_trips(&url, &proxy, &env, &one);
}

#[test]
fn s3_nothing_to_do_costs_a_fixed_number_of_round_trips() {
    let env = Env::new();
    let Some(s3) = S3::start(&env.path("s3")) else {
        return;
    };
    let proxy = Proxy::start(s3.server.port, 20);
    let url = s3.url("vault").replace(
        &format!(":{}&", s3.server.port),
        &format!(":{}&", proxy.port()),
    );
    nothing_to_do_costs_a_fixed_number_of_round_trips(&url, &proxy, &env, &s3.env());
}
