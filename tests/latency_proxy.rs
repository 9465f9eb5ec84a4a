//! The latency proxy that the WAN tests and benchmarks put in front of servers: it
//! delays, passes every byte intact, and counts connections, bytes and round trips.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::bytes;
use common::proxy::Proxy;

/// A server on loopback that sends back whatever each connection sends, and closes the
/// connection when the client ends its side.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let (mut from, mut to) = (conn.try_clone().unwrap(), conn);
                let _ = std::io::copy(&mut from, &mut to);
            });
        }
    });
    port
}

fn exchange(c: &mut TcpStream, request: &[u8]) {
    c.write_all(request).unwrap();
    let mut response = vec![0; request.len()];
    c.read_exact(&mut response).unwrap();
    assert_eq!(response, request);
}

#[test]
fn one_exchange_takes_the_round_trip_time() {
    let proxy = Proxy::start(echo_server(), 50);
    let mut c = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    let start = Instant::now();
    exchange(&mut c, b"ping");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(50), "took {took:?}");
    drop(c);
    let s = proxy.stats();
    assert_eq!((s.connections_total, s.connections_open), (1, 0), "{s:?}");
    assert_eq!(
        (s.bytes_up, s.bytes_down, s.round_trips),
        (4, 4, 1),
        "{s:?}"
    );
}

#[test]
fn pipelined_requests_are_one_round_trip_and_each_exchange_is_one() {
    let proxy = Proxy::start(echo_server(), 50);
    let mut c = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    for i in 0..10u8 {
        c.write_all(&[i; 100]).unwrap();
    }
    let mut responses = vec![0; 1000];
    c.read_exact(&mut responses).unwrap();
    drop(c);
    let pipelined = proxy.stats();
    assert_eq!(pipelined.round_trips, 1, "{pipelined:?}");

    let mut c = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    let start = Instant::now();
    for i in 0..10u8 {
        exchange(&mut c, &[i; 100]);
    }
    assert!(start.elapsed() >= Duration::from_millis(500));
    let s = proxy.stats();
    assert_eq!(s.round_trips - pipelined.round_trips, 10, "{s:?}");
    assert_eq!((s.connections_total, s.connections_open), (2, 1), "{s:?}");
    assert_eq!((s.bytes_up, s.bytes_down), (2000, 2000), "{s:?}");
}

#[test]
fn a_large_transfer_arrives_intact_and_the_end_passes_through() {
    let proxy = Proxy::start(echo_server(), 50);
    let data = bytes(23, 20 << 20);
    let c = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    let mut writer = c.try_clone().unwrap();
    let sent = data.clone();
    let start = Instant::now();
    let send = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    // read_to_end returns only once the echo server's close came back through the proxy.
    let mut back = Vec::new();
    (&c).read_to_end(&mut back).unwrap();
    send.join().unwrap();
    assert!(
        back == data,
        "{} bytes came back, not the {} sent",
        back.len(),
        data.len()
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let s = proxy.stats();
    assert_eq!((s.bytes_up, s.bytes_down), (20 << 20, 20 << 20), "{s:?}");
    assert_eq!(s.connections_open, 0, "{s:?}");
}
