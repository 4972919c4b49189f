//! A submitted config cannot read the daemon's environment or make it call arbitrary
//! hosts (issue 17, item 1): the exfiltration through `api_key_env` and `base_url` is
//! refused with 400 before anything is queued or written, and the listener it aimed at
//! receives nothing; the operator's allow-lists open exactly what they name.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::time::Duration;

use common::{Env, Running};
use config::{BackendConfig, BackendKind};
use daemon::client::ClientError;
use daemon::Hooks;

/// An OpenAI-compatible backend aimed at `port` on loopback, reading `key_env`.
fn aimed_at(port: u16, key_env: &str) -> BackendConfig {
    BackendConfig {
        backend: BackendKind::Openai,
        model: Some("gpt-4o-mini".into()),
        base_url: Some(format!("http://127.0.0.1:{port}/v1")),
        api_key_env: Some(key_env.into()),
        timeout_secs: 2,
        retries: 0,
        ..Default::default()
    }
}

/// Files under the daemon's data folder (the registry and run folders).
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["registry", "runs"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            out.extend(rd.flatten().map(|e| e.path().display().to_string()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exfiltration_through_api_key_env_gets_400_and_reaches_no_one() {
    let env = Env::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = "daemon-token-4711".to_string();
    let d = Running::start(env.daemon_config(), Some(token.clone()), Hooks::default()).await;

    let planner = env.submit_request(|c| c.planner = aimed_at(port, "SECATEUR_DAEMON_TOKEN"));
    let fallback = env
        .submit_request(|c| c.planner.fallback = Some(Box::new(aimed_at(port, "OPENAI_API_KEY"))));
    let critic = env.submit_request(|c| {
        let mut r = aimed_at(port, "AWS_SECRET_ACCESS_KEY");
        r.base_url = Some("https://evil.example/v1".into());
        c.critic.reflection = Some(r)
    });
    let cases = [
        (planner, vec!["planner.api_key_env", "planner.base_url"]),
        (
            fallback,
            vec!["planner.fallback.api_key_env", "planner.fallback.base_url"],
        ),
        (
            critic,
            vec![
                "critic.reflection.api_key_env",
                "critic.reflection.base_url",
            ],
        ),
    ];
    let mut reasons = Vec::new();
    for (req, fields) in cases {
        let Err(ClientError::Api { status, body }) = d.client.submit(&req).await else {
            panic!("submission accepted: {fields:?}");
        };
        assert_eq!(status, 400, "{fields:?}");
        for (detail, field) in body.details.iter().zip(&fields) {
            assert!(detail.starts_with(field), "{detail} vs {field}");
            assert!(body.error.contains(field), "{}", body.error);
        }
        assert_eq!(body.details.len(), fields.len(), "{:?}", body.details);
        assert!(!body.error.contains(&token) && !body.details.concat().contains(&token));
        reasons.push(body.details);
    }
    assert!(reasons[0][0].contains("bearer token"), "{:?}", reasons[0]);
    assert!(
        reasons[0][1].contains("allow_loopback_base_urls"),
        "{:?}",
        reasons[0]
    );
    assert!(
        reasons[2][1].contains("host \"evil.example\""),
        "{:?}",
        reasons[2]
    );

    // Nothing was queued or written, and nobody called the listener.
    assert!(d.client.list().await.unwrap().is_empty());
    assert_eq!(files_under(&env.data_dir()), Vec::<String>::new());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = listener.accept().map(|_| ()).map_err(|e| e.kind());
    assert_eq!(accepted, Err(ErrorKind::WouldBlock));
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_opens_loopback_and_key_names_explicitly() {
    let env = Env::new();
    let mut cfg = env.daemon_config();
    cfg.daemon.allow_loopback_base_urls = true;
    cfg.daemon.allowed_api_key_envs = vec!["SECATEUR_TEST_POLICY_KEY".into()];
    let d = Running::start(cfg, None, Hooks::default()).await;
    // Allowed: a listed key name to a loopback server. The run then fails (nothing
    // answers there, and the variable is unset); what matters is the 201.
    let ok = env.submit_request(|c| {
        let mut b = aimed_at(1, "SECATEUR_TEST_POLICY_KEY");
        b.fallback = Some(Box::new(BackendConfig::default()));
        c.planner = b;
    });
    let v = d.client.submit(&ok).await.unwrap();
    assert_eq!(v.state, daemon::types::JobState::Queued);
    // Still refused: an unlisted name, and a listed name sent to an unlisted host.
    let other = env.submit_request(|c| c.planner = aimed_at(1, "HOME"));
    let e = d.client.submit(&other).await.unwrap_err().to_string();
    assert!(
        e.starts_with("400: configuration refused: planner.api_key_env"),
        "{e}"
    );
    assert!(e.contains("allowed: SECATEUR_TEST_POLICY_KEY"), "{e}");
    let far = env.submit_request(|c| {
        let mut b = aimed_at(1, "SECATEUR_TEST_POLICY_KEY");
        b.base_url = Some("https://example.com/v1".into());
        c.planner = b;
    });
    let e = d.client.submit(&far).await.unwrap_err().to_string();
    assert!(e.contains("planner.base_url: host \"example.com\""), "{e}");
    common::wait_ended(&d.client, &v.id, Duration::from_secs(120)).await;
    d.stop().await.unwrap();
}
