//! The HTTP JSON API (axum):
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/health` | [`Health`] |
//! | POST | `/runs` | 201 [`RunView`] of the queued run (body: [`SubmitRequest`] JSON, or a TOML document with `Content-Type: application/toml`) |
//! | GET | `/runs` | [`RunList`] |
//! | GET | `/runs/{id}` | [`RunDetail`]: status, config, iteration history |
//! | GET | `/runs/{id}/events` | SSE: `status`, `iteration`, `end` events (history replayed first; `Last-Event-ID` skips iterations seen) |
//! | POST | `/runs/{id}/cancel` | 200 cancelled / 202 cancel requested / 409 already ended |
//!
//! Every error is JSON ([`ApiError`]). Every request passes the bearer-token check first
//! when a token is configured (401 otherwise), and bodies are read up to
//! `daemon.max_body_bytes` (413 beyond).

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

async fn authorize(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(token) = &shared.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
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

/// Read the body up to the limit: 413 beyond it, whatever the framing.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_big = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_big {
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
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
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
    // canonicalize touches the file system: off the executor.
    let prepared =
        tokio::task::spawn_blocking(move || crate::submit::prepare(&req, &roots, &runs_dir)).await;
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
