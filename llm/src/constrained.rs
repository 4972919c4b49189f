//! Decoding constrained to the plan schema, for the in-process (`local`) backend.
//!
//! [`PlanGrammar`] is a character-level automaton that accepts exactly the plan
//! documents in compact canonical form:
//! `{"reasoning":"…","stop_pruning":true|false,"layer_decisions":[{"layer":"<name>","delta":0.dddd},…]}`
//! with layer names drawn from the request (each at most once) and δ written as `0.`
//! plus 1–4 digits inside [`DELTA_MIN`], [`DELTA_MAX`]. A prefix is rejected as soon as
//! no accepted document extends it, so a decoder that only takes tokens the automaton
//! accepts cannot produce an unparsable or invalid plan. The reasoning and the number of
//! decisions are capped, so every path reaches the end in a bounded number of characters.
//!
//! [`Vocab::pick`] applies it at token level: it samples from the model's distribution
//! restricted to tokens whose text keeps the output a valid prefix (Gumbel-max over the
//! allowed tokens, greedy at temperature 0).

use protocol::{DELTA_MAX, DELTA_MIN};

use crate::rng::unit;

/// δ is written with at most this many decimals.
const DELTA_DIGITS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Reasoning,
    Bool,
    List,
    Layer,
    Delta,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Inside a fixed literal, `pos` characters in, then `next`.
    Lit(&'static str, usize, After),
    Reasoning(usize),
    Bool(String),
    /// After `[`: an item or `]`.
    ListOpen,
    Layer(String),
    /// Decimals of δ after `0.`.
    Delta(String),
    /// After an item's `}`: `,` or `]`.
    AfterItem,
    /// After `]`: the closing `}`.
    Close,
    Done,
}

/// Where a partial document stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrammarState {
    phase: Phase,
    /// Indices of the layers already chosen.
    used: Vec<usize>,
}

impl GrammarState {
    /// The document is complete; decoding stops here.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
}

/// The plan schema for one request's layers.
#[derive(Debug, Clone)]
pub struct PlanGrammar {
    layers: Vec<String>,
    max_reasoning: usize,
    max_decisions: usize,
}

const OPEN: &str = "{\"reasoning\":\"";
const STOP: &str = ",\"stop_pruning\":";
const LIST: &str = ",\"layer_decisions\":[";
const ITEM: &str = "{\"layer\":\"";
const DELTA: &str = ",\"delta\":0.";

impl PlanGrammar {
    /// `max_reasoning` caps the reasoning in characters, `max_decisions` the list.
    pub fn new(layers: Vec<String>, max_reasoning: usize, max_decisions: usize) -> Self {
        Self {
            layers,
            max_reasoning,
            max_decisions,
        }
    }

    pub fn start(&self) -> GrammarState {
        GrammarState {
            phase: Phase::Lit(OPEN, 0, After::Reasoning),
            used: Vec::new(),
        }
    }

    /// The state after `text`, or `None` when no accepted document starts that way.
    pub fn feed(&self, state: &GrammarState, text: &str) -> Option<GrammarState> {
        let mut s = state.clone();
        for c in text.chars() {
            self.step(&mut s, c)?;
        }
        Some(s)
    }

    fn room(&self, s: &GrammarState) -> bool {
        s.used.len() < self.max_decisions.min(self.layers.len())
    }

    fn enter(&self, s: &mut GrammarState, next: After) {
        s.phase = match next {
            After::Reasoning => Phase::Reasoning(0),
            After::Bool => Phase::Bool(String::new()),
            After::List => Phase::ListOpen,
            After::Layer => Phase::Layer(String::new()),
            After::Delta => Phase::Delta(String::new()),
        };
    }

    fn step(&self, s: &mut GrammarState, c: char) -> Option<()> {
        match &mut s.phase {
            Phase::Lit(lit, pos, next) => {
                let (lit, next) = (*lit, *next);
                if lit[*pos..].chars().next()? != c {
                    return None;
                }
                *pos += c.len_utf8();
                if *pos == lit.len() {
                    self.enter(s, next);
                }
            }
            Phase::Reasoning(n) => match c {
                '"' => s.phase = Phase::Lit(STOP, 0, After::Bool),
                '\\' => return None,
                c if c.is_control() || *n >= self.max_reasoning => return None,
                _ => *n += 1,
            },
            Phase::Bool(b) => {
                b.push(c);
                if b == "true" || b == "false" {
                    s.phase = Phase::Lit(LIST, 0, After::List);
                } else if !("true".starts_with(b.as_str()) || "false".starts_with(b.as_str())) {
                    return None;
                }
            }
            Phase::ListOpen | Phase::AfterItem => {
                let first = s.phase == Phase::ListOpen;
                match c {
                    ']' => s.phase = Phase::Close,
                    '{' if first && self.room(s) => s.phase = Phase::Lit(ITEM, 1, After::Layer),
                    ',' if !first && self.room(s) => s.phase = Phase::Lit(ITEM, 0, After::Layer),
                    _ => return None,
                }
            }
            Phase::Layer(name) => {
                if c == '"' {
                    let i = self.free_layer(&s.used, |l| l == name.as_str())?;
                    s.used.push(i);
                    s.phase = Phase::Lit(DELTA, 0, After::Delta);
                } else {
                    name.push(c);
                    let prefix = name.as_str();
                    self.free_layer(&s.used, |l| l.starts_with(prefix))?;
                }
            }
            Phase::Delta(d) => {
                if c == '}' {
                    if !delta_complete(d) {
                        return None;
                    }
                    s.phase = Phase::AfterItem;
                } else if c.is_ascii_digit() && d.len() < DELTA_DIGITS {
                    d.push(c);
                    if !delta_reachable(d) {
                        return None;
                    }
                } else {
                    return None;
                }
            }
            Phase::Close if c == '}' => s.phase = Phase::Done,
            Phase::Close | Phase::Done => return None,
        }
        Some(())
    }

    /// First unused layer matching `f`.
    fn free_layer(&self, used: &[usize], f: impl Fn(&str) -> bool) -> Option<usize> {
        self.layers
            .iter()
            .enumerate()
            .find(|(i, l)| !used.contains(i) && f(l))
            .map(|(i, _)| i)
    }
}

/// Units of 10⁻⁴.
fn bounds() -> (u32, u32) {
    let unit = 10f64.powi(DELTA_DIGITS as i32);
    (
        (DELTA_MIN * unit).round() as u32,
        (DELTA_MAX * unit).round() as u32,
    )
}

/// Value of the decimals `d` in units of 10⁻⁴.
fn delta_units(d: &str) -> u32 {
    let v: u32 = d.parse().unwrap_or(0);
    v * 10u32.pow((DELTA_DIGITS - d.len()) as u32)
}

/// Some completion of `0.d` (more digits, up to the cap) lies in range.
fn delta_reachable(d: &str) -> bool {
    let (lo, hi) = bounds();
    let v = delta_units(d);
    let span = 10u32.pow((DELTA_DIGITS - d.len()) as u32);
    v <= hi && v + span > lo
}

fn delta_complete(d: &str) -> bool {
    let (lo, hi) = bounds();
    !d.is_empty() && (lo..=hi).contains(&delta_units(d))
}

/// Each token's text, `None` for tokens never allowed (special tokens, pieces that are
/// not valid UTF-8 on their own, the empty string).
#[derive(Debug, Clone)]
pub struct Vocab {
    pieces: Vec<Option<String>>,
}

impl Vocab {
    pub fn new(pieces: Vec<Option<String>>) -> Self {
        let pieces = pieces
            .into_iter()
            .map(|p| p.filter(|t| !t.is_empty() && !t.contains('\u{FFFD}')))
            .collect();
        Self { pieces }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The next token: a sample from softmax(`logits` / `temperature`) restricted to
    /// the tokens `grammar` allows after `state` (the most likely allowed token at
    /// temperature 0). `None` when no token is allowed, which for a vocabulary that has
    /// the single ASCII characters cannot happen before the document is complete.
    pub fn pick(
        &self,
        grammar: &PlanGrammar,
        state: &GrammarState,
        logits: &[f32],
        temperature: f64,
        rng: &mut u64,
    ) -> Option<(u32, GrammarState)> {
        let n = logits.len().min(self.pieces.len());
        // Gumbel-max: argmax of logit/T + Gumbel noise is a sample from the softmax, and
        // the first allowed index in that order is a sample from the masked softmax.
        let mut order: Vec<(f64, usize)> = (0..n)
            .filter(|&i| self.pieces[i].is_some() && logits[i].is_finite())
            .map(|i| {
                let l = f64::from(logits[i]);
                let score = if temperature > 0.0 {
                    let u = unit(rng).max(f64::MIN_POSITIVE);
                    l / temperature - (-u.ln()).ln()
                } else {
                    l
                };
                (score, i)
            })
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        order.into_iter().find_map(|(_, i)| {
            let text = self.pieces[i].as_deref()?;
            grammar.feed(state, text).map(|s| (i as u32, s))
        })
    }
}

#[cfg(test)]
#[path = "constrained_tests.rs"]
mod tests;
