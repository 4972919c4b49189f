//! Text sources for perplexity and calibration: plain text files and JSONL files
//! with a named string field (`quac/test.jsonl:passage`, `xsum/test.jsonl:document`).
//!
//! Errors name the file, the line and the field, and an empty source is an error:
//! a perplexity over zero tokens would be a silent NaN.

use std::path::{Path, PathBuf};

use crate::{ModelError, Result};

/// Where texts come from: a whole plain-text file, or one field of each JSONL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSource {
    pub path: PathBuf,
    /// JSONL field holding the text; `None` reads the file as one plain text.
    pub field: Option<String>,
}

impl TextSource {
    /// Parse `PATH` or `PATH:FIELD`. A `.jsonl` path without a field defaults to `text`.
    pub fn parse(spec: &str) -> Self {
        // Split on the last ':' only when what follows looks like a field name, so
        // Windows-style or odd paths containing ':' still work as plain paths.
        if let Some((path, field)) = spec.rsplit_once(':') {
            let is_field = !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
            if is_field && !path.is_empty() && !field.contains('/') {
                return Self {
                    path: PathBuf::from(path),
                    field: Some(field.to_string()),
                };
            }
        }
        let path = PathBuf::from(spec);
        let field = is_jsonl(&path).then(|| "text".to_string());
        Self { path, field }
    }

    /// Read every text, in file order. At most `limit` texts when given.
    pub fn read(&self, limit: Option<usize>) -> Result<Vec<String>> {
        let bytes = std::fs::read(&self.path).map_err(|source| ModelError::Io {
            path: self.path.clone(),
            source,
        })?;
        let content = String::from_utf8(bytes).map_err(|e| ModelError::BadText {
            path: self.path.clone(),
            reason: format!(
                "not valid UTF-8 (first bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        let texts = match &self.field {
            None => vec![content],
            Some(field) => read_jsonl_field(&self.path, &content, field, limit)?,
        };
        let texts: Vec<String> = texts
            .into_iter()
            .filter(|t| !t.trim().is_empty())
            .take(limit.unwrap_or(usize::MAX))
            .collect();
        if texts.is_empty() {
            return Err(ModelError::BadText {
                path: self.path.clone(),
                reason: match &self.field {
                    None => "file is empty (no text to evaluate)".into(),
                    Some(f) => format!("no non-empty `{f}` values found"),
                },
            });
        }
        Ok(texts)
    }
}

fn is_jsonl(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
}

fn read_jsonl_field(
    path: &Path,
    content: &str,
    field: &str,
    limit: Option<usize>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| ModelError::BadText {
                path: path.to_path_buf(),
                reason: format!("line {}: not valid JSON: {e}", i + 1),
            })?;
        match value.get(field) {
            Some(serde_json::Value::String(s)) => out.push(s.clone()),
            Some(other) => {
                return Err(ModelError::BadText {
                    path: path.to_path_buf(),
                    reason: format!(
                        "line {}: field `{field}` is not a string (found {})",
                        i + 1,
                        json_kind(other)
                    ),
                })
            }
            None => {
                return Err(ModelError::BadText {
                    path: path.to_path_buf(),
                    reason: format!("line {}: no field `{field}`", i + 1),
                })
            }
        }
    }
    Ok(out)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn parses_specs() {
        assert_eq!(
            TextSource::parse("a/b.jsonl:passage"),
            TextSource {
                path: "a/b.jsonl".into(),
                field: Some("passage".into())
            }
        );
        assert_eq!(
            TextSource::parse("a/b.jsonl").field.as_deref(),
            Some("text")
        );
        assert_eq!(TextSource::parse("a/wiki.txt").field, None);
        assert_eq!(TextSource::parse("c:/x/wiki.txt").field, None);
    }

    #[test]
    fn reads_plain_and_jsonl() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "t.txt", "hello world\n".as_bytes());
        assert_eq!(
            TextSource::parse(p.to_str().unwrap()).read(None).unwrap(),
            vec!["hello world\n"]
        );
        let j = write(
            &d,
            "t.jsonl",
            b"{\"passage\":\"one\"}\n\n{\"passage\":\"two\"}\n{\"passage\":\"three\"}\n",
        );
        let src = TextSource::parse(&format!("{}:passage", j.display()));
        assert_eq!(src.read(None).unwrap(), vec!["one", "two", "three"]);
        assert_eq!(src.read(Some(2)).unwrap(), vec!["one", "two"]);
    }

    #[test]
    fn bad_inputs_name_file_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let empty = write(&d, "empty.txt", b"  \n");
        let err = TextSource::parse(empty.to_str().unwrap())
            .read(None)
            .unwrap_err();
        assert!(err.to_string().contains("empty.txt") && err.to_string().contains("empty"));

        let bin = write(&d, "bin.txt", &[b'o', b'k', 0xff, 0xfe]);
        let err = TextSource::parse(bin.to_str().unwrap())
            .read(None)
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("not valid UTF-8 (first bad byte at offset 2)"));

        let j = write(&d, "x.jsonl", b"{\"passage\":\"a\"}\n{\"other\":1}\n");
        let err = TextSource::parse(&format!("{}:passage", j.display()))
            .read(None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.jsonl") && err.contains("line 2") && err.contains("`passage`"));

        let j = write(&d, "y.jsonl", b"{\"passage\":3}\n");
        let err = TextSource::parse(&format!("{}:passage", j.display()))
            .read(None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a string (found a number)"), "{err}");

        let j = write(&d, "z.jsonl", b"{not json\n");
        let err = TextSource::parse(&format!("{}:passage", j.display()))
            .read(None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: not valid JSON"), "{err}");

        let missing = d.path().join("missing.txt");
        let err = TextSource::parse(missing.to_str().unwrap())
            .read(None)
            .unwrap_err();
        assert!(err.to_string().contains("missing.txt"));
    }
}
