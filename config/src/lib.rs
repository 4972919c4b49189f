//! Typed configuration: one TOML file → a validated runtime configuration, with
//! presets in `config/presets/*.toml`. Filled by the pruning-loop work; the
//! dependency direction (`config -> protocol` only) is already the real one.

pub use protocol;
