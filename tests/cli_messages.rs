//! Messages a person can read (issue 17, item 5): no backtrace on a user error even with
//! `RUST_BACKTRACE=1`, nothing said twice, `runs submit bad.toml` naming the file once,
//! a bad `--url` as a sentence (also after the action), and no `listening on …` from a
//! daemon that refuses a locked data folder.

mod daemon_support;

use std::path::Path;
use std::process::{Command, Output};

use daemon_support::{Env, Proc};

fn secateur(args: &[&str], cwd: &Path, vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secateur"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("SECATEUR_DAEMON_URL")
        .env_remove("SECATEUR_DAEMON_TOKEN");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("secateur binary runs")
}

/// stderr of a run that must fail.
fn failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn no_backtrace_on_a_user_error_even_with_rust_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.gguf"), vec![0x5a; 4096]).unwrap();
    let args = ["inspect", "junk.gguf"];
    let e = failure(&secateur(&args, dir.path(), &[("RUST_BACKTRACE", "1")]));
    assert!(e.contains("junk.gguf"), "{e}");
    assert!(!e.contains("backtrace") && !e.contains("  0: "), "{e}");
    assert!(e.lines().count() <= 2, "{e}");
    // Asked for explicitly, the library backtrace is still there (so the check above
    // would see one).
    let vars = [("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")];
    let e = failure(&secateur(&args, dir.path(), &vars));
    assert!(e.lines().count() > 5, "{e}");
}

#[test]
fn causes_are_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let e = failure(&secateur(
        &["prune", "--config", "missing.toml"],
        dir.path(),
        &[],
    ));
    assert_eq!(e.matches("os error 2").count(), 1, "{e}");
    assert!(e.contains("missing.toml"), "{e}");
    let e = failure(&secateur(&["prune", "--target", "1.5"], dir.path(), &[]));
    assert_eq!(e.matches("invalid configuration").count(), 1, "{e}");
    assert!(e.starts_with("error: invalid configuration:\n"), "{e}");
    assert!(e.contains("\n  pruning.target_sparsity = 1.5"), "{e}");
}

#[test]
fn runs_submit_of_a_bad_file_names_it_once_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[pruning]\ntau = 1.7\n").unwrap();
    std::fs::write(dir.path().join("broken.toml"), "[pruning\n").unwrap();
    // Nothing listens on port 9: the file is refused before any request.
    let url = ["--url", "http://127.0.0.1:9"];
    let e = failure(&secateur(
        &[&["runs", "submit", "bad.toml"], &url[..]].concat(),
        dir.path(),
        &[],
    ));
    assert_eq!(e.matches("bad.toml").count(), 1, "{e}");
    assert_eq!(e.matches("pruning.tau = 1.7").count(), 1, "{e}");
    assert!(
        !e.contains("<string>") && !e.contains("cannot reach"),
        "{e}"
    );
    let e = failure(&secateur(
        &[&["runs", "submit", "broken.toml"], &url[..]].concat(),
        dir.path(),
        &[],
    ));
    assert!(e.starts_with("error: broken.toml:1:"), "{e}");
}

#[test]
fn a_bad_url_is_a_sentence_and_url_goes_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    // After the action (global flag), and without a scheme.
    let e = failure(&secateur(
        &["runs", "list", "--url", "127.0.0.1:7878"],
        dir.path(),
        &[],
    ));
    assert!(
        e.contains("`127.0.0.1:7878` is not a daemon address"),
        "{e}"
    );
    assert!(e.contains("http://127.0.0.1:7878"), "{e}");
    assert!(!e.contains("builder error"), "{e}");
    // Before the action, as before.
    let e = failure(&secateur(
        &["runs", "--url", "ftp://h", "list"],
        dir.path(),
        &[],
    ));
    assert!(e.contains("`ftp://h` is not a daemon address"), "{e}");
}

#[test]
fn a_locked_data_folder_is_refused_without_saying_listening() {
    let env = Env::new();
    let first = Proc::spawn(&env, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["daemon", "--config"])
        .arg(env.daemon_toml())
        .env_remove("SECATEUR_DAEMON_TOKEN")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    let e = failure(&out);
    assert!(e.contains("another daemon serves this data folder"), "{e}");
    assert!(!e.contains("listening on"), "{e}");
    first.terminate();
}
