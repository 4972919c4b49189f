//! Turning a submitted document into a run config the daemon will execute: parse and
//! validate it like `secateur prune` does, confine every file it names to the
//! configured roots, and point its outputs at the daemon's data folder.
//!
//! Confinement: a path with a `..` component is refused outright (it is an escape
//! attempt or a mistake either way); the rest is resolved with `canonicalize`, which
//! follows symlinks, and must then lie under a canonicalized root. The config keeps the
//! canonical path, so the run reads exactly the file that was checked (until someone
//! with write access to the roots swaps it, which the roots' permissions must prevent).

use std::path::{Component, Path, PathBuf};

use config::{BackendConfig, BackendKind, Config, DaemonSection};

use crate::types::SubmitRequest;

/// The folders submitted runs may read, canonicalized once at start.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    pub models: Vec<PathBuf>,
    pub data: Vec<PathBuf>,
}

impl Roots {
    /// Canonicalize the configured roots; missing ones are skipped with a warning
    /// (nothing can lie under a folder that does not exist).
    pub fn new(models: &[PathBuf], data: &[PathBuf]) -> Self {
        let canon = |list: &[PathBuf], what: &str| -> Vec<PathBuf> {
            list.iter()
                .filter_map(|p| match p.canonicalize() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(root = %p.display(), %e, "{what} root unusable; ignored");
                        None
                    }
                })
                .collect()
        };
        Self {
            models: canon(models, "model"),
            data: canon(data, "data"),
        }
    }
}

/// A submission the daemon refuses, with one line per problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub error: String,
    pub details: Vec<String>,
}

impl Rejected {
    fn one(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            details: Vec::new(),
        }
    }
}

/// The validated config of a submission, with paths confined and canonical and
/// `run.runs_dir` set to `runs_dir`. Refused when it names an API key variable or a
/// base URL the daemon's allow-lists in `rules` do not allow (see [`crate::policy`]).
pub fn prepare(
    req: &SubmitRequest,
    roots: &Roots,
    rules: &DaemonSection,
    runs_dir: &Path,
) -> Result<Config, Rejected> {
    let mut cfg = match (&req.config_toml, &req.preset) {
        (Some(_), Some(_)) => {
            return Err(Rejected::one(
                "give either `config_toml` or `preset`, not both",
            ))
        }
        (Some(text), None) => Config::from_toml_named(text, "submitted config"),
        (None, Some(name)) => Config::preset(name),
        (None, None) => return Err(Rejected::one("give `config_toml` or `preset`")),
    }
    .map_err(config_rejected)?;
    check_policy(&cfg, rules)?;
    let mut problems = Vec::new();
    let mut confine =
        |field: &str, path: &mut PathBuf, under: &[PathBuf]| match confined(path, under) {
            Ok(c) => *path = c,
            Err(why) => problems.push(format!("{field} = \"{}\": {why}", path.display())),
        };
    confine("model.path", &mut cfg.model.path, &roots.models);
    confine("calibration.path", &mut cfg.calibration.path, &roots.data);
    confine(
        "evaluation.final.path",
        &mut cfg.evaluation.final_ppl.path,
        &roots.data,
    );
    if cfg.evaluation.probe.every > 0 {
        confine(
            "evaluation.probe.path",
            &mut cfg.evaluation.probe.path,
            &roots.data,
        );
    }
    // Local LLM backends read a GGUF file named in `model`.
    let mut local_models: Vec<(String, &mut BackendConfig)> =
        vec![("planner".into(), &mut cfg.planner)];
    if let Some(r) = cfg.critic.reflection.as_mut() {
        local_models.push(("critic.reflection".into(), r));
    }
    for (prefix, bc) in local_models {
        let mut check = |field: String, bc: &mut BackendConfig| {
            if bc.backend == BackendKind::Local {
                if let Some(m) = bc.model.as_mut() {
                    let mut p = PathBuf::from(m.as_str());
                    confine(&field, &mut p, &roots.models);
                    *m = p.to_string_lossy().into_owned();
                }
            }
        };
        if let Some(fb) = bc.fallback.as_deref_mut() {
            check(format!("{prefix}.fallback.model"), fb);
        }
        check(format!("{prefix}.model"), bc);
    }
    if !problems.is_empty() {
        return Err(Rejected {
            error: "configuration names files outside the daemon's allowed roots".into(),
            details: problems,
        });
    }
    cfg.run.runs_dir = runs_dir.to_path_buf();
    cfg.validate().map_err(config_rejected)?;
    Ok(cfg)
}

/// A config that does not parse or validate, each problem said once: field errors go
/// in `details` (one line each), not also in the message.
fn config_rejected(e: config::ConfigError) -> Rejected {
    let fields = e.field_errors();
    if fields.is_empty() {
        return Rejected::one(e.to_string());
    }
    Rejected {
        error: "invalid configuration".into(),
        details: fields.iter().map(|f| f.to_string()).collect(),
    }
}

/// [`crate::policy::check`] as a rejection naming every refused field.
pub fn check_policy(cfg: &Config, rules: &DaemonSection) -> Result<(), Rejected> {
    let refused = crate::policy::check(cfg, rules);
    if refused.is_empty() {
        return Ok(());
    }
    let fields: Vec<&str> = refused.iter().map(|r| r.field.as_str()).collect();
    Err(Rejected {
        error: format!(
            "configuration refused: {} would reach secrets or hosts this daemon does not allow",
            fields.join(", ")
        ),
        details: refused.iter().map(|r| r.to_string()).collect(),
    })
}

/// `path` resolved (symlinks followed) if it lies under one of `roots`.
pub fn confined(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, String> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("`..` is not allowed in paths".into());
    }
    let canon = path
        .canonicalize()
        .map_err(|e| format!("cannot be resolved ({})", e.kind()))?;
    if roots.iter().any(|r| canon.starts_with(r)) {
        Ok(canon)
    } else {
        Err(format!(
            "resolves outside the allowed roots ({})",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement_follows_symlinks_and_refuses_dotdot() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(outside.join("secret.txt"), "s").unwrap();
        let roots = vec![root.canonicalize().unwrap()];
        let ok = confined(&root.join("sub/a.txt"), &roots).unwrap();
        assert_eq!(ok, root.canonicalize().unwrap().join("sub/a.txt"));
        let e = confined(&root.join("sub/../../outside/secret.txt"), &roots).unwrap_err();
        assert!(e.contains(".."), "{e}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link.txt")).unwrap();
            let e = confined(&root.join("link.txt"), &roots).unwrap_err();
            assert!(e.contains("outside the allowed roots"), "{e}");
        }
        let e = confined(&root.join("missing.txt"), &roots).unwrap_err();
        assert!(e.contains("cannot be resolved"), "{e}");
        // A sibling whose name merely starts with the root's name is outside.
        let sib = dir.path().join("root2");
        std::fs::create_dir_all(&sib).unwrap();
        std::fs::write(sib.join("x"), "x").unwrap();
        assert!(confined(&sib.join("x"), &roots).is_err());
    }
}
