//! `secateur runs list|show|submit|cancel` against a real daemon process, and the
//! daemon's refusal to listen off loopback without a token.

mod daemon_support;

use std::process::{Command, Output};

use daemon_support::{Env, Proc};

fn runs(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
        .arg("runs")
        .args(args)
        .env("SECATEUR_DAEMON_URL", url)
        .env_remove("SECATEUR_DAEMON_TOKEN")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn runs_subcommands_talk_to_the_daemon() {
    let env = Env::new();
    let d = Proc::spawn(&env, &[]);
    let cfg = env.dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        env.submit_request(|_| {}).config_toml.unwrap().as_bytes(),
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().into_owned();

    let v = json(&runs(&d.url, &["submit", &cfg, "--wait", "--json"]));
    assert_eq!(v["state"], "finished");
    let id = v["id"].as_str().unwrap().to_string();
    assert!((v["sparsity"].as_f64().unwrap() - 0.5).abs() <= 0.01);

    let list = json(&runs(&d.url, &["list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());

    let show = json(&runs(&d.url, &["show", &id, "--json"]));
    let n = show["history"].as_array().unwrap().len();
    assert!(n >= 2);
    assert_eq!(show["iterations"], n);
    let text = runs(&d.url, &["show", &id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.lines().count(), 1 + n, "{text}");
    assert!(
        text.contains("finished") && text.contains("iteration   1 committed"),
        "{text}"
    );

    // Errors carry the daemon's status and message, and fail the command.
    let out = runs(&d.url, &["cancel", &id]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("409") && e.contains("already ended"), "{e}");
    let out = runs(&d.url, &["show", "no-such-run"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, "[pruning]\ntau = 1.7\n").unwrap();
    // A file that does not validate is refused here, naming it; one the daemon refuses
    // comes back with the daemon's 400.
    let out = runs(&d.url, &["submit", &bad.to_string_lossy()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("bad.toml: invalid configuration") && e.contains("pruning.tau = 1.7"),
        "{e}"
    );
    let refused = env.dir.path().join("refused.toml");
    let toml = "[planner]\nbackend = \"openai\"\nmodel = \"m\"\napi_key_env = \"HOME\"\n";
    std::fs::write(&refused, toml).unwrap();
    let out = runs(&d.url, &["submit", &refused.to_string_lossy()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("400") && e.contains("planner.api_key_env: \"HOME\""),
        "{e}"
    );
    d.terminate();

    // A daemon run exports like any other (its folder is under <data_dir>/runs).
    let out = Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["export", &id, "--format", "sparse", "--runs-dir"])
        .arg(env.data_dir().join("runs"))
        .arg("--out")
        .arg(env.dir.path().join("exported"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.dir.path().join("exported").is_dir());

    // Unreachable daemon: a clear error.
    let out = runs("http://127.0.0.1:9", &["list"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("cannot reach the daemon at http://127.0.0.1:9: "),
        "{e}"
    );
    assert!(
        e.contains("refused") && !e.contains("error sending request"),
        "{e}"
    );
}

#[test]
fn off_loopback_without_a_token_the_daemon_refuses_to_start() {
    let env = Env::new();
    let out = Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["daemon", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(env.data_dir())
        .env_remove("SECATEUR_DAEMON_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("without a bearer token"), "{e}");
    assert!(e.contains("SECATEUR_DAEMON_TOKEN"), "{e}");
}
