//! The `local` backend on the real SmolLM2-135M-Instruct GGUF from `assets/`: it must
//! produce schema-valid plans through constrained decoding. Skipped, with the reason
//! printed, when the asset is absent (e.g. a checkout without the fetched models).

use std::path::PathBuf;

use config::PromptConfig;
use llm::local::LocalBackend;
use llm::PlannerBackend;
use protocol::{LayerProfile, PlanRequest};

fn asset(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models")
        .join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} is absent (run the asset fetch script)",
            p.display()
        );
        None
    }
}

/// Profiles shaped like the tiny test model's layers (two blocks, seven projections).
fn request() -> PlanRequest {
    let kinds = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    let mut profiles = Vec::new();
    for b in 0..2 {
        for (i, k) in kinds.iter().enumerate() {
            let x = (b * 7 + i) as f64;
            profiles.push(LayerProfile {
                name: format!("model.layers.{b}.{k}"),
                z_sens: (x * 0.37).sin() * 1.5,
                z_grad: (x * 0.61).cos(),
                sparsity: 0.0,
                params: if i < 4 { 4096 } else { 11008 },
            });
        }
    }
    PlanRequest::new(1, 20, profiles, 0.5, 12.0, 12.0, 0.15)
}

#[test]
#[ignore = "minutes on a shared 2-core CPU; run with `cargo test -p llm --test local_planner -- --ignored`"]
fn smollm2_produces_schema_valid_plans() {
    let Some(path) = asset("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let backend = LocalBackend::load(&path, 0.5, 1024, PromptConfig::default(), 7).unwrap();
    let req = request();
    let names: Vec<&str> = req.profiles.iter().map(|p| p.name.as_str()).collect();
    let out = backend.propose(&req, 2).unwrap();
    assert_eq!(out.len(), 2);
    for r in &out {
        assert_eq!(r.backend, "local");
        assert!(r.plan.validate(&names).is_empty(), "{}", r.raw_response);
        assert_eq!(protocol::Plan::from_json(&r.raw_response).unwrap(), r.plan);
    }
    let s = backend.last_stats();
    assert!(s.generated_tokens > 0 && s.prompt_tokens > 100, "{s:?}");
    eprintln!(
        "SmolLM2-135M local plan: {} prompt tokens, {} generated in {:.2} s ({:.1} tok/s); plan: {}",
        s.prompt_tokens,
        s.generated_tokens,
        s.seconds,
        s.generated_tokens as f64 / s.seconds,
        out[0].raw_response
    );
}
