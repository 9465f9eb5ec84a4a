//! A TCP proxy that puts a wide-area link between a client and a server on loopback, so
//! that tests and `benches/peers.sh` can see what remote operations cost at WAN distance.
//!
//! Every byte is delayed by half the round-trip time in each direction, optionally paced
//! at a link rate, and the traffic is counted: connections, bytes each way, and round
//! trips (request/response exchanges). The first line on stdout is the port it listens
//! on; `--stats FILE` keeps FILE up to date with the counters as JSON.
//!
//! ```text
//! latency_proxy --upstream 127.0.0.1:PORT [--listen 127.0.0.1:0] [--rtt-ms 50]
//!               [--rate-mbit N] [--stats FILE]
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

/// The most one read takes from a socket.
const CHUNK: usize = 64 << 10;
/// The most bytes in flight per direction of a connection. Beyond it the proxy stops
/// reading, as a full TCP window would stop the sender: memory stays bounded, and at
/// 16 MiB per half round trip it is far above what tests and benchmarks move.
const WINDOW: usize = 16 << 20;

#[derive(Parser)]
#[command(about = "A TCP proxy that adds latency (and optionally a rate cap) and counts traffic")]
struct Args {
    /// Where to forward each connection (host:port)
    #[arg(long)]
    upstream: String,
    /// Where to listen; port 0 picks a free port (printed on stdout)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Round-trip time to add, in milliseconds; each direction gets half of it
    #[arg(long, default_value_t = 50)]
    rtt_ms: u64,
    /// Link rate of each direction of each connection, in Mbit/s (unlimited without it)
    #[arg(long)]
    rate_mbit: Option<f64>,
    /// Keep this file up to date with the counters, as JSON
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[derive(Default)]
struct Stats {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    round_trips: AtomicU64,
    /// Bumped on every change, so that the file is rewritten only when something changed.
    changes: AtomicU64,
}

impl Stats {
    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
        self.changes.fetch_add(1, Relaxed);
    }

    fn sub(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
        self.changes.fetch_add(1, Relaxed);
    }

    /// Writes the counters to a temporary file renamed over `path`, so that a reader
    /// never sees a half-written file.
    fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = format!(
            "{{\"connections_total\":{},\"connections_open\":{},\"bytes_up\":{},\"bytes_down\":{},\"round_trips\":{}}}\n",
            self.connections_total.load(Relaxed),
            self.connections_open.load(Relaxed),
            self.bytes_up.load(Relaxed),
            self.bytes_down.load(Relaxed),
            self.round_trips.load(Relaxed),
        );
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }
}

/// One direction of the link.
#[derive(Clone, Copy)]
struct Link {
    one_way: Duration,
    /// Bytes per second, if capped.
    rate: Option<f64>,
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// What one connection's two directions share.
struct Conn {
    stats: Arc<Stats>,
    /// Whether the client has been handed data from the server since it last sent: its
    /// next send is then a new round trip. True at first, so the first send counts.
    server_spoke: AtomicBool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats.sub(&self.stats.connections_open, 1);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(rate) = args.rate_mbit {
        anyhow::ensure!(rate > 0.0, "--rate-mbit must be above 0");
    }
    let stats = Arc::new(Stats::default());
    // SIGTERM and SIGINT are blocked before the runtime starts its threads (which inherit
    // the mask) and taken by one thread of their own, which writes the final counters.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;
    if let Some(path) = &args.stats {
        stats.write(path)?; // at once, so that a reader finds the file from the start
    }
    {
        let (stats, path) = (stats.clone(), args.stats.clone());
        std::thread::spawn(move || {
            let _ = signals.wait();
            if let Some(path) = path {
                let _ = stats.write(&path);
            }
            std::process::exit(0);
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, stats))
}

async fn serve(args: Args, stats: Arc<Stats>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen).await?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let link = Link {
        one_way: Duration::from_millis(args.rtt_ms) / 2,
        rate: args.rate_mbit.map(|m| m * 1e6 / 8.0),
    };
    if let Some(path) = args.stats {
        tokio::spawn(write_stats(stats.clone(), path));
    }
    let upstream: Arc<str> = args.upstream.into();
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                stats.add(&stats.connections_total, 1);
                stats.add(&stats.connections_open, 1);
                let conn = Arc::new(Conn {
                    stats: stats.clone(),
                    server_spoke: AtomicBool::new(true),
                });
                tokio::spawn(connection(client, upstream.clone(), link, conn));
            }
            Err(e) => {
                // Out of file descriptors, say: wait for some to close rather than spin.
                eprintln!("latency_proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Rewrites the stats file at most every 50 ms, when something changed.
async fn write_stats(stats: Arc<Stats>, path: PathBuf) {
    let mut seen = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        // Read before writing: a change made while the file is written is written next.
        let now = stats.changes.load(Relaxed);
        if now != seen {
            seen = now;
            if let Err(e) = stats.write(&path) {
                eprintln!("latency_proxy: {}: {e}", path.display());
            }
        }
    }
}

async fn connection(client: TcpStream, upstream: Arc<str>, link: Link, conn: Arc<Conn>) {
    let server = match TcpStream::connect(&*upstream).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("latency_proxy: connect to {upstream}: {e}");
            return; // dropping the client closes it
        }
    };
    // The delays are the proxy's to add: Nagle's algorithm must not add its own.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // A direction that ends normally (end of stream, passed on) leaves the other one
    // running: that is a half-close. One that fails to write ends both, which drops and
    // so closes both sockets.
    let _ = tokio::try_join!(
        pipe(client_read, server_write, link, Direction::Up, &conn),
        pipe(server_read, client_write, link, Direction::Down, &conn),
    );
}

/// A chunk on the link: when it was read, its bytes, and its share of the window.
type InFlight = (Instant, Vec<u8>, OwnedSemaphorePermit);

/// Moves bytes one way: a chunk read at t is written at t + rtt/2 (later only when the
/// rate cap makes it wait for the link), in order, and the end of the stream is passed
/// on once everything before it is delivered. Reading and delivering run side by side,
/// joined by a queue, so that any number of chunks are in flight at once, as on a link.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: Link,
    direction: Direction,
    conn: &Conn,
) -> std::io::Result<()> {
    let stats = &conn.stats;
    let (queue, mut arrivals) = mpsc::unbounded_channel::<InFlight>();
    let window = Arc::new(Semaphore::new(WINDOW));
    let read = async move {
        let mut buf = vec![0; CHUNK];
        // A read error (a reset) ends the stream like an end of file.
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if direction == Direction::Up && conn.server_spoke.swap(false, Relaxed) {
                stats.add(&stats.round_trips, 1);
            }
            let permit = window.clone().acquire_many_owned(n as u32).await;
            let permit = permit.expect("the window is never closed");
            let chunk = buf[..n].to_vec();
            if queue.send((Instant::now(), chunk, permit)).is_err() {
                break;
            }
        }
        // Dropping the queue's sender ends the delivery once the queue is drained.
        Ok::<_, std::io::Error>(())
    };
    let deliver = async move {
        let mut link_free = Instant::now();
        while let Some((read_at, chunk, _permit)) = arrivals.recv().await {
            // With a rate cap, a chunk goes on the link when the previous one is off it
            // and takes its size over the rate; it arrives one way's delay after that.
            let sent = match link.rate {
                Some(rate) => {
                    let start = read_at.max(link_free);
                    link_free = start + Duration::from_secs_f64(chunk.len() as f64 / rate);
                    link_free
                }
                None => read_at,
            };
            tokio::time::sleep_until(sent + link.one_way).await;
            to.write_all(&chunk).await?;
            let counter = match direction {
                Direction::Up => &stats.bytes_up,
                Direction::Down => &stats.bytes_down,
            };
            stats.add(counter, chunk.len() as u64);
            if direction == Direction::Down {
                conn.server_spoke.store(true, Relaxed);
            }
        }
        to.shutdown().await
    };
    tokio::try_join!(read, deliver).map(|_| ())
}
