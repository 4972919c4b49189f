//! A run's folder, `<runs_dir>/<run id>/`, and everything known about its layout:
//! the checkpoint database (`checkpoint.sled`), the committed masks rebuilt from the
//! stored deltas, and the outputs a finished run leaves (`masks.bin`, `report.json`,
//! `report.md`, `iterations.png`, `layers.png`). Prune, resume, export, compare and the
//! daemon all go through [`RunFolder`], so the layout is written down once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use config::Config;
use kernels::{Mask, MaskDelta};
use protocol::{LayerDelta, RunSummary};

use crate::store::{LoadedRun, Store, StoreError};

pub mod weights;

pub use weights::WeightFiles;

/// What can go wrong with a run folder.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{}: not a run folder (no checkpoint database {})", dir.display(), db.display())]
    NotARun { dir: PathBuf, db: PathBuf },
    #[error("run `{run}`: reading {} (is a prune of this run still running?): {source}", db.display())]
    Store {
        run: String,
        db: PathBuf,
        source: StoreError,
    },
    #[error("run `{0}` has no committed iteration: there is no pruned model to export")]
    NoCommit(String),
    #[error("run `{run}`: stored config: {reason}")]
    Config { run: String, reason: String },
    #[error("run `{run}`: iteration {iteration}, layer `{layer}`: {reason}")]
    Delta {
        run: String,
        iteration: u32,
        layer: String,
        reason: String,
    },
    #[error("{}: repaired weights: {reason}", path.display())]
    Weights { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Report(#[from] report::ReportError),
}

/// One run's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFolder {
    dir: PathBuf,
    id: String,
}

/// The committed state of a stored run: its config, and per layer (in the stored
/// layer order) the mask after every committed delta, replayed in iteration order.
pub struct Committed {
    pub run: LoadedRun,
    pub config: Config,
    pub masks: LayerMasks,
    /// Repaired layers (`pruning.repair = "obs"`): layer name → the committed weight,
    /// `[rows, cols]` row-major f32, zero where pruned. Other layers are the source
    /// checkpoint's weights times their mask.
    pub weights: HashMap<String, Vec<f32>>,
    /// Mask-delta bytes of each committed iteration, in order.
    pub delta_bytes: Vec<u64>,
}

impl Committed {
    /// Iterations whose delta was committed.
    pub fn committed_iterations(&self) -> usize {
        self.delta_bytes.len()
    }

    /// Layer name → committed mask.
    pub fn mask_map(self) -> HashMap<String, Mask> {
        self.masks.into_iter().collect()
    }
}

impl RunFolder {
    /// The folder of run `id` in `runs_dir` (it need not exist yet).
    pub fn new(runs_dir: &Path, id: &str) -> Self {
        Self {
            dir: runs_dir.join(id),
            id: id.to_string(),
        }
    }

    /// An existing run named by the path of its folder or by its id in `runs_dir`.
    pub fn find(run: &str, runs_dir: &Path) -> Result<Self, FolderError> {
        let as_path = PathBuf::from(run);
        let dir = if as_path.is_dir() {
            as_path
        } else {
            runs_dir.join(run)
        };
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| run.to_string());
        let folder = Self { dir, id };
        if !folder.has_checkpoint() {
            return Err(FolderError::NotARun {
                dir: folder.dir.clone(),
                db: folder.db_dir(),
            });
        }
        Ok(folder)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sled directory of the run.
    pub fn db_dir(&self) -> PathBuf {
        db_dir(&self.dir)
    }

    /// The repaired weights of the run's commits.
    pub fn weight_files(&self) -> WeightFiles {
        WeightFiles::new(&self.dir)
    }

    pub fn has_checkpoint(&self) -> bool {
        self.db_dir().is_dir()
    }

    /// Whether a finished run's outputs are here (`masks.bin` and `report.json`, the
    /// last files [`Self::write_outputs`] writes and the first).
    pub fn has_outputs(&self) -> bool {
        self.dir.join(MASKS_FILE).is_file() && self.dir.join("report.json").is_file()
    }

    /// Read the stored run (opens and closes the database: not while a prune of the
    /// same run holds it).
    pub fn load(&self) -> Result<LoadedRun, FolderError> {
        Store::open(&self.db_dir())
            .and_then(|s| s.load_run(&self.id))
            .map_err(|source| FolderError::Store {
                run: self.id.clone(),
                db: self.db_dir(),
                source,
            })
    }

    /// The stored run with its config and committed masks.
    pub fn committed(&self) -> Result<Committed, FolderError> {
        let run = self.load()?;
        let config =
            Config::from_toml_str(&run.meta.config_toml).map_err(|e| FolderError::Config {
                run: self.id.clone(),
                reason: e.to_string(),
            })?;
        let (masks, delta_bytes) = committed_masks(&self.id, &run)?;
        let by_name: HashMap<String, Mask> = masks.iter().cloned().collect();
        let weights = self.weight_files().load(&touched_layers(&run), &by_name)?;
        Ok(Committed {
            run,
            config,
            masks,
            weights,
            delta_bytes,
        })
    }

    /// Like [`Self::committed`], for readers of the pruned model (export, compare):
    /// a run without a committed iteration has none.
    pub fn pruned_model(&self) -> Result<Committed, FolderError> {
        let c = self.committed()?;
        if c.committed_iterations() == 0 {
            return Err(FolderError::NoCommit(self.id.clone()));
        }
        Ok(c)
    }

    /// Write a finished run's outputs: `masks.bin` and the report files. Returns the
    /// paths written, report files first.
    pub fn write_outputs(
        &self,
        summary: &RunSummary,
        masks: &[LayerDelta],
        extras: &report::Extras,
    ) -> Result<Vec<PathBuf>, FolderError> {
        let mut written = report::write_all(&self.dir, summary, extras)?;
        let path = self.dir.join(MASKS_FILE);
        // Whole or absent: its presence tells a resume that the run is finished.
        let tmp = path.with_extension("bin.tmp");
        std::fs::write(&tmp, protocol::masks_file::encode(masks))
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| FolderError::Io {
                path: path.clone(),
                source,
            })?;
        written.push(path);
        Ok(written)
    }
}

/// The final masks' file name in a run folder.
pub const MASKS_FILE: &str = "masks.bin";

/// The sled directory of the run folder `run_dir`.
pub fn db_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint.sled")
}

/// Layer name → mask, in the stored layer order.
pub type LayerMasks = Vec<(String, Mask)>;

/// Layer → the committed iterations whose deltas touched it (where a repaired run's
/// weight files may come from).
pub fn touched_layers(run: &LoadedRun) -> HashMap<String, Vec<u32>> {
    let committed: HashSet<u32> = run
        .iterations
        .iter()
        .filter(|s| s.committed.is_some())
        .map(|s| s.record.outcome.iteration)
        .collect();
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    for (it, deltas) in run.deltas.iter().filter(|(it, _)| committed.contains(it)) {
        for d in deltas {
            out.entry(d.layer.clone()).or_default().push(*it);
        }
    }
    out
}

/// Every layer's mask after the committed deltas of `run`, replayed in iteration order
/// (deltas of rolled-back iterations cannot exist: record and deltas are one
/// transaction), and the delta bytes of each committed iteration.
pub fn committed_masks(id: &str, run: &LoadedRun) -> Result<(LayerMasks, Vec<u64>), FolderError> {
    let mut masks: Vec<(String, Mask)> = run
        .meta
        .layers
        .iter()
        .map(|(name, [rows, cols])| (name.clone(), Mask::ones(*rows, *cols)))
        .collect();
    let index: HashMap<String, usize> = masks
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.clone(), i))
        .collect();
    // Committed iterations and the repaired-weight bytes each stored beside the deltas.
    let committed: HashMap<u32, u64> = run
        .iterations
        .iter()
        .filter(|s| s.committed.is_some())
        .map(|s| (s.record.outcome.iteration, s.weight_bytes))
        .collect();
    let mut delta_bytes = Vec::new();
    for (it, deltas) in run
        .deltas
        .iter()
        .filter(|(it, _)| committed.contains_key(it))
    {
        let mut bytes = committed[it];
        for d in deltas {
            let bad = |reason: String| FolderError::Delta {
                run: id.to_string(),
                iteration: *it,
                layer: d.layer.clone(),
                reason,
            };
            let i = *index
                .get(&d.layer)
                .ok_or_else(|| bad("delta for an unknown layer".into()))?;
            MaskDelta::from_bytes(&d.bytes)
                .and_then(|delta| delta.apply_to(&mut masks[i].1))
                .map_err(|e| bad(e.to_string()))?;
            bytes += d.bytes.len() as u64;
        }
        delta_bytes.push(bytes);
    }
    Ok((masks, delta_bytes))
}
