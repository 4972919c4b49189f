//! Where `secateur fetch` puts the offline assets (relative to the working directory):
//! the defaults of the config sections and of every command that takes a model or a
//! text, written down once.

/// The default target model (SmolLM2-135M-Instruct, Q4_1 GGUF).
pub const MODEL: &str = "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Folder of the fetched models (the daemon's default model root).
pub const MODELS_DIR: &str = "assets/models";
/// Folder of the fetched data sets (the daemon's default data root).
pub const DATA_DIR: &str = "assets/data";
/// Calibration texts: XSum news articles, field `document`.
pub const CALIBRATION: &str = "assets/data/xsum/test.jsonl";
pub const CALIBRATION_FIELD: &str = "document";
/// Perplexity texts: Wikipedia passages of QuAC, field `passage`.
pub const PPL_TEXT: &str = "assets/data/quac/test.jsonl";
pub const PPL_TEXT_FIELD: &str = "passage";
/// [`PPL_TEXT`] with its field, as a `PATH:FIELD` text spec.
pub const PPL_TEXT_SPEC: &str = "assets/data/quac/test.jsonl:passage";
/// Factual questions with aliases (NQ-open).
pub const QA: &str = "assets/data/nq-open/test.jsonl";

#[cfg(test)]
mod tests {
    #[test]
    fn the_spec_is_the_path_and_the_field() {
        assert_eq!(
            super::PPL_TEXT_SPEC,
            format!("{}:{}", super::PPL_TEXT, super::PPL_TEXT_FIELD)
        );
    }
}
