//! The HTTP JSON API (axum):
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/health` | [`Health`] |
//! | POST | `/runs` | 201 [`RunView`] of the queued run (body: [`SubmitRequest`] JSON, or a TOML document with `Content-Type: application/toml`) |
//! | GET | `/runs` | [`RunList`] |
//! | GET | `/runs/{id}` | [`RunDetail`]: status, config, iteration history |
//! | GET | `/runs/{id}/events` | SSE: `status`, `iteration`, `end` events (history replayed first; `Last-Event-ID` skips iterations seen) |
//! | POST | `/runs/{id}/cancel` | 200 cancelled / 202 cancel requested (stored with the run's record first, so it survives a restart) / 409 already ended |
//!
//! Every error is JSON ([`ApiError`]). Every request passes the bearer-token check first
//! when a token is configured (401 otherwise, before any body is read), and bodies are
//! read up to `daemon.max_body_bytes` (413 beyond). A submission without a content type
//! is sniffed: JSON when it starts with `{`, TOML otherwise.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::registry::{valid_id, Cancel};
use crate::types::{ApiError, Health, RunList, SubmitRequest};
use crate::Shared;

/// The router with its middleware.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/runs", get(list).post(submit))
        .route("/runs/{id}", get(show))
        .route("/runs/{id}/events", get(events))
        .route("/runs/{id}/cancel", post(cancel))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .with_state(shared)
}

/// A JSON error response.
pub(crate) fn error(status: StatusCode, msg: impl Into<String>, details: Vec<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: msg.into(),
            details,
        }),
    )
        .into_response()
}

/// Constant-time comparison, so response timing does not leak the token prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials of an `Authorization: Bearer …` header. The scheme name is
/// case-insensitive (RFC 9110 §11.1), the token is not.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Runs before any handler, so a request without the token is answered 401 before its
/// body is read.
async fn authorize(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(token) = &shared.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
                vec![],
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint", vec![])
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed here",
        vec![],
    )
}

fn no_run(id: &str) -> Response {
    // Never echo arbitrary input back unescaped beyond what JSON encoding does.
    let shown: String = id.chars().take(64).collect();
    error(StatusCode::NOT_FOUND, format!("no run `{shown}`"), vec![])
}

async fn health(State(shared): State<Arc<Shared>>) -> Json<Health> {
    let (queued, running) = shared.registry.counts();
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: shared.started.elapsed().as_secs(),
        queued,
        running,
        concurrency: shared.cfg.daemon.concurrency,
    })
}

async fn list(State(shared): State<Arc<Shared>>) -> Json<RunList> {
    Json(RunList {
        runs: shared.registry.list(),
    })
}

async fn show(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.registry.detail(&id) {
        Some(d) => Json(d).into_response(),
        None => no_run(&id),
    }
}

/// Whether `T` is anywhere in `e`'s chain of sources (body errors arrive wrapped).
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<T>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Read the body up to the limit: 413 beyond it, whatever the framing; 408 when the
/// client stops sending (`daemon.body_read_timeout_ms`, see `server`).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_big = caused_by::<http_body_util::LengthLimitError>(&e);
        let too_slow = caused_by::<tower_http::timeout::TimeoutError>(&e);
        if too_slow {
            error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body stopped arriving",
                vec![],
            )
        } else if too_big {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {limit} bytes"),
                vec![],
            )
        } else {
            error(
                StatusCode::BAD_REQUEST,
                "cannot read the request body",
                vec![],
            )
        }
    })
}

/// The content type of a body sent without one (`curl --data-binary @run.toml`): a
/// JSON request is an object, and a TOML document never starts with `{`.
fn sniff(body: &[u8]) -> &'static str {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => "application/json",
        _ => "application/toml",
    }
}

async fn submit(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let limit = shared.cfg.daemon.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
            vec![],
        );
    }
    let bytes = match read_body(body, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let content_type = match headers.get(header::CONTENT_TYPE) {
        Some(v) => v.to_str().unwrap_or("").to_ascii_lowercase(),
        None => sniff(&bytes).into(),
    };
    let req = if content_type.starts_with("application/toml") {
        match std::str::from_utf8(&bytes) {
            Ok(text) => SubmitRequest {
                config_toml: Some(text.to_string()),
                preset: None,
            },
            Err(_) => return error(StatusCode::BAD_REQUEST, "body is not UTF-8", vec![]),
        }
    } else if content_type.starts_with("application/json") {
        match serde_json::from_slice::<SubmitRequest>(&bytes) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid request JSON: {e}"),
                    vec![],
                )
            }
        }
    } else {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/json ({\"config_toml\": …} or {\"preset\": …}) or application/toml",
            vec![],
        );
    };
    if shared.registry.pending() >= shared.cfg.daemon.max_pending {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} runs are already queued or running (daemon.max_pending)",
                shared.cfg.daemon.max_pending
            ),
            vec![],
        );
    }
    let runs_dir = shared.cfg.daemon.data_dir.join("runs");
    let roots = shared.roots.clone();
    let rules = shared.cfg.daemon.clone();
    // canonicalize touches the file system: off the executor.
    let prepared = tokio::task::spawn_blocking(move || {
        crate::submit::prepare(&req, &roots, &rules, &runs_dir)
    })
    .await;
    let cfg = match prepared {
        Ok(Ok(cfg)) => cfg,
        Ok(Err(r)) => return error(StatusCode::BAD_REQUEST, r.error, r.details),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "validation failed",
                vec![],
            )
        }
    };
    let view = shared
        .registry
        .submit(cfg.to_toml_string(), cfg.pruning.target_sparsity, || {
            actors::run::new_run_id(&cfg)
        });
    if let Err(e) = shared.registry.persist(&view.id).await {
        tracing::error!(run = %view.id, %e, "cannot write the run record");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot record the run",
            vec![],
        );
    }
    tracing::info!(run = %view.id, "run queued");
    shared.wake.notify_one();
    let mut r = (StatusCode::CREATED, Json(view.clone())).into_response();
    if let Ok(loc) = header::HeaderValue::from_str(&format!("/runs/{}", view.id)) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r
}

async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.registry.cancel(&id) {
        Cancel::NotFound => no_run(&id),
        Cancel::Ended(v) => {
            let msg = format!("run `{}` already ended ({:?})", v.id, v.state).to_lowercase();
            error(StatusCode::CONFLICT, msg, vec![])
        }
        Cancel::Requested(v) => {
            // Durable before the 202: a crash after the answer must not lose the cancel.
            if let Err(e) = shared.registry.persist(&id).await {
                tracing::error!(run = %id, %e, "cannot write the run record");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot record the cancel request; it holds only until the daemon stops",
                    vec![],
                );
            }
            tracing::info!(run = %id, "cancel requested");
            (StatusCode::ACCEPTED, Json(v)).into_response()
        }
        Cancel::Done(v) => {
            if let Err(e) = shared.registry.persist(&id).await {
                tracing::error!(run = %id, %e, "cannot write the run record");
            }
            tracing::info!(run = %id, "cancelled while waiting");
            shared.wake.notify_one();
            (StatusCode::OK, Json(v)).into_response()
        }
    }
}

async fn events(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !valid_id(&id) {
        return no_run(&id);
    }
    let seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    match crate::events::stream(&shared, &id, seen) {
        Some(stream) => Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response(),
        None => no_run(&id),
    }
}

/// SSE events of the stream.
pub(crate) type SseItem = Result<Event, Infallible>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer ABC"), Some("ABC"));
    }

    #[test]
    fn bodies_without_a_content_type_are_sniffed() {
        assert_eq!(sniff(b"  {\"preset\": \"default\"}"), "application/json");
        assert_eq!(
            sniff(b"[pruning]\ntarget_sparsity = 0.3\n"),
            "application/toml"
        );
        assert_eq!(sniff(b""), "application/toml");
    }
}
