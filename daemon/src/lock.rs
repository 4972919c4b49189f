//! One daemon per data folder: two daemons sharing `registry/` would run the same
//! queued run twice. The lock is an advisory `flock` on `<data_dir>/daemon.lock`, which
//! the kernel releases when the process dies — a SIGKILLed daemon never leaves a stale
//! lock behind, so a restart on the same folder just works.

use std::fs::File;
use std::path::Path;

/// Held for the daemon's lifetime; released on drop (or process death).
pub struct DataDirLock {
    _file: File,
}

#[cfg(unix)]
mod sys {
    use std::os::fd::AsRawFd;

    extern "C" {
        fn flock(fd: i32, operation: i32) -> i32;
    }
    const LOCK_EX: i32 = 2;
    const LOCK_NB: i32 = 4;

    /// Try to take an exclusive lock without blocking.
    pub fn try_lock(f: &std::fs::File) -> bool {
        // SAFETY: flock only reads the descriptor, which `f` keeps open for the call.
        unsafe { flock(f.as_raw_fd(), LOCK_EX | LOCK_NB) == 0 }
    }
}

#[cfg(not(unix))]
mod sys {
    /// No advisory lock off Unix: a second daemon on the same folder is not detected.
    pub fn try_lock(_f: &std::fs::File) -> bool {
        true
    }
}

impl DataDirLock {
    /// Lock `dir` (which must exist) or say which file is held.
    pub fn acquire(dir: &Path) -> Result<Self, String> {
        let path = dir.join("daemon.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !sys::try_lock(&file) {
            return Err(format!(
                "{} is locked: another daemon serves this data folder",
                path.display()
            ));
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        if cfg!(unix) {
            let e = DataDirLock::acquire(dir.path()).err().unwrap();
            assert!(e.contains("another daemon"), "{e}");
        }
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
