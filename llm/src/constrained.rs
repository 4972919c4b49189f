//! Decoding constrained to the plan schema, for the in-process (`local`) backend.
//!
//! [`PlanGrammar`] is a character-level automaton that accepts exactly the plan
//! documents in compact canonical form:
//! `{"reasoning":"…","stop_pruning":true|false,"layer_decisions":[{"layer":"<name>","delta":0.dddd},…]}`
//! with layer names drawn from the request (each at most once), δ written as `0.` plus
//! 1–4 digits inside [`DELTA_MIN`], [`DELTA_MAX`], and at least one decision unless
//! `stop_pruning` is true (an empty plan that does not stop is always vetoed).
//! [`PlanGrammar::without_stop`] also rules out `true`: small local models emit it at
//! random, and with the critic's premature-stop rule off by default that would end a
//! run at its first iteration. A prefix is rejected as soon as
//! no accepted document extends it, so a decoder that only takes tokens the automaton
//! accepts cannot produce an unparsable or invalid plan. The reasoning and the number of
//! decisions are capped, so every path reaches the end in a bounded number of characters.
//! [`PlanGrammar::with_min_gain`] also keeps the decision list open until the plan
//! gains the critic's minimum of global sparsity: a small model closed it after one
//! layer at δ 0.0125, three such plans in a row were vetoed, and the run ended.
//!
//! [`crate::vocab::Vocab::pick`] applies it at token level: it samples from the model's
//! distribution restricted to tokens whose text keeps the output a valid prefix.

use protocol::{DELTA_MAX, DELTA_MIN};

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
    /// The plan says `stop_pruning: true`.
    stop: bool,
    /// Σ params·δ of the completed decisions, δ in units of 10⁻⁴ (capped at the
    /// layer's room), when the grammar has a gain floor.
    gained: u64,
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
    allow_stop: bool,
    /// Per layer: parameters and the most of δ that counts, in δ units (empty: no floor).
    weights: Vec<(u64, u64)>,
    /// The gain floor, in the units of [`GrammarState::gained`].
    need: u64,
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
            allow_stop: true,
            weights: Vec::new(),
            need: 0,
        }
    }

    /// The same grammar, closing the decision list only once the plan raises global
    /// sparsity by at least `min_gain` (parameter-weighted, as the critic's
    /// minimum-progress rule computes it), or when no decision can be added. `layers`
    /// gives each layer's (parameters, room) in the order of the names, room being the
    /// largest δ that counts (what is left below the layer sparsity cap, where the
    /// critic lowers larger ones); `total` is the parameter count of the whole model.
    pub fn with_min_gain(mut self, layers: &[(u64, f64)], total: u64, min_gain: f64) -> Self {
        let unit = 10f64.powi(DELTA_DIGITS as i32);
        self.weights = layers
            .iter()
            .map(|&(p, room)| (p, (room.max(0.0) * unit + 1e-6).floor() as u64))
            .collect();
        self.need = (min_gain.max(0.0) * total as f64 * unit - 1e-6).ceil() as u64;
        self
    }

    /// Whether the decision list may end here.
    fn may_close(&self, s: &GrammarState) -> bool {
        s.stop || s.gained >= self.need || !self.room(s)
    }

    /// The same grammar with `stop_pruning` fixed to `false`.
    pub fn without_stop(mut self) -> Self {
        self.allow_stop = false;
        self
    }

    pub fn start(&self) -> GrammarState {
        GrammarState {
            phase: Phase::Lit(OPEN, 0, After::Reasoning),
            used: Vec::new(),
            stop: false,
            gained: 0,
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

    /// The values `stop_pruning` may take: `false` needs a layer to decide on, `true`
    /// is ruled out by [`PlanGrammar::without_stop`] unless nothing else is possible.
    fn bools(&self) -> impl Iterator<Item = &'static str> {
        let go = self.max_decisions.min(self.layers.len()) > 0;
        let stop = self.allow_stop || !go;
        [("true", stop), ("false", go)]
            .into_iter()
            .filter_map(|(w, ok)| ok.then_some(w))
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

    /// Advance `s` by one character; `None` (with `s` left half-updated, so callers
    /// step a copy) when no accepted document continues that way.
    pub(crate) fn step(&self, s: &mut GrammarState, c: char) -> Option<()> {
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
                if !self.bools().any(|w| w.starts_with(b.as_str())) {
                    return None;
                }
                if b == "true" || b == "false" {
                    s.stop = b == "true";
                    s.phase = Phase::Lit(LIST, 0, After::List);
                }
            }
            Phase::ListOpen | Phase::AfterItem => {
                let first = s.phase == Phase::ListOpen;
                match c {
                    ']' if (!first || s.stop) && self.may_close(s) => s.phase = Phase::Close,
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
                    let units = u64::from(delta_units(d));
                    if let Some(&(params, room)) = s.used.last().and_then(|&i| self.weights.get(i))
                    {
                        s.gained += params * units.min(room);
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

    /// The text every accepted document continues with from `state`, as far as it is
    /// determined, and the state after it: the rest of a literal, the part of a layer
    /// name all still-possible layers share, the closing quote of a name no other layer
    /// extends, `}` after four decimals, `]` when the list is full. Empty where the
    /// model has a choice. A decoder can append this text without asking the model
    /// (one batched forward pass instead of a step per token).
    pub fn forced(&self, state: &GrammarState) -> (String, GrammarState) {
        let mut s = state.clone();
        let mut out = String::new();
        while let Some(c) = self.only_next(&s) {
            let mut next = s.clone();
            if self.step(&mut next, c).is_none() {
                break;
            }
            s = next;
            out.push(c);
        }
        (out, s)
    }

    /// The one character that may come next, if there is exactly one.
    fn only_next(&self, s: &GrammarState) -> Option<char> {
        match &s.phase {
            Phase::Lit(lit, pos, _) => lit[*pos..].chars().next(),
            Phase::Bool(b) => {
                let mut words = self.bools().filter(|w| w.starts_with(b.as_str()));
                match (words.next(), words.next()) {
                    (Some(w), None) => w[b.len()..].chars().next(),
                    _ => None,
                }
            }
            Phase::ListOpen if !s.stop => Some('{'),
            Phase::ListOpen | Phase::AfterItem if !self.room(s) => Some(']'),
            Phase::AfterItem if !self.may_close(s) => Some(','),
            Phase::Layer(name) => {
                let mut only = None;
                for (i, l) in self.layers.iter().enumerate() {
                    if s.used.contains(&i) || !l.starts_with(name.as_str()) {
                        continue;
                    }
                    let c = l[name.len()..].chars().next().unwrap_or('"');
                    match only {
                        None => only = Some(c),
                        Some(o) if o != c => return None,
                        Some(_) => {}
                    }
                }
                only
            }
            Phase::Delta(d) if d.len() == DELTA_DIGITS => Some('}'),
            Phase::Close => Some('}'),
            _ => None,
        }
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

#[cfg(test)]
#[path = "constrained_tests.rs"]
mod tests;
