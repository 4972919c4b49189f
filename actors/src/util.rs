//! Running tensor work off the async executor, and timing.

/// Run `f` on tokio's blocking pool (heavy tensor work never runs on the executor).
/// A panic inside `f` is re-raised in the calling actor, so the actor fails and its
/// supervisor sees it (and restarts it) exactly as if the handler itself had panicked.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            // Only happens when the runtime shuts down under us.
            Err(e) => std::panic::panic_any(format!("blocking task cancelled: {e}")),
        },
    }
}

/// Milliseconds since `t`.
pub fn ms(t: std::time::Instant) -> u64 {
    t.elapsed().as_millis() as u64
}
