//! The sled schema of a run's checkpoint database (only the Checkpointer uses it).
//!
//! Trees:
//! - `runs`: run id → [`RunMeta`] (JSON): config TOML, baseline PPL, layer shapes.
//! - `state`: run id → [`RunStatus`] (JSON): the state machine.
//! - `iterations`: run id ‖ 0 ‖ iteration (u32 big-endian) → [`StoredIteration`] (JSON).
//! - `deltas`: run id ‖ 0 ‖ iteration (u32 BE) ‖ layer index (u32 BE) → [`LayerDelta`]
//!   (layer name length u16 BE ‖ name ‖ `MaskDelta` bytes).
//! - `dense_final`: run id → [`TextPpl`] (JSON): the dense model's perplexity on the
//!   final text, measured before anything is pruned (the model is pruned in place, so
//!   the dense weights are gone by the end of the run). Absent in stores written before
//!   it existed, and in runs without a final evaluation; such stores load unchanged.
//! - `final_probe`: run id → [`ProbePoint`] (JSON): the knowledge probe of the final
//!   model, when the run finished after an iteration that had no probe point (the
//!   dense point lives in [`RunMeta`], the others in their [`StoredIteration`]).
//!   Absent unless the probe is on; older stores load unchanged.
//!
//! Big-endian iteration numbers make sled's key order the iteration order, so a prefix
//! scan returns iterations oldest first. A finished iteration — its record, its deltas
//! and the new status — is written in ONE multi-tree transaction followed by a flush:
//! after a crash an iteration is either entirely there or entirely absent.

use std::path::Path;

use protocol::{LayerDelta, ProbePoint, RunMeta, RunStatus, StoredIteration};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// What can go wrong with the checkpoint database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("checkpoint database: {0}")]
    Sled(#[from] sled::Error),
    #[error("checkpoint database: corrupt record `{key}`: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("checkpoint database: run `{0}` not found")]
    UnknownRun(String),
    #[error("checkpoint database: injected write failure at iteration {0}")]
    Injected(u32),
    /// The repaired-weight files beside the database (the message names the file).
    #[error("checkpoint weights: {0}")]
    Weights(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Perplexity of a model on the `[evaluation.final]` text.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextPpl {
    pub ppl: f64,
    pub tokens_scored: usize,
    /// Texts read from the source.
    pub texts: usize,
    /// Wall time of the measurement.
    pub seconds: f64,
}

/// A run loaded back from the database.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    pub meta: RunMeta,
    pub status: Option<RunStatus>,
    /// Every stored iteration, oldest first.
    pub iterations: Vec<StoredIteration>,
    /// The deltas of each committed iteration, in iteration order.
    pub deltas: Vec<(u32, Vec<LayerDelta>)>,
    /// The dense final-text PPL, when it was measured and stored.
    pub dense_final: Option<TextPpl>,
    /// The final model's knowledge-probe point, when one was stored.
    pub final_probe: Option<ProbePoint>,
}

/// The open database.
pub struct Store {
    db: sled::Db,
    runs: sled::Tree,
    state: sled::Tree,
    iterations: sled::Tree,
    deltas: sled::Tree,
    dense_final: sled::Tree,
    final_probe: sled::Tree,
}

fn run_prefix(run: &str) -> Vec<u8> {
    let mut k = run.as_bytes().to_vec();
    k.push(0);
    k
}

fn iteration_key(run: &str, iteration: u32) -> Vec<u8> {
    let mut k = run_prefix(run);
    k.extend(iteration.to_be_bytes());
    k
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Plain data structs with string keys always serialise.
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn encode_delta(d: &LayerDelta) -> Vec<u8> {
    let name = d.layer.as_bytes();
    let mut out = Vec::with_capacity(2 + name.len() + d.bytes.len());
    out.extend((name.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend(&name[..name.len().min(u16::MAX as usize)]);
    out.extend(&d.bytes);
    out
}

fn decode_delta(key: &[u8], v: &[u8]) -> Result<LayerDelta> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.into(),
    };
    if v.len() < 2 {
        return Err(corrupt("delta record too short"));
    }
    let n = u16::from_be_bytes([v[0], v[1]]) as usize;
    let name = v
        .get(2..2 + n)
        .ok_or_else(|| corrupt("delta name truncated"))?;
    let layer = String::from_utf8(name.to_vec()).map_err(|_| corrupt("delta name not UTF-8"))?;
    Ok(LayerDelta {
        layer,
        bytes: v[2 + n..].to_vec(),
    })
}

impl Store {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = open_with_lock_retry(dir)?;
        Ok(Self {
            runs: db.open_tree("runs")?,
            state: db.open_tree("state")?,
            iterations: db.open_tree("iterations")?,
            deltas: db.open_tree("deltas")?,
            dense_final: db.open_tree("dense_final")?,
            final_probe: db.open_tree("final_probe")?,
            db,
        })
    }

    /// Record a new run and its initial status, durably.
    pub fn create_run(&self, meta: &RunMeta, status: &RunStatus) -> Result<()> {
        let id = meta.run_id.as_bytes();
        (&self.runs, &self.state)
            .transaction(|(runs, state)| {
                runs.insert(id, json(meta))?;
                state.insert(id, json(status))?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)?;
        self.db.flush()?;
        Ok(())
    }

    /// Rewrite the run's status (flushed: it is what a resume reads first).
    pub fn set_status(&self, run: &str, status: &RunStatus) -> Result<()> {
        self.state.insert(run.as_bytes(), json(status))?;
        self.db.flush()?;
        Ok(())
    }

    /// Store one finished iteration, its deltas (empty on rollback) and the new status
    /// in one transaction, then flush.
    pub fn commit_iteration(
        &self,
        run: &str,
        stored: &StoredIteration,
        deltas: &[LayerDelta],
        status: &RunStatus,
    ) -> Result<()> {
        let it = stored.record.outcome.iteration;
        let key = iteration_key(run, it);
        let record = json(stored);
        let delta_rows: Vec<(Vec<u8>, Vec<u8>)> = deltas
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut k = key.clone();
                k.extend((i as u32).to_be_bytes());
                (k, encode_delta(d))
            })
            .collect();
        let status = json(status);
        (&self.iterations, &self.deltas, &self.state)
            .transaction(|(iters, dts, state)| {
                iters.insert(key.as_slice(), record.as_slice())?;
                for (k, v) in &delta_rows {
                    dts.insert(k.as_slice(), v.as_slice())?;
                }
                state.insert(run.as_bytes(), status.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)?;
        self.db.flush()?;
        Ok(())
    }

    /// Record the dense final-text PPL of `run` (flushed: a resume relies on it).
    pub fn set_dense_final(&self, run: &str, ppl: &TextPpl) -> Result<()> {
        self.dense_final.insert(run.as_bytes(), json(ppl))?;
        self.db.flush()?;
        Ok(())
    }

    /// Record the final model's probe point of `run` (flushed).
    pub fn set_final_probe(&self, run: &str, point: &ProbePoint) -> Result<()> {
        self.final_probe.insert(run.as_bytes(), json(point))?;
        self.db.flush()?;
        Ok(())
    }

    /// Everything stored for `run`.
    pub fn load_run(&self, run: &str) -> Result<LoadedRun> {
        let meta_bytes = self
            .runs
            .get(run.as_bytes())?
            .ok_or_else(|| StoreError::UnknownRun(run.to_string()))?;
        let meta: RunMeta = parse(run.as_bytes(), &meta_bytes)?;
        let status = match self.state.get(run.as_bytes())? {
            Some(b) => Some(parse(run.as_bytes(), &b)?),
            None => None,
        };
        let prefix = run_prefix(run);
        let mut iterations = Vec::new();
        for kv in self.iterations.scan_prefix(&prefix) {
            let (k, v) = kv?;
            iterations.push(parse::<StoredIteration>(&k, &v)?);
        }
        let mut deltas: Vec<(u32, Vec<LayerDelta>)> = Vec::new();
        for kv in self.deltas.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let tail = &k[prefix.len()..];
            if tail.len() != 8 {
                return Err(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "delta key length".into(),
                });
            }
            let it = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
            let d = decode_delta(&k, &v)?;
            match deltas.last_mut() {
                Some((last, list)) if *last == it => list.push(d),
                _ => deltas.push((it, vec![d])),
            }
        }
        let dense_final = match self.dense_final.get(run.as_bytes())? {
            Some(b) => Some(parse(run.as_bytes(), &b)?),
            None => None,
        };
        let final_probe = match self.final_probe.get(run.as_bytes())? {
            Some(b) => Some(parse(run.as_bytes(), &b)?),
            None => None,
        };
        Ok(LoadedRun {
            meta,
            status,
            iterations,
            deltas,
            dense_final,
            final_probe,
        })
    }

    /// Ids of every stored run.
    pub fn run_ids(&self) -> Result<Vec<String>> {
        self.runs
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }
}

/// Record the dense final-text PPL of `run` in the database at `dir` (opens and closes
/// it, so call it while no Checkpointer holds the database, i.e. before the actors
/// start).
pub fn record_dense_final(dir: &Path, run: &str, ppl: &TextPpl) -> Result<()> {
    Store::open(dir)?.set_dense_final(run, ppl)
}

fn tx_err(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => StoreError::Sled(e),
        TransactionError::Abort(()) => StoreError::Corrupt {
            key: String::new(),
            reason: "transaction aborted".into(),
        },
    }
}

/// sled's background flusher holds the database file lock for a moment after the
/// last handle is dropped, so a store reopened at once in the same process (a resumed
/// run, a restarted daemon) can see `WouldBlock`. Retry that case for up to two
/// seconds; any other error, or a lock still held after that, is returned.
fn open_with_lock_retry(dir: &Path) -> std::result::Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ActorTimings, Feedback, IterationOutcome, IterationRecord, Plan, RunState};

    fn stored(it: u32, rolled_back: bool) -> StoredIteration {
        StoredIteration {
            record: IterationRecord {
                plan: Plan {
                    reasoning: format!("plan {it}"),
                    stop_pruning: false,
                    layer_decisions: vec![],
                },
                outcome: IterationOutcome {
                    iteration: it,
                    sparsity_before: 0.0,
                    sparsity_after: 0.1,
                    ppl_before: 1.0,
                    ppl_after: 1.1,
                    rolled_back,
                },
                feedback: Feedback {
                    iteration: it,
                    summary: String::new(),
                    assessment: String::new(),
                },
            },
            candidates: vec![],
            committed: (!rolled_back).then_some(0),
            raw_sens: vec![1.0],
            raw_grad: vec![2.0],
            profiles: vec![],
            timings: ActorTimings::default(),
            delta_bytes: 3,
            weight_bytes: 0,
            probe: None,
        }
    }

    fn status(it: u32) -> RunStatus {
        RunStatus {
            state: RunState::Committed,
            iteration: it,
            stored_iterations: it,
            reason: None,
            stop_reason: None,
        }
    }

    #[test]
    fn iterations_and_deltas_come_back_in_iteration_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let meta = RunMeta {
            run_id: "r1".into(),
            config_toml: "x = 1".into(),
            created_unix: 5,
            baseline_ppl: 9.0,
            layers: vec![("a".into(), [2, 3])],
            baseline_probe: None,
        };
        store.create_run(&meta, &status(0)).unwrap();
        // Iterations 2..=300 cross a byte boundary: big-endian keys keep them in order.
        for it in [1u32, 2, 256, 3] {
            let d = LayerDelta {
                layer: format!("l{it}"),
                bytes: vec![it as u8, 7],
            };
            store
                .commit_iteration("r1", &stored(it, it == 2), &[d], &status(it))
                .unwrap();
        }
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let run = store.load_run("r1").unwrap();
        assert_eq!(run.meta, meta);
        let its: Vec<u32> = run
            .iterations
            .iter()
            .map(|s| s.record.outcome.iteration)
            .collect();
        assert_eq!(its, vec![1, 2, 3, 256]);
        let d: Vec<(u32, String)> = run
            .deltas
            .iter()
            .map(|(i, l)| (*i, l[0].layer.clone()))
            .collect();
        assert_eq!(
            d,
            vec![
                (1, "l1".into()),
                (2, "l2".into()),
                (3, "l3".into()),
                (256, "l256".into())
            ]
        );
        assert_eq!(run.deltas[3].1[0].bytes, vec![0, 7]);
        assert_eq!(run.status.unwrap().iteration, 3);
        assert_eq!(store.run_ids().unwrap(), vec!["r1".to_string()]);
        assert!(matches!(
            store.load_run("nope"),
            Err(StoreError::UnknownRun(_))
        ));
    }

    #[test]
    fn dense_final_ppl_is_optional_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let meta = RunMeta {
            run_id: "r2".into(),
            config_toml: String::new(),
            created_unix: 1,
            baseline_ppl: 3.0,
            layers: vec![],
            baseline_probe: None,
        };
        {
            // A store as older versions wrote it: no dense_final record for the run.
            let store = Store::open(dir.path()).unwrap();
            store.create_run(&meta, &status(0)).unwrap();
            assert_eq!(store.load_run("r2").unwrap().dense_final, None);
        }
        let ppl = TextPpl {
            ppl: 29.5,
            tokens_scored: 1234,
            texts: 5,
            seconds: 2.5,
        };
        record_dense_final(dir.path(), "r2", &ppl).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let run = store.load_run("r2").unwrap();
        assert_eq!(run.dense_final, Some(ppl));
        assert_eq!(run.meta, meta);
        store.dense_final.insert("r2", "{").unwrap();
        let e = store.load_run("r2").unwrap_err().to_string();
        assert!(e.contains("corrupt record `r2`"), "{e}");
    }

    #[test]
    fn probe_points_survive_reopen_and_old_records_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let pt = |iteration: u32, correct: usize| ProbePoint {
            iteration,
            sparsity: 0.1 * f64::from(iteration),
            ppl: 5.0 + f64::from(iteration),
            correct,
            total: 8,
            accuracy: correct as f64 / 8.0,
            seconds: 0.25,
        };
        let meta = RunMeta {
            run_id: "p".into(),
            config_toml: String::new(),
            created_unix: 1,
            baseline_ppl: 5.0,
            layers: vec![],
            baseline_probe: Some(pt(0, 6)),
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.create_run(&meta, &status(0)).unwrap();
            let mut it2 = stored(2, false);
            it2.probe = Some(pt(2, 5));
            store
                .commit_iteration("p", &stored(1, false), &[], &status(1))
                .unwrap();
            store.commit_iteration("p", &it2, &[], &status(2)).unwrap();
            store
                .commit_iteration("p", &stored(3, true), &[], &status(3))
                .unwrap();
            store.set_final_probe("p", &pt(3, 4)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let run = store.load_run("p").unwrap();
        assert_eq!(run.meta.baseline_probe, Some(pt(0, 6)));
        let probes: Vec<Option<u32>> = run
            .iterations
            .iter()
            .map(|s| s.probe.as_ref().map(|p| p.iteration))
            .collect();
        assert_eq!(probes, vec![None, Some(2), None]);
        assert_eq!(run.iterations[1].probe, Some(pt(2, 5)));
        assert_eq!(run.final_probe, Some(pt(3, 4)));
        // Records as written before the probe existed: no probe fields at all.
        let old_meta =
            r#"{"run_id":"o","config_toml":"","created_unix":1,"baseline_ppl":2.0,"layers":[]}"#;
        store.runs.insert("o", old_meta).unwrap();
        let old_it = serde_json::to_value(stored(1, false)).unwrap();
        assert!(old_it.get("probe").is_none(), "None is not written");
        store
            .iterations
            .insert(iteration_key("o", 1), serde_json::to_vec(&old_it).unwrap())
            .unwrap();
        let old = store.load_run("o").unwrap();
        assert_eq!(old.meta.baseline_probe, None);
        assert_eq!(old.iterations[0].probe, None);
        assert_eq!(old.final_probe, None);
    }

    /// A resume continues from the stored numbers (raw gradients, PPLs), so they must
    /// come back bit for bit. serde_json's default float parser reads 10-17 % of such
    /// values one ulp off (343 of these 2001); restored gradients then moved the
    /// heuristic's z-scores and its plans in the last bits, so a resumed run's records
    /// differed from the uninterrupted run's (the SIGKILL trials found it). The
    /// workspace enables serde_json's `float_roundtrip` feature.
    #[test]
    fn stored_floats_come_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let meta = RunMeta {
            run_id: "f".into(),
            config_toml: String::new(),
            created_unix: 1,
            baseline_ppl: 17.123_456_789_012_34,
            layers: vec![],
            baseline_probe: None,
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f64::from_bits(0x3e00_0000_0000_0000 | (x >> 12)) // in [2^-31, 2^-30)
                * (1u64 << (x % 48)) as f64
        };
        let mut it = stored(1, false);
        // A value serde_json's default parser reads one ulp off.
        it.raw_grad = vec![4.394_628_886_472_684_7e-7];
        it.raw_grad.extend((0..2000).map(|_| next()));
        it.raw_sens = (0..2000).map(|_| next()).collect();
        it.record.outcome.ppl_after = next();
        {
            let store = Store::open(dir.path()).unwrap();
            store.create_run(&meta, &status(0)).unwrap();
            store.commit_iteration("f", &it, &[], &status(1)).unwrap();
        }
        let run = Store::open(dir.path()).unwrap().load_run("f").unwrap();
        // Values read back other than written: (count, first one).
        let off = |a: &[f64], b: &[f64]| {
            let bad: Vec<(f64, f64)> = a
                .iter()
                .zip(b)
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .map(|(x, y)| (*x, *y))
                .collect();
            (bad.len(), bad.first().copied())
        };
        let back = &run.iterations[0];
        assert_eq!(back.raw_grad.len(), it.raw_grad.len());
        assert_eq!(off(&back.raw_grad, &it.raw_grad), (0, None));
        assert_eq!(off(&back.raw_sens, &it.raw_sens), (0, None));
        assert_eq!(
            back.record.outcome.ppl_after.to_bits(),
            it.record.outcome.ppl_after.to_bits()
        );
        assert_eq!(run.meta.baseline_ppl.to_bits(), meta.baseline_ppl.to_bits());
    }

    #[test]
    fn corrupt_records_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.runs.insert("bad", "not json").unwrap();
        let e = store.load_run("bad").unwrap_err().to_string();
        assert!(e.contains("corrupt record `bad`"), "{e}");
        assert!(decode_delta(b"k", &[0, 9, 1]).is_err());
    }
}
