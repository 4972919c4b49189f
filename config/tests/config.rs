//! Config parsing, presets and validation errors.

use std::io::Write;

use config::{BackendKind, Config, ConfigError, Device, PaceRule, RuleAction};

/// Parse `text` expecting a validation error; return its messages.
fn invalid(text: &str) -> Vec<String> {
    match Config::from_toml_str(text) {
        Err(e @ ConfigError::Invalid { .. }) => {
            e.field_errors().iter().map(|f| f.to_string()).collect()
        }
        other => panic!("expected a validation error for {text:?}, got {other:?}"),
    }
}

#[test]
fn every_preset_parses_and_validates() {
    let names = Config::preset_names();
    assert_eq!(names, vec!["default", "paper-qwen3-8b"]);
    for name in names {
        let cfg = Config::preset(name).unwrap_or_else(|e| panic!("preset {name}: {e}"));
        cfg.validate().unwrap();
    }
}

#[test]
fn empty_file_is_the_default_preset() {
    let empty = Config::from_toml_str("").unwrap();
    assert_eq!(empty, Config::default());
    // The preset file spells out every default: the two must never drift apart.
    assert_eq!(Config::preset("default").unwrap(), empty);
    assert_eq!(
        empty.model.path.to_str(),
        Some("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    assert_eq!(empty.calibration.field.as_deref(), Some("document"));
    assert_eq!(
        empty.evaluation.final_ppl.path.to_str(),
        Some("assets/data/quac/test.jsonl")
    );
    assert_eq!(empty.evaluation.final_ppl.field.as_deref(), Some("passage"));
    assert_eq!(empty.pruning.target_sparsity, 0.5);
    assert_eq!(empty.pruning.tau, 0.15);
    assert_eq!(empty.pruning.gradient_every, 3);
    assert_eq!(empty.pruning.sensitivity_percentile, 10.0);
    assert_eq!(empty.pruning.candidates, 1);
    assert_eq!(empty.pruning.max_iterations, 40);
    assert_eq!(empty.calibration.activation_samples, 16);
    assert_eq!(empty.calibration.gradient_samples, 4);
    assert_eq!(empty.calibration.seq_len, 256);
    assert_eq!(empty.evaluation.ppl_samples, 16);
    assert_eq!(empty.planner.backend, BackendKind::Heuristic);
    assert_eq!(empty.model.device, Device::Auto);
}

#[test]
fn paper_preset_has_the_papers_settings() {
    let p = Config::preset("paper-qwen3-8b").unwrap();
    assert_eq!(p.calibration.samples, 128);
    assert_eq!(p.calibration.seq_len, 2048);
    assert_eq!(p.calibration.activation_samples, 16);
    assert_eq!(p.calibration.gradient_samples, 8);
    assert_eq!(p.evaluation.ppl_samples, 32);
    assert_eq!(p.pruning.tau, 0.15);
    assert_eq!(p.pruning.target_sparsity, 0.5);
    assert_eq!(p.planner.backend, BackendKind::Gemini);
    assert_eq!(p.planner.model.as_deref(), Some("gemini-3-flash-preview"));
    assert_eq!(p.planner.temperature, 0.5);
    assert_eq!(p.planner.api_key_env.as_deref(), Some("GEMINI_API_KEY"));
    assert_eq!(
        p.planner.fallback.as_ref().map(|f| f.backend),
        Some(BackendKind::Heuristic)
    );
    assert_eq!(p.critic.rules.overshoot, RuleAction::Off);
    assert_eq!(p.critic.rules.under_pace, PaceRule::Off);
    // Fields the preset does not list keep their defaults.
    assert_eq!(p.heuristic, config::HeuristicConfig::default());
}

#[test]
fn unknown_preset_lists_known_ones() {
    let e = Config::preset("nope").unwrap_err().to_string();
    assert_eq!(e, "unknown preset `nope` (known: default, paper-qwen3-8b)");
}

#[test]
fn partial_file_overrides_only_what_it_names() {
    let cfg =
        Config::from_toml_str("[pruning]\ntau = 0.2\n[critic.rules]\nz_grad_cap = 3.0\n").unwrap();
    assert_eq!(cfg.pruning.tau, 0.2);
    assert_eq!(cfg.pruning.target_sparsity, 0.5);
    assert_eq!(cfg.critic.rules.z_grad_cap, 3.0);
    assert_eq!(cfg.critic.rules.high_z_grad, RuleAction::Amend);
}

#[test]
fn each_invalid_value_names_field_and_value() {
    let cases: &[(&str, &str)] = &[
        ("[pruning]\ntau = 1.7", "pruning.tau = 1.7: must be in (0, 1]"),
        ("[pruning]\ntau = 0.0", "pruning.tau = 0: must be in (0, 1]"),
        (
            "[pruning]\ntarget_sparsity = 1.0",
            "pruning.target_sparsity = 1: must be in (0, 1)",
        ),
        (
            "[pruning]\nmax_iterations = 0",
            "pruning.max_iterations = 0: must be an integer in [1, 10000]",
        ),
        (
            "[pruning]\ngradient_every = 0",
            "pruning.gradient_every = 0: must be an integer in [1, 10000]",
        ),
        (
            "[pruning]\nsensitivity_percentile = 100.0",
            "pruning.sensitivity_percentile = 100: must be in (0, 100)",
        ),
        (
            "[pruning]\ncandidates = 0",
            "pruning.candidates = 0: must be an integer in [1, 16]",
        ),
        (
            "[calibration]\nactivation_samples = 20",
            "calibration.activation_samples = 20: must be an integer in [1, 16]",
        ),
        (
            "[calibration]\ngradient_samples = 17",
            "calibration.gradient_samples = 17: must be an integer in [0, 16]",
        ),
        (
            "[calibration.knowledge]\nshare = 0.6",
            "calibration.knowledge.share = 0.6: must be in [0, 0.5]",
        ),
        (
            "[calibration.knowledge]\nshare = 0.25\npath = \"\"",
            "calibration.knowledge.path = \"\": must not be empty",
        ),
        (
            "[calibration]\nseq_len = 1",
            "calibration.seq_len = 1: must be an integer in [2, 131072]",
        ),
        (
            "[calibration]\nfield = \"\"",
            "calibration.field = \"\": must not be empty (omit it to read a plain text file)",
        ),
        (
            "[evaluation]\nppl_samples = 0",
            "evaluation.ppl_samples = 0: must be an integer in [1, 100000]",
        ),
        (
            "[evaluation.final]\nwindow = 1",
            "evaluation.final.window = 1: must be an integer in [2, 131072]",
        ),
        ("[model]\npath = \"\"", "model.path = \"\": must not be empty"),
        ("[run]\nruns_dir = \"\"", "run.runs_dir = \"\": must not be empty"),
        (
            "[planner]\ntemperature = 3.0",
            "planner.temperature = 3: must be in [0, 2]",
        ),
        (
            "[planner]\nretries = 11",
            "planner.retries = 11: must be an integer in [0, 10]",
        ),
        (
            "[planner]\ntimeout_secs = 0",
            "planner.timeout_secs = 0: must be an integer in [1, 3600]",
        ),
        (
            "[planner]\nmax_tokens = 1",
            "planner.max_tokens = 1: must be an integer in [16, 1000000]",
        ),
        (
            "[planner]\nbackend = \"openai\"",
            "planner.model = (unset): required when planner.backend = \"openai\"",
        ),
        (
            "[planner]\nbackend = \"anthropic\"\nmodel = \"m\"",
            "planner.api_key_env = (unset): required when planner.backend = \"anthropic\": \
             name the environment variable holding the key",
        ),
        (
            "[planner]\nbackend = \"openai\"\nmodel = \"m\"\nbase_url = \"localhost:8080\"",
            "planner.base_url = \"localhost:8080\": must start with http:// or https://",
        ),
        (
            "[planner.fallback]\nbackend = \"heuristic\"\n[planner.fallback.fallback]\n",
            "planner.fallback.fallback = [table]: a fallback cannot have its own fallback",
        ),
        (
            "[planner.fallback]\nbackend = \"local\"",
            "planner.fallback.model = (unset): required when planner.fallback.backend = \"local\"",
        ),
        (
            "[evaluation.probe]\nevery = 2\nquestions = 0",
            "evaluation.probe.questions = 0: must be an integer in [1, 100000]",
        ),
        (
            "[heuristic]\ntilt = 1.5",
            "heuristic.tilt = 1.5: must be in [0, 0.9]",
        ),
        (
            "[heuristic]\nbase_step = 0.0",
            "heuristic.base_step = 0: must be in (0, 0.5]",
        ),
        (
            "[heuristic]\nrollback_factor = 1.5",
            "heuristic.rollback_factor = 1.5: must be in (0, 1]",
        ),
        (
            "[heuristic]\nbold_factor = 0.5",
            "heuristic.bold_factor = 0.5: must be in [1, 4]",
        ),
        (
            "[prompt]\nfeedback_window = 51",
            "prompt.feedback_window = 51: must be an integer in [0, 50]",
        ),
        (
            "[critic]\nmax_replans = 21",
            "critic.max_replans = 21: must be an integer in [0, 20]",
        ),
        (
            "[critic.rules]\nempty_plan = \"amend\"",
            "critic.rules.empty_plan = \"amend\": this rule can only refuse a plan: use \"off\" or \"veto\"",
        ),
        (
            "[critic.rules]\nmin_progress = \"amend\"",
            "critic.rules.min_progress = \"amend\": this rule can only refuse a plan: use \"off\" or \"veto\"",
        ),
        (
            "[critic.rules]\novershoot_tolerance = -0.1",
            "critic.rules.overshoot_tolerance = -0.1: must be in [0, 0.5]",
        ),
        (
            "[critic.rules]\nmin_gain = 0.6",
            "critic.rules.min_gain = 0.6: must be in [0, 0.5]",
        ),
        (
            "[critic.rules]\nz_grad_cap = nan",
            "critic.rules.z_grad_cap = NaN: must be a finite number",
        ),
        (
            "[critic.rules]\nlayer_sparsity_cap = 0.4",
            "critic.rules.layer_sparsity_cap = 0.4: must be >= pruning.target_sparsity (0.5), \
             or no plan could reach the target",
        ),
        (
            "[critic.assessment]\ngood_max_cost = 0.9",
            "critic.assessment.good_max_cost = 0.9: costs must satisfy excellent_max_cost (0.2) \
             <= good_max_cost <= fair_max_cost (0.8)",
        ),
        (
            "[critic.reflection]\nbackend = \"gemini\"\nmodel = \"g\"",
            "critic.reflection.api_key_env = (unset): required when critic.reflection.backend = \
             \"gemini\": name the environment variable holding the key",
        ),
    ];
    for (text, want) in cases {
        let got = invalid(text);
        assert_eq!(got, vec![want.to_string()], "for {text:?}");
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let got = invalid("[pruning]\ntau = 2.0\ntarget_sparsity = 0.0\n");
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("pruning.target_sparsity = 0"));
    assert!(got[1].starts_with("pruning.tau = 2"));
}

#[test]
fn api_key_pasted_as_env_name_is_rejected_without_echo() {
    let secret = "sk-live-0123456789abcdef";
    let text =
        format!("[planner]\nbackend = \"openai\"\nmodel = \"m\"\napi_key_env = \"{secret}\"");
    let err = Config::from_toml_str(&text).unwrap_err().to_string();
    assert!(!err.contains(secret), "{err}");
    assert!(
        err.contains("planner.api_key_env = <redacted, 24 chars>: must be the NAME"),
        "{err}"
    );
}

#[test]
fn unknown_field_is_rejected_with_its_line() {
    let err = Config::from_toml_str("[pruning]\ntau = 0.1\ntaux = 0.2\n").unwrap_err();
    match &err {
        ConfigError::Parse {
            origin,
            line,
            message,
            ..
        } => {
            assert_eq!(origin, "<string>");
            assert_eq!(*line, 3);
            assert!(message.contains("unknown field `taux`"), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    // Unknown sections too.
    let err = Config::from_toml_str("[prunning]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `prunning`"), "{err}");
    // And unknown enum values.
    let err = Config::from_toml_str("[planner]\nbackend = \"gpt\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("<string>:2:"), "{err}");
    assert!(err.contains("gpt"), "{err}");
}

#[test]
fn load_names_the_file_for_syntax_and_validation_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let mut f = std::fs::File::create(&bad).unwrap();
    writeln!(f, "[pruning]\ntarget_sparsity = 0.5\ntau = = 0.1").unwrap();
    let err = Config::load(&bad).unwrap_err();
    match &err {
        ConfigError::Parse { origin, line, .. } => {
            assert_eq!(origin, &bad.display().to_string());
            assert_eq!(*line, 3);
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(err
        .to_string()
        .starts_with(&format!("{}:3:", bad.display())));

    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[pruning]\ntau = 1.7\n").unwrap();
    let err = Config::load(&invalid).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: invalid configuration:\n  pruning.tau = 1.7: must be in (0, 1]",
            invalid.display()
        )
    );

    let missing = dir.path().join("missing.toml");
    let err = Config::load(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot read config file {}", missing.display())),
        "{err}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[pruning]\ncandidates = 3\n").unwrap();
    assert_eq!(Config::load(&good).unwrap().pruning.candidates, 3);
}

#[test]
fn serialised_config_round_trips() {
    for name in Config::preset_names() {
        let cfg = Config::preset(name).unwrap();
        let text = cfg.to_toml_string();
        assert_eq!(Config::from_toml_str(&text).unwrap(), cfg, "preset {name}");
    }
}

#[test]
fn plan_constraints_follow_rule_switches() {
    let mut rules = Config::default().critic.rules;
    let c = rules.plan_constraints(&[], 1);
    assert_eq!(c.max_layer_sparsity, 0.9);
    assert_eq!(c.max_z_grad, Some(2.5));
    assert_eq!(c.min_gain, 0.001);
    rules.max_layer_sparsity = RuleAction::Off;
    rules.high_z_grad = RuleAction::Off;
    rules.min_progress = RuleAction::Off;
    let c = rules.plan_constraints(&[], 1);
    assert_eq!(c.max_layer_sparsity, 1.0);
    assert_eq!(c.max_z_grad, None);
    assert_eq!(c.min_gain, 0.0);
}

#[test]
fn under_pace_auto_amends_for_llm_planners_only() {
    assert_eq!(Config::default().critic.rules.under_pace, PaceRule::Auto);
    let auto = PaceRule::Auto;
    assert_eq!(auto.resolve(BackendKind::Heuristic), PaceRule::Off);
    for llm in [
        BackendKind::Local,
        BackendKind::Openai,
        BackendKind::Gemini,
        BackendKind::Anthropic,
    ] {
        assert_eq!(auto.resolve(llm), PaceRule::Amend, "{llm:?}");
        // An explicit choice is kept whatever plans.
        assert_eq!(PaceRule::Off.resolve(llm), PaceRule::Off);
    }
    assert_eq!(
        PaceRule::Amend.resolve(BackendKind::Heuristic),
        PaceRule::Amend
    );
    let off = Config::from_toml_str("[critic.rules]\nunder_pace = \"off\"").unwrap();
    assert_eq!(off.critic.rules.under_pace, PaceRule::Off);
    let err = Config::from_toml_str("[critic.rules]\nunder_pace = \"veto\"").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(":2:14:") && text.contains("unknown variant `veto`"),
        "{text}"
    );
}

#[test]
fn an_unknown_probe_style_is_a_parse_error_with_its_position() {
    let err = Config::from_toml_str("[evaluation.probe]\nstyle = \"fancy\"").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(":2:9:") && text.contains("unknown variant `fancy`"),
        "{text}"
    );
}

#[test]
fn device_strings_parse_and_print_back() {
    for (text, device) in [
        ("auto", Device::Auto),
        ("cpu", Device::Cpu),
        ("cuda", Device::Cuda(0)),
        ("cuda:0", Device::Cuda(0)),
        ("cuda:3", Device::Cuda(3)),
    ] {
        assert_eq!(text.parse::<Device>(), Ok(device), "{text}");
    }
    assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    for bad in [
        "gpu", "CUDA", "cuda:", "cuda:x", "cuda:+1", "cuda:-1", "cuda1", "",
    ] {
        let err = bad.parse::<Device>().unwrap_err();
        assert!(
            err.contains("expected auto, cpu, cuda or cuda:N"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn model_device_in_toml_round_trips_and_a_bad_one_names_the_field() {
    let cfg = Config::from_toml_str("[model]\ndevice = \"cuda:1\"\n").unwrap();
    assert_eq!(cfg.model.device, Device::Cuda(1));
    let again = Config::from_toml_str(&cfg.to_toml_string()).unwrap();
    assert_eq!(again.model.device, Device::Cuda(1));
    assert_eq!(
        Config::from_toml_str("[model]\ndevice = \"cuda\"\n")
            .unwrap()
            .model
            .device,
        Device::Cuda(0)
    );
    let err = Config::from_toml_str("[model]\ndevice = \"gpu\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("<string>:2:"), "{err}");
    assert!(err.contains("model.device: `gpu` is not a device"), "{err}");
}

#[test]
fn errors_name_their_origin_once_or_none() {
    // Built in code (e.g. from command-line flags): no origin to name.
    let mut c = Config::default();
    c.pruning.tau = 1.7;
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.starts_with("invalid configuration:\n  pruning.tau = 1.7"),
        "{e}"
    );
    // A named document: its name, once, instead of `<string>`.
    let e = Config::from_toml_named("[pruning]\ntau = 1.7\n", "run.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("run.toml: invalid configuration:\n"), "{e}");
    let e = Config::from_toml_named("[pruning\n", "run.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("run.toml:1:"), "{e}");
    assert_eq!(e.matches("run.toml").count(), 1, "{e}");
}
