//! Slow and half-open clients cannot hold the daemon (issue 17, item 4): headers that
//! never finish are cut off after `daemon.header_read_timeout_ms`, a stalled body gets
//! 408 after `daemon.body_read_timeout_ms`, a request without the token gets 401
//! without its body being read, and at most `daemon.max_connections` are served.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Running};
use daemon::Hooks;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connect to the daemon at `url` (`http://IP:PORT`) and send `raw` as is.
async fn send_raw(url: &str, raw: &str) -> TcpStream {
    let mut s = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    s
}

/// Everything the server sends until it closes the connection, and when it closed;
/// `None` if it is still open after `limit`.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<(String, Duration)> {
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    match read {
        Ok(_) => Some((String::from_utf8_lossy(&buf).into_owned(), start.elapsed())),
        Err(_) => None,
    }
}

fn config(env: &Env, header_ms: u64, body_ms: u64, conns: usize) -> config::DaemonConfig {
    let mut c = env.daemon_config();
    c.daemon.header_read_timeout_ms = header_ms;
    c.daemon.body_read_timeout_ms = body_ms;
    c.daemon.max_connections = conns;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_headers_are_closed_within_the_timeout() {
    let env = Env::new();
    let d = Running::start(config(&env, 300, 10_000, 64), None, Hooks::default()).await;
    // Headers never finished (no blank line).
    let mut s = send_raw(&d.url, "POST /runs HTTP/1.1\r\nHost: x\r\nContent-Type: a").await;
    let (_, after) = read_to_close(&mut s, Duration::from_secs(5))
        .await
        .expect("a half-open request is closed");
    assert!(
        after < Duration::from_secs(3),
        "closed only after {after:?}"
    );
    // A connection that sends nothing at all is closed the same way.
    let mut idle = send_raw(&d.url, "").await;
    assert!(read_to_close(&mut idle, Duration::from_secs(5))
        .await
        .is_some());
    // The daemon still serves everybody else.
    assert_eq!(d.client.health().await.unwrap().status, "ok");
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_checked_before_the_body_and_stalled_bodies_get_408() {
    let env = Env::new();
    let cfg = config(&env, 10_000, 400, 64);
    let d = Running::start(cfg, Some("t0k3n".into()), Hooks::default()).await;
    let head = "POST /runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 1000\r\nConnection: close\r\n";
    // No token, and a body that never comes: 401 at once.
    let mut s = send_raw(&d.url, &format!("{head}\r\n")).await;
    let (text, after) = read_to_close(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        after < Duration::from_millis(350),
        "answered after {after:?}"
    );
    // With the token, a body that stalls after 10 bytes: 408 after the body timeout.
    let auth = format!("{head}authorization: bearer t0k3n\r\n\r\n{{\"preset\":");
    let mut s = send_raw(&d.url, &auth).await;
    let (text, after) = read_to_close(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("stopped arriving"), "{text}");
    assert!(
        after >= Duration::from_millis(350),
        "408 after only {after:?}"
    );
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let env = Env::new();
    let d = Running::start(config(&env, 5_000, 5_000, 2), None, Hooks::default()).await;
    let get = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let first = send_raw(&d.url, "").await;
    let _second = send_raw(&d.url, "").await;
    // Give the server a moment to accept both.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = send_raw(&d.url, get).await;
    assert!(
        read_to_close(&mut third, Duration::from_millis(700))
            .await
            .is_none(),
        "a third connection was served with max_connections = 2"
    );
    drop(first);
    let (text, _) = read_to_close(&mut third, Duration::from_secs(5))
        .await
        .expect("served once a slot is free");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    d.stop().await.unwrap();
}
