//! Configuration errors. Every message names where the problem is (file and line for
//! syntax, dotted field path and offending value for semantics) so a user can fix the
//! file without reading code.

use std::fmt;
use std::path::PathBuf;

/// One invalid field: `pruning.tau = 1.7: must be in (0, 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `critic.rules.z_grad_cap`.
    pub field: String,
    /// The value as written (API-key-like values are redacted, never echoed).
    pub value: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.reason)
    }
}

/// Everything that can go wrong turning text into a validated [`crate::Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad TOML syntax, a wrong type, or an unknown field (`deny_unknown_fields`).
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        /// File path, `preset NAME`, or `<string>`.
        origin: String,
        /// 1-based line of the offending text (0 when the parser gave no position).
        line: usize,
        /// 1-based column.
        column: usize,
        message: String,
    },
    /// The document parsed but some values are out of range or inconsistent.
    #[error("{}invalid configuration:\n{}", prefix(origin), list(errors))]
    Invalid {
        origin: String,
        errors: Vec<FieldError>,
    },
    #[error("unknown preset `{name}` (known: {})", known.join(", "))]
    UnknownPreset {
        name: String,
        known: Vec<&'static str>,
    },
}

/// `origin: `, or nothing for a config that came from no file.
fn prefix(origin: &str) -> String {
    if origin.is_empty() {
        String::new()
    } else {
        format!("{origin}: ")
    }
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The field errors of an `Invalid` error (empty for other kinds).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Self::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }

    /// Turn a `toml` deserialisation error into one that names `origin`, line and column.
    pub(crate) fn from_toml(origin: &str, text: &str, err: &toml::de::Error) -> Self {
        let (line, column) = match err.span() {
            Some(span) => line_column(text, span.start),
            None => (0, 0),
        };
        Self::Parse {
            origin: origin.to_string(),
            line,
            column,
            message: err.message().trim().to_string(),
        }
    }

    /// Replace the origin (e.g. `<string>` → the file path) of parse/validation errors.
    pub(crate) fn with_origin(self, new_origin: &str) -> Self {
        match self {
            Self::Parse {
                line,
                column,
                message,
                ..
            } => Self::Parse {
                origin: new_origin.to_string(),
                line,
                column,
                message,
            },
            Self::Invalid { errors, .. } => Self::Invalid {
                origin: new_origin.to_string(),
                errors,
            },
            other => other,
        }
    }
}

/// 1-based (line, column) of byte offset `pos` in `text` (column counts characters).
fn line_column(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 6), (2, 1));
        assert_eq!(line_column(t, 9), (2, 4));
        assert_eq!(line_column(t, 999), (3, 1));
    }

    #[test]
    fn invalid_lists_every_field() {
        let e = ConfigError::Invalid {
            origin: "x.toml".into(),
            errors: vec![
                FieldError {
                    field: "a.b".into(),
                    value: "1".into(),
                    reason: "bad".into(),
                },
                FieldError {
                    field: "c".into(),
                    value: "2".into(),
                    reason: "worse".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "x.toml: invalid configuration:\n  a.b = 1: bad\n  c = 2: worse"
        );
    }
}
