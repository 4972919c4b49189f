//! The OpenAI-compatible planner against a real model behind a real server on
//! loopback: llama-cpp-python's `llama_cpp.server` serving the Qwen2.5-Coder-0.5B-Instruct
//! asset, and `secateur prune --planner openai` on the tiny fixture model, which must
//! commit at least two iterations planned by that model.
//!
//! Ignored by default (it needs a Python with `llama-cpp-python[server]` and takes
//! minutes on a CPU). Run it with
//! `SECATEUR_LLAMA_PYTHON=/path/to/venv/bin/python cargo test --test real_openai_server -- --ignored`
//! (see the README for the install line); `SECATEUR_LLAMA_MODEL` overrides the GGUF.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actors::testing::{fixture_config, write_fixture};

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on loopback; the status line's code, or `None` while nothing listens.
fn get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn start_server(python: &str, model: &Path, port: u16, log: &Path) -> Server {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--n_ctx",
            "8192",
            "--n_threads",
            "2",
            "--model_alias",
            "planner",
        ])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start python -m llama_cpp.server");
    let server = Server(child);
    let start = Instant::now();
    while get_status(port, "/v1/models") != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "llama_cpp.server did not come up on port {port}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    server
}

#[test]
#[ignore = "needs SECATEUR_LLAMA_PYTHON (a Python with llama-cpp-python[server]); minutes on a CPU"]
fn a_real_model_behind_a_real_server_plans_committed_iterations() {
    let python = std::env::var("SECATEUR_LLAMA_PYTHON")
        .expect("set SECATEUR_LLAMA_PYTHON to a Python with llama-cpp-python[server]");
    let model = std::env::var("SECATEUR_LLAMA_MODEL").map_or_else(
        |_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("assets/models/Qwen2.5-Coder-0.5B-Instruct.gguf")
        },
        PathBuf::from,
    );
    assert!(
        model.exists(),
        "{} missing: run `secateur fetch --with qwen2.5-0.5b`",
        model.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("server.log");
    let _server = start_server(&python, &model, port, &log);

    let fx = write_fixture(dir.path(), 5, 24, 48).unwrap();
    let runs = dir.path().join("runs");
    let mut cfg = fixture_config(&fx, &runs);
    cfg.planner.backend = config::BackendKind::Openai;
    cfg.planner.model = Some("planner".into());
    cfg.planner.base_url = Some(format!("http://127.0.0.1:{port}/v1"));
    cfg.planner.max_tokens = 1024;
    // A loaded 2-core machine took ~7 min per plan; the default 600 s is for an idle one.
    cfg.planner.timeout_secs = 1800;
    cfg.pruning.target_sparsity = 0.3;
    cfg.pruning.max_iterations = 4;
    let cfg_path = dir.path().join("openai.toml");
    std::fs::write(&cfg_path, cfg.to_toml_string()).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["prune", "--json", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    let tail = &server_log[server_log.len().saturating_sub(3000)..];
    assert!(out.status.success(), "{stderr}\nserver log tail:\n{tail}");
    // One line per stored iteration, then the planner's line for it.
    let committed = stderr
        .lines()
        .filter(|l| l.starts_with("iteration ") && l.contains(" committed:"))
        .count();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    // The plans of the round that ended the run, with the critic's reasons.
    let why_stopped = serde_json::to_string_pretty(&serde_json::json!({
        "rejected": report["rejected"],
        "stopped_by": report["stopped_by"],
    }))
    .unwrap();
    assert!(
        committed >= 2,
        "{committed} committed: {stderr}\n{why_stopped}"
    );
    let planners: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("planner "))
        .collect();
    assert!(!planners.is_empty(), "{stderr}");
    // Planned by the served model (in json_schema or json_object mode), not a fallback.
    for p in &planners {
        assert!(p.starts_with("openai"), "planned by {p}");
    }
    assert_eq!(report["state"], "finished", "{}", report["state"]);
    eprintln!("{stderr}");
}
