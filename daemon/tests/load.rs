//! Load: 20 tiny runs queued at once (concurrency 1), 50 concurrent clients each
//! streaming one run's events and polling run statuses every 50 ms until every run has
//! ended. Every run must finish, none may be lost, no request may fail, and every
//! stream must deliver its run's iterations exactly once, in order. Prints the status
//! call's p50 / p99 latency (run with `--release -- --nocapture` for the figures in the
//! issue note).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{read_events, Env, Running};
use daemon::types::{JobState, RunView};
use daemon::Hooks;
use reqwest::Method;

const RUNS: usize = 20;
const CLIENTS: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_twenty_runs_nothing_lost_nothing_fails() {
    let env = Env::new();
    let d = Running::start(env.daemon_config(), None, Hooks::default()).await;
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        let v: RunView = d.client.submit(&env.submit_request(|_| {})).await.unwrap();
        ids.push(v.id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), RUNS, "run ids are unique");
    let ids = Arc::new(ids);
    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let (ids, done, failures) = (ids.clone(), done.clone(), failures.clone());
        let client = daemon::client::Client::new(&d.url, None).unwrap();
        clients.push(tokio::spawn(async move {
            let run = ids[k % RUNS].clone();
            let stream = {
                let client = client.clone();
                let run = run.clone();
                tokio::spawn(async move {
                    let r = client
                        .request(Method::GET, &format!("/runs/{run}/events"))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                    read_events(r).await
                })
            };
            let mut latencies = Vec::new();
            let mut i = k;
            while !done.load(Ordering::SeqCst) {
                let id = &ids[i % RUNS];
                i += 1;
                let t = Instant::now();
                match client
                    .request(Method::GET, &format!("/runs/{id}"))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let body = r.bytes().await;
                        latencies.push(t.elapsed());
                        if body.is_err() {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (run, latencies, stream.await.unwrap())
        }));
    }
    // The test's own watcher: all runs terminal, then the clients stop.
    loop {
        let runs = d.client.list().await.unwrap();
        if runs.len() == RUNS && runs.iter().all(|r| r.state.is_terminal()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "runs did not end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = start.elapsed();
    done.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for c in clients {
        let (run, lat, events) = c.await.unwrap();
        all.extend(lat);
        let detail = d.client.show(&run).await.unwrap();
        let streamed: Vec<u32> = events
            .iter()
            .filter(|e| e.event == "iteration")
            .map(|e| e.id.as_deref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            streamed,
            common::iterations(&detail),
            "run {run}: stream = history"
        );
        assert_eq!(events.last().unwrap().event, "end", "run {run}");
        assert!(events.iter().all(|e| e.event != "lagged"), "run {run}");
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no request failed");
    let runs = d.client.list().await.unwrap();
    assert_eq!(runs.len(), RUNS);
    for r in &runs {
        assert_eq!(r.state, JobState::Finished, "{}: {:?}", r.id, r.reason);
        assert!((r.sparsity - 0.5).abs() <= 0.01, "{}: {}", r.id, r.sparsity);
        assert!(env
            .data_dir()
            .join("runs")
            .join(&r.id)
            .join("masks.bin")
            .is_file());
    }
    all.sort();
    let (p50, p99) = (percentile(&all, 0.50), percentile(&all, 0.99));
    println!(
        "load: {RUNS} runs, {CLIENTS} clients, {} status calls in {:.1}s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        wall.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        all.last().unwrap().as_secs_f64() * 1e3
    );
    assert!(all.len() >= CLIENTS, "every client polled");
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    d.stop().await.unwrap();
}
