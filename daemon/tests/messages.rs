//! What the daemon says is readable (issue 17, item 5): `reason` spelled as in JSON
//! (`target_reached`), a TOML body without a content type accepted, `Bearer` matched
//! case-insensitively, config problems said once and naming the submitted config, and
//! a run that fails at set-up shown as failed with its reason, leaving no folder.

mod common;

use std::time::Duration;

use common::{wait_ended, Env, Running};
use daemon::types::{ApiError, JobState, RunView};
use daemon::Hooks;
use protocol::StopReason;
use reqwest::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_without_content_type_runs_and_its_reason_reads_target_reached() {
    let env = Env::new();
    let d = Running::start(env.daemon_config(), None, Hooks::default()).await;
    let toml = env.run_toml(|_| {});
    let r = d
        .client
        .request(Method::POST, "/runs")
        .body(toml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: RunView = r.json().await.unwrap();
    let done = wait_ended(&d.client, &v.id, Duration::from_secs(180)).await;
    assert_eq!(done.run.stop_reason, Some(StopReason::TargetReached));
    assert_eq!(done.run.reason.as_deref(), Some("target_reached"));
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_problems_are_said_once_and_name_the_submitted_config() {
    let env = Env::new();
    let d = Running::start(env.daemon_config(), Some("Tok".into()), Hooks::default()).await;
    // A plain client: the daemon's client would add its own Authorization header.
    let http = reqwest::Client::new();
    let url = format!("{}/runs", d.url);
    let post = |auth: &'static str, body: &'static str| {
        http.post(&url)
            .header("authorization", auth)
            .header("content-type", "application/toml")
            .body(body)
            .send()
    };
    // The scheme is case-insensitive, the token is not.
    let r = post(
        "BEARER Tok",
        "[pruning]\ntau = 1.7\ntarget_sparsity = 2.0\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: ApiError = r.json().await.unwrap();
    assert_eq!(e.error, "invalid configuration");
    assert_eq!(e.details.len(), 2, "{:?}", e.details);
    for field in ["pruning.tau = 1.7", "pruning.target_sparsity = 2"] {
        assert!(e.details.iter().any(|l| l.starts_with(field)), "{e:?}");
    }
    let r = post("bearer Tok", "[pruning\n").await.unwrap();
    let e: ApiError = r.json().await.unwrap();
    assert!(e.error.starts_with("submitted config:1:"), "{e:?}");
    assert!(e.details.is_empty());
    let r = post("bearer tok", "").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failing_at_set_up_is_listed_as_failed_and_leaves_no_folder() {
    let env = Env::new();
    let bad = env.assets().join("broken.gguf");
    std::fs::write(&bad, b"GGUF but not really").unwrap();
    let d = Running::start(env.daemon_config(), None, Hooks::default()).await;
    let req = env.submit_request(|c| c.model.path = bad.clone());
    let v = d.client.submit(&req).await.unwrap();
    let done = wait_ended(&d.client, &v.id, Duration::from_secs(60)).await;
    assert_eq!(done.run.state, JobState::Failed);
    let reason = done.run.reason.unwrap_or_default();
    assert!(reason.contains("broken.gguf"), "{reason}");
    let listed = d.client.list().await.unwrap();
    assert_eq!(listed[0].state, JobState::Failed);
    assert_eq!(listed[0].reason.as_deref(), Some(reason.as_str()));
    let folder = env.data_dir().join("runs").join(&v.id);
    assert!(!folder.exists(), "{} left behind", folder.display());
    d.stop().await.unwrap();
}
