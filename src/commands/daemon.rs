//! `secateur daemon`: the actor system as a long-lived service with an HTTP JSON API
//! (see the `daemon` crate). This file only reads arguments and the daemon config,
//! sets up logs and traces, binds the listener and turns SIGTERM / Ctrl-C into the
//! daemon's graceful shutdown.

use std::path::PathBuf;

use anyhow::{Context, Result};
use config::DaemonConfig;

#[derive(clap::Args)]
pub struct DaemonArgs {
    /// Address to listen on (overrides `daemon.listen`; default 127.0.0.1:7878). A
    /// non-loopback address requires a bearer token in $SECATEUR_DAEMON_TOKEN.
    #[arg(long)]
    listen: Option<String>,
    /// Folder of the daemon's state (overrides `daemon.data_dir`; default ./daemon).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Daemon config file ([daemon], [telemetry]); every field optional.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn load(args: &DaemonArgs) -> Result<DaemonConfig> {
    let mut cfg = match &args.config {
        Some(p) => DaemonConfig::load(p)?,
        None => DaemonConfig::default(),
    };
    if let Some(l) = &args.listen {
        cfg.daemon.listen = l.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.daemon.data_dir = d.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

/// SIGTERM or Ctrl-C, whichever comes first.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn run(args: DaemonArgs) -> Result<()> {
    let cfg = load(&args)?;
    // Before the runtime: the OTLP exporter's blocking client must not live in it.
    let telemetry = daemon::telemetry::init(&cfg.telemetry).map_err(anyhow::Error::msg)?;
    let hooks = daemon::Hooks {
        // The kill-and-restart tests' fault points; none in normal use.
        faults: actors::Faults::from_env(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(async {
        let addr: std::net::SocketAddr = cfg.daemon.listen.parse()?;
        let token = daemon::token_for(&cfg, addr)?;
        // Lock the data folder before binding: a refused start never says "listening".
        let opened = daemon::Daemon::open(cfg, token, hooks).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        // Tests and scripts read this line for the port when they listen on :0.
        eprintln!("secateur daemon listening on http://{bound}");
        if let Some(e) = &telemetry.endpoint {
            eprintln!("exporting traces to {e}");
        }
        opened.serve(listener, shutdown_signal()).await?;
        anyhow::Ok(())
    });
    // Abandoned iterations' tensor work must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    telemetry.shutdown();
    result
}
