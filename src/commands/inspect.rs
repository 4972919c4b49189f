//! `secateur inspect`: what a checkpoint contains, as a table or JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::common;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// GGUF file or HF directory (default: the fetched SmolLM2-135M-Instruct).
    model: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    path: PathBuf,
    format: model::SourceFormat,
    config: model::ModelConfig,
    parameters: usize,
    prunable_parameters: usize,
    prunable_layers: usize,
    source_dtypes: BTreeMap<String, usize>,
    tensors: Vec<model::TensorSummary>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let path = common::model_path(args.model)?;
    let ckpt = common::load(&path)?;
    let model = common::build(&ckpt, &candle_core::Device::Cpu)?;
    let layers = model.prunable_layers();
    let mut source_dtypes = BTreeMap::new();
    for dtype in ckpt.source_dtypes.values() {
        *source_dtypes.entry(dtype.clone()).or_insert(0) += 1;
    }
    let report = Report {
        path: ckpt.path.clone(),
        format: ckpt.format,
        config: ckpt.config.clone(),
        parameters: ckpt.parameter_count(),
        prunable_parameters: layers.iter().map(|l| l.out_features * l.in_features).sum(),
        prunable_layers: layers.len(),
        source_dtypes,
        tensors: ckpt.tensor_summary(),
    };
    if args.json {
        return common::print(&serde_json::to_string_pretty(&report)?);
    }
    common::print(&table(&report))
}

fn table(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let c = &report.config;
    let _ = writeln!(out, "model        {}", report.path.display());
    let _ = writeln!(out, "format       {:?}", report.format);
    let _ = writeln!(out, "architecture {}", c.architecture.name());
    let _ = writeln!(
        out,
        "shape        {} layers, hidden {}, intermediate {}, heads {} (kv {}), head_dim {}, vocab {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size
    );
    let _ = writeln!(
        out,
        "rope θ {}, rms eps {:e}, context {}, tied embeddings {}, qkv bias {}, qk norm {}",
        c.rope_theta,
        c.rms_norm_eps,
        c.max_position_embeddings,
        c.tie_word_embeddings,
        c.attention_bias,
        c.qk_norm
    );
    let _ = writeln!(
        out,
        "parameters   {} total, {} prunable in {} linear layers ({:.1} %)",
        report.parameters,
        report.prunable_parameters,
        report.prunable_layers,
        100.0 * report.prunable_parameters as f64 / report.parameters as f64
    );
    let dtypes: Vec<String> = report
        .source_dtypes
        .iter()
        .map(|(d, n)| format!("{d}×{n}"))
        .collect();
    let _ = writeln!(out, "source types {}", dtypes.join(", "));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<52} {:>16} {:>8} {:>12}",
        "tensor", "shape", "type", "params"
    );
    for t in &report.tensors {
        let shape = t
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×");
        let params: usize = t.shape.iter().product();
        let _ = writeln!(
            out,
            "{:<52} {:>16} {:>8} {:>12}",
            t.name, shape, t.source_dtype, params
        );
    }
    out
}
