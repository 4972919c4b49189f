//! The accept loop, with the limits `axum::serve` does not expose: it runs hyper's
//! HTTP/1 connections without a timer, so a client that never finishes its headers
//! holds a connection (and, before the token check, the daemon) forever.
//!
//! - headers: hyper's `header_read_timeout` (with a tokio timer) closes a connection
//!   whose request headers are not complete in time, idle keep-alive ones included;
//! - bodies: tower-http's `RequestBodyTimeoutLayer` fails a body that sends nothing for
//!   `body_read_timeout_ms` (the handler answers 408);
//! - connections: at most `max_connections` are served at once (a semaphore permit per
//!   connection, as in mini-redis); further clients wait in the kernel's backlog;
//! - shutdown: hyper-util's `GracefulShutdown` lets requests in flight finish, for
//!   up to [`DRAIN`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::{Service, ServiceBuilder};
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How long open connections may finish their requests after shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

/// The connection limits of `[daemon]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_read: Duration,
    pub body_read: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn of(d: &config::DaemonSection) -> Self {
        Self {
            header_read: Duration::from_millis(d.header_read_timeout_ms),
            body_read: Duration::from_millis(d.body_read_timeout_ms),
            max_connections: d.max_connections.max(1),
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serve `app` on `listener` until `stop` turns true, then drain.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let svc = ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(limits.body_read))
        .service(app);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break, // never closed
            },
            _ = stopped(&mut stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(%e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let svc = svc.clone();
        // Router is always ready, so `call` without `poll_ready` is fine (axum's own
        // hyper example does the same).
        let hyper_svc =
            hyper::service::service_fn(move |req: Request<Incoming>| svc.clone().call(req));
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), hyper_svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
    }
}
