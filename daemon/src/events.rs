//! The SSE stream of one run: a `status` event with the current state, every stored
//! iteration not yet seen (`iteration` events, id = iteration number, so a client that
//! reconnects with `Last-Event-ID` gets only what it missed), then live `status` and
//! `iteration` events, and finally `end` when the run reaches a terminal state. The
//! stream also ends when the daemon shuts down, so a shutdown never waits on a client.
//!
//! A client too slow for the run's event rate gets a `lagged` event (with the count of
//! events it missed) instead of stalling the run; `GET /runs/{id}` has the full history.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::response::sse::Event;
use futures_util::stream::{self, Stream};
use tokio::sync::{broadcast, watch};

use crate::api::SseItem;
use crate::registry::JobEvent;
use crate::types::{HistoryItem, RunView};
use crate::Shared;

struct Cursor {
    pending: VecDeque<Event>,
    rx: broadcast::Receiver<JobEvent>,
    shutdown: watch::Receiver<bool>,
    /// Highest iteration sent; later duplicates (replay vs live) are skipped.
    seen: u32,
    done: bool,
}

fn json_event(kind: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(kind).data("{}"))
}

fn iteration_event(item: &HistoryItem) -> Event {
    json_event("iteration", item).id(item.iteration.to_string())
}

fn end_event(view: &RunView) -> Event {
    json_event("end", view)
}

/// The event stream of run `id`, skipping iterations up to `seen`; `None` if unknown.
pub(crate) fn stream(
    shared: &Arc<Shared>,
    id: &str,
    seen: u32,
) -> Option<impl Stream<Item = SseItem> + Send + 'static> {
    let (view, history, rx) = shared.registry.subscribe(id)?;
    let mut pending = VecDeque::new();
    pending.push_back(json_event("status", &view));
    let mut last = seen;
    for item in history.iter().filter(|h| h.iteration > seen) {
        pending.push_back(iteration_event(item));
        last = last.max(item.iteration);
    }
    let done = view.state.is_terminal();
    if done {
        pending.push_back(end_event(&view));
    }
    let cursor = Cursor {
        pending,
        rx,
        shutdown: shared.shutdown.clone(),
        seen: last,
        done,
    };
    Some(stream::unfold(cursor, next))
}

async fn next(mut c: Cursor) -> Option<(SseItem, Cursor)> {
    loop {
        if let Some(e) = c.pending.pop_front() {
            return Some((Ok(e), c));
        }
        if c.done || *c.shutdown.borrow() {
            return None;
        }
        let received = tokio::select! {
            r = c.rx.recv() => r,
            _ = c.shutdown.changed() => return None,
        };
        match received {
            Ok(JobEvent::Status(v)) => c.pending.push_back(json_event("status", &v)),
            Ok(JobEvent::Iteration(item)) if item.iteration > c.seen => {
                c.seen = item.iteration;
                c.pending.push_back(iteration_event(&item));
            }
            Ok(JobEvent::Iteration(_)) => {}
            Ok(JobEvent::End(v)) => {
                c.pending.push_back(end_event(&v));
                c.done = true;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => c
                .pending
                .push_back(json_event("lagged", &serde_json::json!({ "missed": n }))),
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}
