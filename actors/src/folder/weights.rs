//! Repaired weights in a run folder (`pruning.repair = "obs"`): `weights/`, one file per
//! layer and committing iteration, `<layer>@<iteration>.bin`, holding the layer's kept
//! values only (its mask says where they go; pruned weights are exact zeros).
//!
//! **Why files beside sled, and why versioned names.** A repair rewrites every kept
//! weight of a touched layer, so a commit stores whole layers (MBs), not index deltas;
//! in sled's log every overwrite would stay on disk until it compacts. Here a layer has
//! at most two files, and only one after a commit finishes. Crash safety comes from the
//! iteration in the name: the files of iteration `t` are written (tmp + fsync + rename)
//! *before* sled commits `t`, older files of those layers are removed *after*. A reader
//! takes, per layer, the newest file of a committed iteration whose deltas touched that
//! layer; a file of an iteration that never committed (killed between the two steps,
//! then redone with other layers or rolled back) is ignored, and a resumed run removes
//! every such file before it writes again ([`WeightFiles::tidy`]). Each file ends with a
//! CRC-32 of its bytes, and its kept count must match the committed mask, so a torn or
//! stale file is an error naming it, never silently wrong weights.
//!
//! Layout of a file: `SCTW`, version `u32` = 1, rows `u32`, cols `u32`, kept `u64`, the
//! kept values as f32 little-endian in row-major order, CRC-32 `u32` of all before it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kernels::Mask;

use super::FolderError;

const MAGIC: &[u8; 4] = b"SCTW";
const VERSION: u32 = 1;
const HEADER: usize = 4 + 4 + 4 + 4 + 8;

/// The `weights/` folder of one run.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    dir: PathBuf,
}

impl WeightFiles {
    /// The weight files of the run folder `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            dir: run_dir.join("weights"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store `layer`'s committed weight of iteration `iteration`: `weight` is the whole
    /// `[rows, cols]` tensor (row-major), `mask` its keep bits. Durable when it returns
    /// (file and folder synced). Returns the bytes written.
    pub fn write(
        &self,
        iteration: u32,
        layer: &str,
        mask: &Mask,
        weight: &[f32],
    ) -> Result<u64, FolderError> {
        let path = self.path(layer, iteration)?;
        if weight.len() != mask.len() {
            return Err(bad(
                &path,
                format!("{} values for a {} mask", weight.len(), mask.len()),
            ));
        }
        let io = |source| FolderError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(|source| FolderError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let bytes = encode(mask, weight);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        sync_dir(&self.dir)?;
        Ok(bytes.len() as u64)
    }

    /// After iteration `iteration` committed: remove every other file of `layers`
    /// (older versions, and versions of iterations that never committed).
    pub fn retire(&self, iteration: u32, layers: &[String]) -> Result<(), FolderError> {
        let keep: HashMap<&str, ()> = layers.iter().map(|l| (l.as_str(), ())).collect();
        for (layer, it, path) in self.list()? {
            if keep.contains_key(layer.as_str()) && it != iteration {
                std::fs::remove_file(&path).map_err(|source| FolderError::Io { path, source })?;
            }
        }
        Ok(())
    }

    /// The committed weights: per layer, the newest file of an iteration whose
    /// committed deltas touched that layer (`touched`: layer → committed iterations
    /// that touched it), expanded to the full `[rows, cols]` values (zeros where `masks`
    /// prunes). Any other file — of an iteration that never committed, or of one whose
    /// redo touched other layers — is ignored. A chosen file whose shape or kept count
    /// disagrees with the layer's mask, or whose checksum fails, is an error naming it.
    pub fn load(
        &self,
        touched: &HashMap<String, Vec<u32>>,
        masks: &HashMap<String, Mask>,
    ) -> Result<HashMap<String, Vec<f32>>, FolderError> {
        let mut out = HashMap::new();
        for (layer, path) in self.committed_files(touched)? {
            let mask = masks
                .get(&layer)
                .ok_or_else(|| bad(&path, format!("no layer `{layer}` in the run")))?;
            let bytes = std::fs::read(&path).map_err(|source| FolderError::Io {
                path: path.clone(),
                source,
            })?;
            out.insert(layer, decode(&bytes, mask).map_err(|r| bad(&path, r))?);
        }
        Ok(out)
    }

    /// Remove every file [`Self::load`] would not read (left by a kill between the
    /// files and the database commit, or between the commit and [`Self::retire`]).
    /// Called when a run resumes, before it writes again.
    pub fn tidy(&self, touched: &HashMap<String, Vec<u32>>) -> Result<(), FolderError> {
        let keep: Vec<PathBuf> = self
            .committed_files(touched)?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        for (_, _, path) in self.list()? {
            if !keep.contains(&path) {
                std::fs::remove_file(&path).map_err(|source| FolderError::Io { path, source })?;
            }
        }
        Ok(())
    }

    /// Per layer, the newest file of a committed iteration that touched it.
    fn committed_files(
        &self,
        touched: &HashMap<String, Vec<u32>>,
    ) -> Result<Vec<(String, PathBuf)>, FolderError> {
        let mut newest: HashMap<String, (u32, PathBuf)> = HashMap::new();
        for (layer, it, path) in self.list()? {
            let committed = touched.get(&layer).is_some_and(|its| its.contains(&it));
            if committed && newest.get(&layer).is_none_or(|(n, _)| *n < it) {
                newest.insert(layer, (it, path));
            }
        }
        Ok(newest.into_iter().map(|(l, (_, p))| (l, p)).collect())
    }

    /// Every `(layer, iteration, path)` in the folder (none when it does not exist).
    fn list(&self) -> Result<Vec<(String, u32, PathBuf)>, FolderError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(FolderError::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| FolderError::Io {
                    path: self.dir.clone(),
                    source,
                })?
                .path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let parsed = name
                .as_deref()
                .and_then(|n| n.strip_suffix(".bin"))
                .and_then(|n| {
                    let (layer, it) = n.rsplit_once('@')?;
                    Some((layer.to_string(), it.parse::<u32>().ok()?))
                });
            if let Some((layer, it)) = parsed {
                out.push((layer, it, path));
            }
        }
        Ok(out)
    }

    fn path(&self, layer: &str, iteration: u32) -> Result<PathBuf, FolderError> {
        if layer.is_empty() || layer.contains(['/', '\\', '@']) || layer.starts_with('.') {
            return Err(bad(
                &self.dir,
                format!("layer name `{layer}` cannot name a file"),
            ));
        }
        Ok(self.dir.join(format!("{layer}@{iteration:06}.bin")))
    }
}

/// Size of a weight file with `kept` values.
pub fn file_bytes(kept: usize) -> u64 {
    (HEADER + 4 * kept + 4) as u64
}

fn bad(path: &Path, reason: String) -> FolderError {
    FolderError::Weights {
        path: path.to_path_buf(),
        reason,
    }
}

fn sync_dir(dir: &Path) -> Result<(), FolderError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| FolderError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

fn encode(mask: &Mask, weight: &[f32]) -> Vec<u8> {
    let keep = mask.to_bools();
    let kept = keep.iter().filter(|k| **k).count();
    let mut out = Vec::with_capacity(HEADER + 4 * kept + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(mask.rows() as u32).to_le_bytes());
    out.extend_from_slice(&(mask.cols() as u32).to_le_bytes());
    out.extend_from_slice(&(kept as u64).to_le_bytes());
    for (v, k) in weight.iter().zip(&keep) {
        if *k {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8], mask: &Mask) -> Result<Vec<f32>, String> {
    if bytes.len() < HEADER + 4 || &bytes[..4] != MAGIC {
        return Err("not a secateur weight file (bad magic or too short)".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().map_err(|_| "truncated")?);
    if crc32fast::hash(body) != stored {
        return Err("checksum mismatch (torn or corrupt file)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().unwrap_or_default());
    let version = u32_at(4);
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    let (rows, cols) = (u32_at(8) as usize, u32_at(12) as usize);
    if (rows, cols) != (mask.rows(), mask.cols()) {
        return Err(format!(
            "{rows}x{cols} weights, the layer is {}x{}",
            mask.rows(),
            mask.cols()
        ));
    }
    let kept = u64::from_le_bytes(body[16..24].try_into().unwrap_or_default()) as usize;
    let keep = mask.to_bools();
    let expect = keep.iter().filter(|k| **k).count();
    if kept != expect || body.len() != HEADER + 4 * kept {
        return Err(format!(
            "{kept} kept values in the file, the committed mask keeps {expect}"
        ));
    }
    let mut values = body[HEADER..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    Ok(keep
        .iter()
        .map(|k| {
            if *k {
                values.next().unwrap_or(0.0)
            } else {
                0.0
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask() -> Mask {
        Mask::from_bools(2, 3, &[true, false, true, true, true, false]).unwrap()
    }

    #[test]
    fn round_trip_keeps_values_and_zeros_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let files = WeightFiles::new(dir.path());
        let w = [1.5, 9.0, -2.0, 0.25, 3.0, 7.0];
        let bytes = files.write(3, "l.q", &mask(), &w).unwrap();
        assert_eq!(bytes as usize, HEADER + 4 * 4 + 4);
        let masks = HashMap::from([("l.q".to_string(), mask())]);
        let got = files.load(&touched(&[("l.q", &[3])]), &masks).unwrap();
        assert_eq!(got["l.q"], vec![1.5, 0.0, -2.0, 0.25, 3.0, 0.0]);
    }

    fn touched(pairs: &[(&str, &[u32])]) -> HashMap<String, Vec<u32>> {
        pairs
            .iter()
            .map(|(l, its)| (l.to_string(), its.to_vec()))
            .collect()
    }

    #[test]
    fn uncommitted_versions_are_ignored_retired_and_tidied() {
        let dir = tempfile::tempdir().unwrap();
        let files = WeightFiles::new(dir.path());
        let masks = HashMap::from([("l.q".to_string(), mask()), ("l.k".to_string(), mask())]);
        files.write(2, "l.q", &mask(), &[1.0; 6]).unwrap();
        files.write(5, "l.q", &mask(), &[2.0; 6]).unwrap();
        // Killed before iteration 5 committed: only iteration 2 touched l.q.
        let before = touched(&[("l.q", &[2])]);
        assert_eq!(files.load(&before, &masks).unwrap()["l.q"][0], 1.0);
        let after = touched(&[("l.q", &[2, 5])]);
        assert_eq!(files.load(&after, &masks).unwrap()["l.q"][0], 2.0);
        assert!(files.load(&HashMap::new(), &masks).unwrap().is_empty());
        files.retire(5, &["l.q".to_string()]).unwrap();
        assert_eq!(std::fs::read_dir(files.dir()).unwrap().count(), 1);
        // An attempt of iteration 6 wrote l.k (with another mask), was killed, and the
        // redo of 6 touched only l.q: the orphan is never read, and tidy removes it.
        let other = Mask::from_bools(2, 3, &[true; 6]).unwrap();
        files.write(6, "l.k", &other, &[3.0; 6]).unwrap();
        files.write(6, "l.q", &mask(), &[4.0; 6]).unwrap();
        let redo = touched(&[("l.q", &[2, 5, 6])]);
        let got = files.load(&redo, &masks).unwrap();
        assert_eq!((got.len(), got["l.q"][0]), (1, 4.0));
        files.tidy(&redo).unwrap();
        let left: Vec<_> = std::fs::read_dir(files.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["l.q@000006.bin".to_string()]);
    }

    #[test]
    fn corrupt_or_mismatched_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let files = WeightFiles::new(dir.path());
        files.write(1, "l.q", &mask(), &[1.0; 6]).unwrap();
        let path = files.dir().join("l.q@000001.bin");
        // A mask that keeps a different count.
        let other = Mask::from_bools(2, 3, &[true; 6]).unwrap();
        let err = files
            .load(
                &touched(&[("l.q", &[1])]),
                &HashMap::from([("l.q".to_string(), other)]),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("l.q@000001.bin") && err.contains("kept"),
            "{err}"
        );
        // A flipped byte.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = files
            .load(
                &touched(&[("l.q", &[1])]),
                &HashMap::from([("l.q".to_string(), mask())]),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(files.write(1, "../x", &mask(), &[0.0; 6]).is_err());
    }
}
