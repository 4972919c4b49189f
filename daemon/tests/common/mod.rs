//! Shared by the daemon's in-process tests: a tiny fixture laid out under allowed
//! roots, a daemon started on 127.0.0.1:0 with a shutdown handle, and waiting helpers.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actors::testing::{fixture_config, write_fixture, Fixture};
use config::DaemonConfig;
use daemon::client::Client;
use daemon::types::{JobState, RunDetail, RunView, SubmitRequest};
use daemon::Hooks;

/// A temp folder holding `assets/` (the fixture: model root and data root) and
/// `data/` (the daemon's state).
pub struct Env {
    pub dir: tempfile::TempDir,
    pub fx: Fixture,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let assets = dir.path().join("assets");
        std::fs::create_dir_all(&assets).unwrap();
        let fx = write_fixture(&assets, 7, 24, 48).unwrap();
        Self { dir, fx }
    }

    pub fn assets(&self) -> PathBuf {
        self.dir.path().join("assets")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Daemon config: loopback, this env's data folder and roots.
    pub fn daemon_config(&self) -> DaemonConfig {
        let mut c = DaemonConfig::default();
        c.daemon.listen = "127.0.0.1:0".into();
        c.daemon.data_dir = self.data_dir();
        c.daemon.model_roots = vec![self.assets()];
        c.daemon.data_roots = vec![self.assets()];
        c.daemon.shutdown_grace_secs = 60;
        c
    }

    /// The fixture's run config as TOML, edited by `edit`.
    pub fn run_toml(&self, edit: impl FnOnce(&mut config::Config)) -> String {
        let mut c = fixture_config(&self.fx, Path::new("ignored-by-the-daemon"));
        edit(&mut c);
        c.to_toml_string()
    }

    pub fn submit_request(&self, edit: impl FnOnce(&mut config::Config)) -> SubmitRequest {
        SubmitRequest {
            config_toml: Some(self.run_toml(edit)),
            preset: None,
        }
    }
}

/// A daemon running in this process.
pub struct Running {
    pub url: String,
    pub client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
}

impl Running {
    pub async fn start(cfg: DaemonConfig, token: Option<String>, hooks: Hooks) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(daemon::run_with(
            listener,
            cfg,
            token.clone(),
            hooks,
            async move {
                let _ = rx.await;
            },
        ));
        let client = Client::new(&url, token).unwrap();
        Self {
            url,
            client,
            stop: Some(tx),
            task,
        }
    }

    /// Graceful shutdown (what SIGTERM does); returns when the daemon has stopped.
    pub async fn stop(mut self) -> Result<(), daemon::DaemonError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(120), &mut self.task)
            .await
            .expect("daemon stops within the grace period")
            .unwrap()
    }
}

/// Poll until `id` is terminal.
pub async fn wait_ended(client: &Client, id: &str, limit: Duration) -> RunDetail {
    let start = Instant::now();
    loop {
        let d = client.show(id).await.unwrap();
        if d.run.state.is_terminal() {
            return d;
        }
        assert!(
            start.elapsed() < limit,
            "run {id} still {:?} after {limit:?}",
            d.run.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll until `pred` holds for `id`'s view.
pub async fn wait_for(
    client: &Client,
    id: &str,
    limit: Duration,
    pred: impl Fn(&RunView) -> bool,
) -> RunView {
    let start = Instant::now();
    loop {
        let v = client.show(id).await.unwrap().run;
        if pred(&v) {
            return v;
        }
        assert!(start.elapsed() < limit, "condition not met for {id}: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The iteration numbers of a history, in order.
pub fn iterations(d: &RunDetail) -> Vec<u32> {
    d.history.iter().map(|h| h.iteration).collect()
}

pub fn finished(d: &RunDetail) -> bool {
    d.run.state == JobState::Finished
}

/// One parsed server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: serde_json::Value,
}

/// Read SSE events from `resp` until an `end` event (or the stream closes).
pub async fn read_events(mut resp: reqwest::Response) -> Vec<Sse> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(pos) = buf.find("\n\n") {
            let block: String = buf.drain(..pos + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event.is_empty() {
                continue; // keep-alive comment
            }
            let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
            let end = event == "end";
            out.push(Sse { event, id, data });
            if end {
                return out;
            }
        }
    }
    out
}
