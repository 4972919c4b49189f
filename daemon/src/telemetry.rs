//! Logs and traces of the daemon process.
//!
//! Logs go to stderr (`RUST_LOG`, default `warn,daemon=info`). Traces are exported only
//! when an endpoint is configured — `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (full URL),
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `[telemetry] otlp_endpoint` (base URL, `/v1/traces`
//! appended) — as OTLP/HTTP protobuf, the input Jaeger accepts natively on port 4318,
//! with `service.name = secateur`. Without an endpoint no exporter exists at all; with
//! an unreachable one, batches are dropped by the exporter's own thread and nothing
//! else notices.
//!
//! Only the spans of `actors` and `daemon` are exported (one trace per iteration, see
//! `actors::iteration`); HTTP client internals never are. Attributes are the fields the
//! spans declare (run id, iteration, counts, sparsity, PPL, latency): no config values,
//! so no secret can reach a trace.
//!
//! [`init`] must run before the tokio runtime starts: the OTLP exporter's blocking
//! HTTP client may not be created or dropped inside an async context.

use config::TelemetryConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The service name every exported span carries.
pub const SERVICE_NAME: &str = "secateur";

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Where spans go, when they go anywhere.
    pub endpoint: Option<String>,
}

impl Telemetry {
    /// Export what is still buffered and stop the exporter (call outside the runtime).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("trace export: {e}");
            }
        }
    }
}

/// The OTLP traces URL from the environment, else from the config; `None` = no export.
pub fn traces_endpoint(cfg: &TelemetryConfig) -> Option<String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(full) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Some(full);
    }
    let base = env("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| cfg.otlp_endpoint.clone())?;
    let base = base.trim_end_matches('/');
    Some(if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    })
}

/// Install the global subscriber: stderr logs, plus the OTLP layer when an endpoint is
/// configured.
pub fn init(cfg: &TelemetryConfig) -> Result<Telemetry, String> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,daemon=info")),
        );
    let endpoint = traces_endpoint(cfg);
    let Some(url) = endpoint.clone() else {
        tracing_subscriber::registry()
            .with(logs)
            .try_init()
            .map_err(|e| e.to_string())?;
        return Ok(Telemetry {
            provider: None,
            endpoint: None,
        });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(SERVICE_NAME)
                .build(),
        )
        .build();
    let ours = Targets::new()
        .with_target("actors", LevelFilter::INFO)
        .with_target("daemon", LevelFilter::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_filter(ours);
    tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(Telemetry {
        provider: Some(provider),
        endpoint,
    })
}
