//! SIGKILL trials at random points (issue 17): for `secateur prune` (killed, then
//! `--resume`d) and for `secateur daemon` (killed, restarted on the same data folder),
//! with `pruning.repair = "none"` and `"obs"`.
//! Each trial kills once, at a delay drawn uniformly within the uninterrupted run's
//! duration (seeded), and compares the finished run with the uninterrupted one:
//! iteration numbers (none lost, none repeated), records, the stored iterations (wall
//! times aside), stop reason, and the sha256 of `masks.bin` and of the weight files. Prints a table; fails if any trial differs.
//!
//! Ignored by default (minutes); run it with
//!
//! ```sh
//! KILL_TRIALS=20 KILL_SEED=17 cargo test -p secateur --test kill_trials -- --ignored --nocapture
//! ```
//!
//! `KILL_TRIALS` is per surface and repair mode (default 20), `KILL_SURFACES`
//! (`cli,daemon`) and `KILL_REPAIRS` (`none,obs`) pick a subset.
//!
//! The delay counts from the spawn of `secateur prune` (CLI) or from the submit
//! (daemon), as the reference's duration does. Where the kill landed is read from the
//! run folder afterwards: before the run was recorded (the CLI then must say clearly
//! that there is nothing to resume, and a new run must match), mid-run, or after the
//! outputs were written. "Weight files" are the committed ones (per layer the newest
//! version of an iteration ≤ the last committed one, what a resume reads); other
//! files a kill left in `weights/` are counted in their own column.

mod daemon_support;
mod kill_support;

use std::path::Path;
use std::time::{Duration, Instant};

use daemon::types::JobState;
use daemon_support::{wait_ended, Env, Proc};
use kill_support::{kill_config, lost_and_duplicated, on_disk, outputs, OnDisk, Outputs};

/// Where a kill landed, judged from the run folder afterwards.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Landed {
    /// Before the run was recorded (no folder, or no run in its database).
    BeforeRecord,
    /// A recorded run without its outputs.
    MidRun,
    /// The outputs were written (or the process had exited).
    AfterEnd,
}

/// One trial's result.
struct Trial {
    delay_ms: u64,
    landed: Landed,
    /// The kill left the iterations stored up to this number.
    stored_at_kill: usize,
    /// The run finished after the resume/restart (or, killed before it was recorded,
    /// the clear message came and a new run finished).
    ok: bool,
    lost: usize,
    duplicated: usize,
    /// Iteration records (report.json) that differ from the uninterrupted run's.
    differing: usize,
    /// Stored iterations (profiles, statistics, candidates; wall times aside) that
    /// differ from the uninterrupted run's.
    stored_differing: usize,
    masks_equal: bool,
    weights_equal: bool,
    stop_equal: bool,
    /// Files left in `weights/` besides the committed weight files.
    leftover: usize,
    note: String,
}

impl Trial {
    fn compare(delay_ms: u64, landed: Landed, stored: usize, r: &Outputs, got: &Outputs) -> Self {
        let (lost, duplicated) = lost_and_duplicated(&r.iterations(), &got.iterations());
        let mut differing = 0;
        let mut note = String::new();
        for (a, b) in r.records.iter().zip(&got.records) {
            if a != b {
                differing += 1;
                let mut paths = Vec::new();
                kill_support::json_diff(
                    a,
                    b,
                    &format!("it{}", a["outcome"]["iteration"]),
                    &mut paths,
                );
                note.push_str(&format!("records differ at {} ", paths.join("; ")));
            }
        }
        let mut stored_differing = 0;
        for (a, b) in r.stored.iter().zip(&got.stored) {
            let mut paths = Vec::new();
            kill_support::json_diff(a, b, "", &mut paths);
            if !paths.is_empty() {
                stored_differing += 1;
                paths.truncate(3);
                note.push_str(&format!("stored differ at {} ", paths.join("; ")));
            }
        }
        let extra: Vec<&String> = got
            .weight_files
            .iter()
            .filter(|n| !r.weight_files.contains(n))
            .collect();
        let missing: Vec<&String> = r
            .weight_files
            .iter()
            .filter(|n| !got.weight_files.contains(n))
            .collect();
        if !extra.is_empty() || !missing.is_empty() {
            note.push_str(&format!(
                "weight files not in the reference: {extra:?}; missing: {missing:?} "
            ));
        }
        if !got.leftover_files.is_empty() {
            note.push_str(&format!("left in weights/: {:?} ", got.leftover_files));
        }
        Trial {
            delay_ms,
            landed,
            stored_at_kill: stored,
            ok: true,
            lost,
            duplicated,
            differing,
            stored_differing,
            masks_equal: r.masks == got.masks,
            weights_equal: r.weights == got.weights && r.weight_files == got.weight_files,
            stop_equal: r.stop_reason == got.stop_reason,
            leftover: got.leftover_files.len(),
            note,
        }
    }

    fn failed(delay_ms: u64, landed: Landed, stored: usize, note: String) -> Self {
        Trial {
            delay_ms,
            landed,
            stored_at_kill: stored,
            ok: false,
            lost: 0,
            duplicated: 0,
            differing: 0,
            stored_differing: 0,
            masks_equal: false,
            weights_equal: false,
            stop_equal: false,
            leftover: 0,
            note,
        }
    }

    fn good(&self) -> bool {
        self.ok
            && self.lost == 0
            && self.duplicated == 0
            && self.differing == 0
            && self.stored_differing == 0
            && self.masks_equal
            && self.weights_equal
            && self.stop_equal
    }
}

/// splitmix64: a seeded stream of delays, no dependency.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn classify(d: &OnDisk) -> (Landed, usize) {
    match d {
        OnDisk::NoFolder | OnDisk::NotRecorded => (Landed::BeforeRecord, 0),
        OnDisk::Recorded {
            iterations,
            outputs,
            ..
        } => (
            if *outputs {
                Landed::AfterEnd
            } else {
                Landed::MidRun
            },
            iterations.len(),
        ),
    }
}

/// `secateur prune` run uninterrupted: its outputs and its wall time.
fn cli_reference(cfg: &Path, runs: &Path) -> (Outputs, Duration) {
    let t = Instant::now();
    let out = kill_support::prune(&["--config", cfg.to_str().unwrap()], runs);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("starting run "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    (outputs(&runs.join(id)), took)
}

/// One CLI trial: start, SIGKILL after `delay`, then one `--resume`, which must finish
/// the run.
fn cli_trial(cfg: &Path, dir: &Path, delay: Duration, reference: &Outputs) -> Trial {
    let ms = delay.as_millis() as u64;
    let (runs, log) = (dir.join("runs"), dir.join("stderr.log"));
    let mut child =
        kill_support::spawn_prune(&["--config", cfg.to_str().unwrap()], &runs, &log, &[]);
    let t = Instant::now();
    while t.elapsed() < delay && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill(); // SIGKILL (an error when it already exited)
    child.wait().unwrap();
    let Some(id) = kill_support::started_run(&log) else {
        // Killed before it printed its run id: nothing on disk names the run.
        let exists = runs.is_dir() && std::fs::read_dir(&runs).unwrap().next().is_some();
        return match exists {
            false => restart_fresh(cfg, &runs, ms, reference),
            true => Trial::failed(ms, Landed::BeforeRecord, 0, "a folder but no id".into()),
        };
    };
    let (landed, stored) = classify(&on_disk(&runs, &id));
    let out = kill_support::prune(&["--resume", &id], &runs);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if landed == Landed::BeforeRecord {
        // The documented answer: nothing to resume, start again.
        let clear = err.contains("no checkpoint at")
            || err.contains("was stopped before it recorded anything");
        if out.status.success() || !clear {
            return Trial::failed(ms, landed, 0, format!("unclear: {err}"));
        }
        return restart_fresh(cfg, &runs, ms, reference);
    }
    // One `--resume` must finish the run (or say that it already had).
    if !out.status.success() || !on_disk(&runs, &id).finished() {
        return Trial::failed(ms, landed, stored, format!("resume failed: {err}"));
    }
    Trial::compare(ms, landed, stored, reference, &outputs(&runs.join(&id)))
}

/// Killed before the run was recorded: a new run, uninterrupted, must match.
fn restart_fresh(cfg: &Path, runs: &Path, ms: u64, reference: &Outputs) -> Trial {
    let (got, _) = cli_reference(cfg, &runs.join("again"));
    Trial::compare(ms, Landed::BeforeRecord, 0, reference, &got)
}

/// The daemon's data folder `data` for a trial.
fn daemon_at(env: &Env, data: &Path) -> Proc {
    let toml = env.daemon_toml_with(|c| c.daemon.data_dir = data.to_path_buf());
    Proc::spawn_with(&[], toml)
}

/// The daemon runs one job uninterrupted: its outputs and the time from submit to end.
async fn daemon_reference(env: &Env, data: &Path, repair: config::Repair) -> (Outputs, Duration) {
    let d = daemon_at(env, data);
    let t = Instant::now();
    let run = d
        .client
        .submit(&env.submit_request(|c| kill_support::tune(c, repair)))
        .await
        .unwrap();
    let det = wait_ended(&d.client, &run.id, Duration::from_secs(600)).await;
    let took = t.elapsed();
    assert_eq!(det.run.state, JobState::Finished, "{:?}", det.run.reason);
    d.terminate();
    (outputs(&data.join("runs").join(&run.id)), took)
}

/// One daemon trial: submit, SIGKILL the daemon after `delay`, restart it on the same
/// data folder; the restarted daemon must finish the run.
async fn daemon_trial(
    env: &Env,
    data: &Path,
    repair: config::Repair,
    delay: Duration,
    reference: &Outputs,
) -> Trial {
    let ms = delay.as_millis() as u64;
    let d = daemon_at(env, data);
    let req = env.submit_request(|c| kill_support::tune(c, repair));
    let run = d.client.submit(&req).await.unwrap();
    tokio::time::sleep(delay).await;
    d.kill();
    let runs = data.join("runs");
    let (landed, stored) = classify(&on_disk(&runs, &run.id));
    let d = daemon_at(env, data);
    let mut det = wait_ended(&d.client, &run.id, Duration::from_secs(600)).await;
    // A run that had ended before the kill: the restarted daemon reads ended runs'
    // histories from their databases in the background.
    let t = Instant::now();
    while det.history.is_empty() && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        det = d.client.show(&run.id).await.unwrap();
    }
    d.terminate();
    if det.run.state != JobState::Finished {
        let note = format!("{:?}: {:?}", det.run.state, det.run.reason);
        return Trial::failed(ms, landed, stored, note);
    }
    let got = outputs(&runs.join(&run.id));
    let mut t = Trial::compare(ms, landed, stored, reference, &got);
    // The API's history must agree with the folder.
    let api: Vec<u64> = det.history.iter().map(|h| u64::from(h.iteration)).collect();
    if api != got.iterations() {
        t.ok = false;
        t.note = format!("API history {api:?} vs report {:?}", got.iterations());
    }
    t
}

/// The table's row for one surface and repair mode.
/// `last`: the uninterrupted run's number of iterations (a mid-run kill with all of
/// them stored came during the final evaluation).
fn row(surface: &str, repair: &str, last: usize, trials: &[Trial]) -> String {
    let n = |f: &dyn Fn(&Trial) -> bool| trials.iter().filter(|t| f(t)).count();
    format!(
        "| {surface} | {repair} | {} | {} ({} in the final evaluation) | {} | {} | {} | {} | {} | {} | {} | {}/{} | {}/{} | {} | {} |",
        trials.len(),
        n(&|t| t.landed == Landed::MidRun),
        n(&|t| t.landed == Landed::MidRun && t.stored_at_kill == last),
        n(&|t| t.landed == Landed::BeforeRecord),
        n(&|t| t.landed == Landed::AfterEnd),
        n(&|t| t.ok),
        trials.iter().map(|t| t.lost).sum::<usize>(),
        trials.iter().map(|t| t.duplicated).sum::<usize>(),
        trials.iter().map(|t| t.differing).sum::<usize>(),
        trials.iter().map(|t| t.stored_differing).sum::<usize>(),
        n(&|t| t.masks_equal),
        trials.len(),
        n(&|t| t.weights_equal),
        trials.len(),
        n(&|t| t.stop_equal),
        n(&|t| t.leftover > 0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes: SIGKILL trials at random points; see the module doc"]
async fn sigkill_trials_at_random_points() {
    let trials: usize = var("KILL_TRIALS", "20").parse().unwrap();
    let seed: u64 = var("KILL_SEED", "17").parse().unwrap();
    let surfaces = var("KILL_SURFACES", "cli,daemon");
    let repairs = var("KILL_REPAIRS", "none,obs");
    let env = Env::new();
    let mut rng = Rng(seed);
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for repair in [config::Repair::None, config::Repair::Obs] {
        if !repairs.split(',').any(|r| r == repair.name()) {
            continue;
        }
        let cfg = env.dir.path().join(format!("kill-{}.toml", repair.name()));
        let c = kill_config(&env.fx, Path::new("unused"), repair);
        std::fs::write(&cfg, c.to_toml_string()).unwrap();
        for surface in ["cli", "daemon"] {
            if !surfaces.split(',').any(|s| s == surface) {
                continue;
            }
            let base = env.dir.path().join(format!("{surface}-{}", repair.name()));
            let (reference, took) = match surface {
                "cli" => cli_reference(&cfg, &base.join("reference")),
                _ => daemon_reference(&env, &base.join("reference"), repair).await,
            };
            println!(
                "{surface} repair={}: uninterrupted {:.2} s, {} iterations, stop {}, \
                 masks.bin sha256 {}, weights sha256 {} ({} files)",
                repair.name(),
                took.as_secs_f64(),
                reference.records.len(),
                reference.stop_reason,
                reference.masks,
                reference.weights.as_deref().unwrap_or("-"),
                reference.weight_files.len()
            );
            let mut done = Vec::new();
            for i in 0..trials {
                let delay = took.mul_f64(rng.next_f64());
                let dir = base.join(format!("trial-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                let t = match surface {
                    "cli" => cli_trial(&cfg, &dir, delay, &reference),
                    _ => daemon_trial(&env, &dir, repair, delay, &reference).await,
                };
                println!(
                    "  {surface} {} #{i:>2}: kill at {:>5} ms, {:?} ({} stored), {}{}",
                    repair.name(),
                    t.delay_ms,
                    t.landed,
                    t.stored_at_kill,
                    if t.good() {
                        "same as uninterrupted"
                    } else {
                        "DIFFERS"
                    },
                    if t.note.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", t.note)
                    }
                );
                if !t.good() {
                    bad.push(format!("{surface} {} #{i}: {}", repair.name(), t.note));
                }
                let _ = std::fs::remove_dir_all(&dir);
                done.push(t);
            }
            rows.push(row(surface, repair.name(), reference.records.len(), &done));
        }
    }
    println!(
        "\n| surface | repair | trials | killed mid-run | before record | after end | \
         finished OK | iterations lost | iterations duplicated | records differing | stored iterations differing | \
         masks.bin equal | weight files equal | stop reason equal | files left in weights/ |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    assert!(bad.is_empty(), "trials that differ: {bad:#?}");
}
