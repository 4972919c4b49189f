//! `secateur runs list|show|submit|cancel`: a client of a running daemon's HTTP API
//! (`daemon::client`). `--url` (or $SECATEUR_DAEMON_URL) says where; the bearer token,
//! when the daemon needs one, comes from $SECATEUR_DAEMON_TOKEN.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use daemon::client::Client;
use daemon::types::{RunDetail, RunView, SubmitRequest};

use super::common;

#[derive(clap::Args)]
pub struct RunsArgs {
    /// The daemon's address [default: $SECATEUR_DAEMON_URL, else http://127.0.0.1:7878].
    /// Accepted before or after the action (`runs list --url …`).
    #[arg(long, global = true)]
    url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Every run the daemon knows, oldest first.
    List,
    /// One run: status and iteration history.
    Show { id: String },
    /// Queue a run: a config file (as for `secateur prune --config`) or a preset. Paths
    /// in it are resolved on the daemon's machine and must lie under its allowed roots.
    Submit {
        #[arg(conflicts_with = "preset")]
        config: Option<PathBuf>,
        #[arg(long)]
        preset: Option<String>,
        /// Wait until the run ends and print its status.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a queued run now, or a running one after its current iteration.
    Cancel { id: String },
}

fn line(v: &RunView) -> String {
    let phase = v
        .phase
        .map(|p| format!("/{p:?}").to_lowercase())
        .unwrap_or_default();
    let ppl = v
        .ppl
        .map(|p| format!("{p:.3}"))
        .unwrap_or_else(|| "-".into());
    format!(
        "{:<22} {:<9} it {:>3} ({} stored)  sparsity {:>6.2}% / {:.0}%  PPL {ppl}{}",
        v.id,
        format!("{:?}{phase}", v.state).to_lowercase(),
        v.iteration,
        v.iterations,
        v.sparsity * 100.0,
        v.target_sparsity * 100.0,
        v.reason
            .as_deref()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default()
    )
}

fn detail(d: &RunDetail) -> Vec<String> {
    let mut out = vec![line(&d.run)];
    for h in &d.history {
        let o = &h.record.outcome;
        let backend = h.planner.first().map(|p| p.backend.as_str()).unwrap_or("-");
        let trace = h
            .trace_id
            .as_deref()
            .map(|t| format!("; trace {t}"))
            .unwrap_or_default();
        out.push(format!(
            "  iteration {:>3} {}: sparsity {:.4} -> {:.4}, PPL {:.4} -> {:.4}; planner {backend}{trace}",
            o.iteration,
            if o.rolled_back {
                "rolled back"
            } else {
                "committed"
            },
            o.sparsity_before,
            o.sparsity_after,
            o.ppl_before,
            o.ppl_after
        ));
    }
    out
}

/// The text of a config to submit, checked here first so a mistake names the file
/// (`bad.toml:3:1: …`) once, before anything is sent. The daemon checks it again (the
/// file paths in it, which resolve on its machine, and its allow-lists).
fn read_config(path: &std::path::Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    config::Config::from_toml_named(&text, &path.display().to_string())?;
    Ok(text)
}

pub fn run(args: RunsArgs) -> Result<()> {
    let token = std::env::var("SECATEUR_DAEMON_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var("SECATEUR_DAEMON_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:7878".into());
    let client = Client::new(&url, token)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        match args.action {
            Action::List => {
                let runs = client.list().await?;
                if args.json {
                    common::print(&serde_json::to_string_pretty(&runs)?)?;
                } else {
                    for r in &runs {
                        common::print(&line(r))?;
                    }
                }
            }
            Action::Show { id } => {
                let d = client.show(&id).await?;
                if args.json {
                    common::print(&serde_json::to_string_pretty(&d)?)?;
                } else {
                    for l in detail(&d) {
                        common::print(&l)?;
                    }
                }
            }
            Action::Cancel { id } => {
                let v = client.cancel(&id).await?;
                if args.json {
                    common::print(&serde_json::to_string_pretty(&v)?)?;
                } else {
                    common::print(&line(&v))?;
                }
            }
            Action::Submit {
                config,
                preset,
                wait,
            } => {
                let config_toml = config.as_deref().map(read_config).transpose()?;
                let preset = if config_toml.is_none() && preset.is_none() {
                    Some("default".to_string())
                } else {
                    preset
                };
                let mut v = client
                    .submit(&SubmitRequest {
                        config_toml,
                        preset,
                    })
                    .await?;
                if wait {
                    while !v.state.is_terminal() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        v = client.show(&v.id).await?.run;
                    }
                }
                if args.json {
                    common::print(&serde_json::to_string_pretty(&v)?)?;
                } else {
                    common::print(&line(&v))?;
                }
            }
        }
        anyhow::Ok(())
    })
}
