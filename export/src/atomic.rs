//! Write a directory all at once: fill a temporary sibling, then rename it into place.
//!
//! The temporary directory lives next to the destination (same filesystem, so the
//! rename is atomic) and is removed by `TempDir`'s drop on every error path, so a
//! failed export never leaves a partial directory under the destination's name.

use std::path::Path;

use crate::{ExportError, Result};

/// Run `fill` on a fresh temporary directory and move it to `out`. `out` must not exist
/// unless `force`, in which case it is replaced only after `fill` has succeeded.
pub(crate) fn write_dir<T>(
    out: &Path,
    force: bool,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let io = |path: &Path, source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    if out.exists() && !force {
        return Err(ExportError::Exists(out.to_path_buf()));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".secateur-export-")
        .tempdir_in(&parent)
        .map_err(|e| io(&parent, e))?;
    let value = fill(tmp.path())?;
    if out.exists() {
        // Only reachable with `force`: the new export is complete, replace the old one.
        if out.is_dir() {
            std::fs::remove_dir_all(out).map_err(|e| io(out, e))?;
        } else {
            std::fs::remove_file(out).map_err(|e| io(out, e))?;
        }
    }
    let kept = tmp.keep();
    if let Err(e) = std::fs::rename(&kept, out) {
        let _ = std::fs::remove_dir_all(&kept);
        return Err(io(out, e));
    }
    Ok(value)
}
