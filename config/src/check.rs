//! Small validation vocabulary shared by the sections: each check records a
//! [`FieldError`] naming the dotted field and the value, and validation collects all of
//! them so one run of `validate()` reports every problem in the file.

use std::fmt::Display;

use crate::error::FieldError;

/// Collects field errors under a dotted prefix (`pruning`, `critic.rules`, …).
#[derive(Debug, Default)]
pub(crate) struct Checker {
    pub(crate) errors: Vec<FieldError>,
}

impl Checker {
    pub(crate) fn fail(&mut self, field: &str, value: impl Display, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        });
    }

    /// lo < v ≤ hi (and finite).
    pub(crate) fn open_closed(&mut self, field: &str, v: f64, lo: f64, hi: f64) {
        if !(v.is_finite() && v > lo && v <= hi) {
            self.fail(field, v, format!("must be in ({lo}, {hi}]"));
        }
    }

    /// lo < v < hi (and finite).
    pub(crate) fn open(&mut self, field: &str, v: f64, lo: f64, hi: f64) {
        if !(v.is_finite() && v > lo && v < hi) {
            self.fail(field, v, format!("must be in ({lo}, {hi})"));
        }
    }

    /// lo ≤ v ≤ hi (and finite).
    pub(crate) fn closed(&mut self, field: &str, v: f64, lo: f64, hi: f64) {
        if !(v.is_finite() && v >= lo && v <= hi) {
            self.fail(field, v, format!("must be in [{lo}, {hi}]"));
        }
    }

    /// lo ≤ v ≤ hi for integers.
    pub(crate) fn int_range(&mut self, field: &str, v: u64, lo: u64, hi: u64) {
        if v < lo || v > hi {
            self.fail(field, v, format!("must be an integer in [{lo}, {hi}]"));
        }
    }

    /// A path-like string must not be empty.
    pub(crate) fn non_empty(&mut self, field: &str, v: &str) {
        if v.trim().is_empty() {
            self.fail(field, "\"\"", "must not be empty");
        }
    }
}

/// Join a section prefix and a field name with a dot.
pub(crate) fn at(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}
