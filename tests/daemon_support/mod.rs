//! Shared by the `daemon_*` tests: the tiny fixture under allowed roots, the real
//! `secateur daemon` as a child process (its stderr captured, its port read from the
//! "listening on" line), and polling helpers over `daemon::client`.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::testing::{fixture_config, write_fixture, Fixture};
use daemon::client::Client;
use daemon::types::{RunDetail, RunView, SubmitRequest};

/// A temp folder with `assets/` (fixture; the allowed roots) and `data/` (daemon state).
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

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The daemon config file: loopback port 0, this env's folders.
    pub fn daemon_toml(&self) -> PathBuf {
        self.daemon_toml_with(|_| {})
    }

    /// [`Self::daemon_toml`] edited by `edit` (e.g. to open the allow-lists).
    pub fn daemon_toml_with(&self, edit: impl FnOnce(&mut config::DaemonConfig)) -> PathBuf {
        let assets = self.dir.path().join("assets");
        let mut c = config::DaemonConfig::default();
        c.daemon.listen = "127.0.0.1:0".into();
        c.daemon.data_dir = self.data_dir();
        c.daemon.model_roots = vec![assets.clone()];
        c.daemon.data_roots = vec![assets];
        edit(&mut c);
        let path = self.dir.path().join("daemon.toml");
        std::fs::write(&path, c.to_toml_string()).unwrap();
        path
    }

    pub fn submit_request(&self, edit: impl FnOnce(&mut config::Config)) -> SubmitRequest {
        let mut c = fixture_config(&self.fx, Path::new("unused"));
        edit(&mut c);
        SubmitRequest {
            config_toml: Some(c.to_toml_string()),
            preset: None,
        }
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.data_dir().join("runs").join(id)
    }
}

/// A `secateur daemon` child process.
pub struct Proc {
    pub child: Child,
    pub url: String,
    pub client: Client,
    /// Everything written to stderr so far.
    pub stderr: Arc<Mutex<String>>,
    pub spawned: Instant,
    pub listening_after: Duration,
}

impl Proc {
    /// Start the daemon with extra environment variables; returns once it listens.
    pub fn spawn(env: &Env, vars: &[(&str, &str)]) -> Self {
        Self::spawn_with(vars, env.daemon_toml())
    }

    /// [`Self::spawn`] with the daemon config file `daemon_toml`.
    pub fn spawn_with(vars: &[(&str, &str)], daemon_toml: PathBuf) -> Self {
        let spawned = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_secateur"));
        cmd.args(["daemon", "--config"])
            .arg(daemon_toml)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("SECATEUR_DAEMON_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let buf = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("secateur daemon listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut b = buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("daemon did not start: {}", stderr.lock().unwrap()));
        let listening_after = spawned.elapsed();
        let client = Client::new(&url, None).unwrap();
        Self {
            child,
            url,
            client,
            stderr,
            spawned,
            listening_after,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit; returns the stderr text and the time it took.
    pub fn terminate(mut self) -> (String, Duration) {
        let t = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = t.elapsed();
                std::thread::sleep(Duration::from_millis(100)); // let the reader drain
                let text = self.stderr.lock().unwrap().clone();
                assert!(status.success(), "daemon exit {status}: {text}");
                return (text, took);
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size from /proc (Linux), in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb: f64 = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }
}

/// Poll `id` until `pred` holds.
pub async fn wait_for(
    c: &Client,
    id: &str,
    limit: Duration,
    pred: impl Fn(&RunView) -> bool,
) -> RunView {
    let start = Instant::now();
    loop {
        if let Ok(d) = c.show(id).await {
            if pred(&d.run) {
                return d.run;
            }
            assert!(
                start.elapsed() < limit,
                "{id}: condition not met: {:?}",
                d.run
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Poll until the run ended; its detail.
pub async fn wait_ended(c: &Client, id: &str, limit: Duration) -> RunDetail {
    wait_for(c, id, limit, |v| v.state.is_terminal()).await;
    c.show(id).await.unwrap()
}

/// Every file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
