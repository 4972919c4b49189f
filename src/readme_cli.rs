//! The README cannot drift from the CLI: every `secateur …` line of its code blocks is
//! parsed by the real [`Cli`] (`try_parse_from`), in every form its usage notation
//! allows. Notation: `[…]` is optional (each group taken out and put in), ` | ` inside
//! a group separates alternatives, `a|b|c` in one word is a choice of values, UPPER
//! words are placeholders (numeric ones get a number), `# …` is a comment, and leading
//! `NAME=value` words are environment settings.

use clap::Parser;

use crate::Cli;

/// Placeholders whose flag takes a number.
const NUMERIC: &[(&str, &str)] = &[("K", "2"), ("S", "0.5")];

/// The `secateur …` lines inside the README's fenced code blocks, comments removed.
fn readme_lines(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let code = line.split(" #").next().unwrap_or("").trim();
        let words: Vec<&str> = code.split_whitespace().collect();
        let start = words.iter().position(|w| !is_env_setting(w));
        if let Some(i) = start.filter(|&i| words[i] == "secateur") {
            out.push(words[i..].join(" "));
        }
    }
    out
}

fn is_env_setting(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
    })
}

/// Every concrete command line a usage line stands for.
fn expand(line: &str) -> Vec<String> {
    if let (Some(open), Some(close)) = (line.find('['), line.find(']')) {
        if open < close {
            let (before, group, after) =
                (&line[..open], &line[open + 1..close], &line[close + 1..]);
            let mut out = expand(&format!("{before}{after}"));
            for alt in group.split(" | ") {
                out.extend(expand(&format!("{before}{}{after}", alt.trim())));
            }
            return out;
        }
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let choice = words
        .iter()
        .position(|w| w.contains('|') && !w.starts_with('"'));
    if let Some(i) = choice {
        return words[i]
            .split('|')
            .flat_map(|v| {
                let mut w = words.clone();
                w[i] = v;
                expand(&w.join(" "))
            })
            .collect();
    }
    vec![line.to_string()]
}

/// Shell words of a concrete line, numeric placeholders replaced.
fn argv(line: &str) -> Vec<String> {
    let words = shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
    words
        .into_iter()
        .map(|w| {
            NUMERIC
                .iter()
                .find(|(p, _)| *p == w)
                .map_or(w, |(_, v)| v.to_string())
        })
        .collect()
}

#[test]
fn every_readme_command_line_parses() {
    let readme = include_str!("../README.md");
    let lines = readme_lines(readme);
    assert!(
        lines.len() >= 25,
        "found only {} lines: {lines:#?}",
        lines.len()
    );
    let mut checked = 0;
    for line in &lines {
        for variant in expand(line) {
            let args = argv(&variant);
            if let Err(e) = Cli::try_parse_from(&args) {
                panic!("README line `{line}` as `{variant}` does not parse:\n{e}");
            }
            checked += 1;
        }
    }
    assert!(
        checked > lines.len(),
        "{checked} variants of {} lines",
        lines.len()
    );
}

#[test]
fn notation_expands_to_every_form() {
    assert_eq!(
        expand("secateur prune [--config FILE | --preset NAME]"),
        [
            "secateur prune ",
            "secateur prune --config FILE",
            "secateur prune --preset NAME"
        ]
    );
    assert_eq!(
        expand("secateur export X --format hf|sparse"),
        [
            "secateur export X --format hf",
            "secateur export X --format sparse"
        ]
    );
    assert_eq!(argv("secateur x \"a b\" K"), ["secateur", "x", "a b", "2"]);
    let lines =
        readme_lines("text\n```\nA_B=1 secateur daemon   # note\ncargo x\n```\nsecateur no\n");
    assert_eq!(lines, ["secateur daemon"]);
}

#[test]
fn generate_takes_an_optional_model_before_the_prompt() {
    use crate::Command;
    let prompt_of = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
        Ok(Command::Generate(g)) => (g.model, g.prompt),
        _ => panic!("{args:?} does not parse as generate"),
    };
    assert_eq!(
        prompt_of(&["secateur", "generate", "Hi?"]),
        (None, "Hi?".to_string())
    );
    assert_eq!(
        prompt_of(&["secateur", "generate", "m.gguf", "Hi?", "--max-tokens", "3"]),
        (Some("m.gguf".into()), "Hi?".to_string())
    );
    assert!(Cli::try_parse_from(["secateur", "generate"]).is_err());
    assert!(Cli::try_parse_from(["secateur", "generate", "a", "b", "c"]).is_err());
}
