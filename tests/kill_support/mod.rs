//! Shared by the SIGKILL tests (`prune_kill`, `kill_trials`): the run config they use,
//! `secateur prune` as a child process whose stderr goes to a file (no pipe to drain,
//! readable after a SIGKILL), and what a run folder says after the fact — the stored
//! iteration numbers and state, and digests of its final outputs.
//!
//! Kill tests must assert the same thing wherever the kill landed, so everything here
//! reads the run folder (the ground truth a resume reads too) rather than timing.
#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use actors::testing::{fixture_config, Fixture};
use protocol::{RunState, StopReason};

/// The config of every kill test: the fixture's defaults (target 50 %) with small steps,
/// so the tiny model needs many iterations and a kill at a random time lands mid-run.
pub fn kill_config(fx: &Fixture, runs: &Path, repair: config::Repair) -> config::Config {
    let mut c = fixture_config(fx, runs);
    tune(&mut c, repair);
    c
}

/// [`kill_config`]'s changes to a fixture config (the daemon tests submit theirs).
pub fn tune(c: &mut config::Config, repair: config::Repair) {
    c.pruning.repair = repair;
    c.heuristic.base_step = 0.02;
    c.heuristic.max_aggressiveness = 1.0;
}

/// `secateur prune` with stderr appended to `log` and stdout discarded.
pub fn spawn_prune(args: &[&str], runs: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secateur"));
    cmd.arg("prune")
        .args(args)
        .arg("--runs-dir")
        .arg(runs)
        .stdout(Stdio::null())
        .stderr(Stdio::from(err));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// `secateur prune` run to its exit.
pub fn prune(args: &[&str], runs: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
        .arg("prune")
        .args(args)
        .arg("--runs-dir")
        .arg(runs)
        .output()
        .unwrap()
}

/// The run id from the first "starting run <id> in <dir>" line of `log`, if written.
pub fn started_run(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("starting run ")?;
        Some(rest.split_whitespace().next()?.to_string())
    })
}

/// Where a run stands on disk, as a resume would find it.
#[derive(Debug, Clone, PartialEq)]
pub enum OnDisk {
    /// No run folder: killed before the run was set up.
    NoFolder,
    /// A folder but no run in its database (or no database): killed while recording it.
    NotRecorded,
    /// A recorded run: its stored status and its stored iteration numbers.
    Recorded {
        state: Option<RunState>,
        stop_reason: Option<StopReason>,
        iterations: Vec<u32>,
        outputs: bool,
    },
}

impl OnDisk {
    /// Whether the run's outputs were all written (the run was over).
    pub fn finished(&self) -> bool {
        matches!(self, OnDisk::Recorded { outputs: true, .. })
    }
}

/// Read the run folder `runs/id` (no process may hold its database).
pub fn on_disk(runs: &Path, id: &str) -> OnDisk {
    let folder = actors::RunFolder::new(runs, id);
    if !folder.dir().is_dir() {
        return OnDisk::NoFolder;
    }
    // Opening a missing sled folder would create it: look first.
    if !folder.has_checkpoint() {
        return OnDisk::NotRecorded;
    }
    match folder.load() {
        Ok(run) => OnDisk::Recorded {
            state: run.status.as_ref().map(|s| s.state),
            stop_reason: run.status.as_ref().and_then(|s| s.stop_reason),
            iterations: run
                .iterations
                .iter()
                .map(|s| s.record.outcome.iteration)
                .collect(),
            outputs: folder.has_outputs(),
        },
        Err(actors::folder::FolderError::Store {
            source: actors::store::StoreError::UnknownRun(_),
            ..
        }) => OnDisk::NotRecorded,
        Err(e) => panic!("run {id}: unreadable folder: {e}"),
    }
}

/// What a finished run left, to compare with the uninterrupted run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// sha256 of `masks.bin`.
    pub masks: String,
    /// sha256 over the committed weight files — per layer the newest
    /// `weights/<layer>@<iteration>.bin` of an iteration ≤ the last committed one, the
    /// files a resume or an export reads — sorted by name, each name then its bytes.
    /// `None` when the run has no `weights/` folder (`repair = "none"`).
    pub weights: Option<String>,
    /// Those files' names.
    pub weight_files: Vec<String>,
    /// Every other file in `weights/`: superseded versions, versions of iterations
    /// that never committed, `.tmp` files (what a kill can leave behind).
    pub leftover_files: Vec<String>,
    /// `report.json`'s stop reason.
    pub stop_reason: String,
    /// `report.json`'s iteration records, in order.
    pub records: Vec<serde_json::Value>,
    /// Everything stored per iteration (profiles, raw statistics, candidates, …) less
    /// the wall times ([`WALL_TIMES`]): what the planner saw must not depend on where
    /// the run was killed either.
    pub stored: Vec<serde_json::Value>,
}

/// Fields of a stored iteration that measure wall time, so differ between any runs.
pub const WALL_TIMES: [&str; 3] = ["timings", "latency_ms", "seconds"];

/// `v` without the [`WALL_TIMES`] fields, at any depth.
fn without_wall_times(mut v: serde_json::Value) -> serde_json::Value {
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| !WALL_TIMES.contains(&k.as_str()));
                m.values_mut().for_each(scrub);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    scrub(&mut v);
    v
}

impl Outputs {
    /// The iteration numbers of the records.
    pub fn iterations(&self) -> Vec<u64> {
        self.records
            .iter()
            .map(|r| r["outcome"]["iteration"].as_u64().unwrap())
            .collect()
    }
}

/// The outputs of the finished run folder `dir` (no process may hold its database).
pub fn outputs(dir: &Path) -> Outputs {
    let masks = std::fs::read(dir.join(actors::folder::MASKS_FILE)).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let (runs, id) = (dir.parent().unwrap(), dir.file_name().unwrap());
    let stored = actors::RunFolder::new(runs, &id.to_string_lossy())
        .load()
        .unwrap();
    let last = stored
        .iterations
        .iter()
        .filter(|s| s.committed.is_some())
        .map(|s| s.record.outcome.iteration)
        .max()
        .unwrap_or(0);
    let wdir = dir.join("weights");
    let mut names: Vec<String> = std::fs::read_dir(&wdir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    // Per layer, the newest version of an iteration ≤ `last`.
    let mut newest: std::collections::BTreeMap<String, (u32, String)> = Default::default();
    for n in &names {
        let parsed = n.strip_suffix(".bin").and_then(|s| s.rsplit_once('@'));
        if let Some((layer, it)) = parsed.and_then(|(l, i)| Some((l, i.parse::<u32>().ok()?))) {
            if it <= last && newest.get(layer).is_none_or(|(m, _)| *m < it) {
                newest.insert(layer.to_string(), (it, n.clone()));
            }
        }
    }
    let mut weight_files: Vec<String> = newest.into_values().map(|(_, n)| n).collect();
    weight_files.sort();
    let leftover_files = names
        .into_iter()
        .filter(|n| !weight_files.contains(n))
        .collect();
    let weights = wdir.is_dir().then(|| {
        let mut all = Vec::new();
        for n in &weight_files {
            all.extend_from_slice(n.as_bytes());
            all.extend_from_slice(&std::fs::read(wdir.join(n)).unwrap());
        }
        sha256_hex(&all)
    });
    Outputs {
        masks: sha256_hex(&masks),
        weights,
        weight_files,
        leftover_files,
        stop_reason: report["stop_reason"].as_str().unwrap().to_string(),
        records: report["iterations"].as_array().unwrap().clone(),
        stored: stored
            .iterations
            .iter()
            .map(|s| without_wall_times(serde_json::to_value(s).unwrap()))
            .collect(),
    }
}

/// Iterations of `reference` missing from `got`, and iteration numbers of `got` that
/// repeat or lie beyond the reference's last one.
pub fn lost_and_duplicated(reference: &[u64], got: &[u64]) -> (usize, usize) {
    let lost = reference.iter().filter(|i| !got.contains(i)).count();
    let mut seen = std::collections::HashSet::new();
    let dup = got
        .iter()
        .filter(|i| !seen.insert(**i) || !reference.contains(i))
        .count();
    (lost, dup)
}

/// The JSON paths at which `a` and `b` differ, with both values (for a report).
pub fn json_diff(a: &serde_json::Value, b: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (&x.get(k), &y.get(k));
                match (va, vb) {
                    (Some(va), Some(vb)) => json_diff(va, vb, &format!("{path}.{k}"), out),
                    _ => out.push(format!("{path}.{k}: {va:?} vs {vb:?}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                json_diff(va, vb, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} vs {b}")),
        _ => {}
    }
}

/// SHA-256 (FIPS 180-4) as lowercase hex: the digests the trials report, without a
/// crypto dependency for the tests.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

/// Checked against coreutils `sha256sum`.
#[test]
fn sha256_matches_the_standard_vectors() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // 56 bytes: the padding spills into a second block.
    let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_eq!(
        sha256_hex(long),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}
