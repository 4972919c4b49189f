//! One HTTP call with the robustness every hosted backend shares: a per-request
//! timeout (a timed-out request is not sent again), retries with exponential backoff
//! and jitter on 429, 5xx and connection failures, and `Retry-After` honoured when the
//! server sends it.
//!
//! Kept apart from the wire formats so the three APIs cannot drift in how they retry,
//! and so the delay arithmetic is a pure function that tests can check without waiting.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::StatusCode;

use crate::rng::unit;

/// An API key. Never printed: `Debug` shows only whether one is set, so a key cannot
/// reach logs, traces, sled or reports through a `{:?}` of a config or backend.
#[derive(Clone, Default)]
pub struct Secret(Option<String>);

impl Secret {
    pub fn new(key: Option<String>) -> Self {
        Self(key.filter(|k| !k.is_empty()))
    }

    /// The key, for building the one request header that needs it.
    pub(crate) fn expose(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// `text` with every occurrence of the key replaced, for error messages that quote
    /// a server's answer (some services echo the key they rejected).
    pub fn scrub(&self, text: &str) -> String {
        match &self.0 {
            Some(k) if k.len() >= 4 => text.replace(k.as_str(), "<redacted>"),
            _ => text.to_string(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Secret(<redacted>)"),
            None => f.write_str("Secret(None)"),
        }
    }
}

/// How to wait between attempts. `sleep` is injectable so tests can record the delays
/// the policy asks for (e.g. a `Retry-After` of 7 s) without spending them.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub retries: u32,
    /// Delay before the first retry; doubles each time.
    pub base: Duration,
    /// No delay exceeds this, not even a server's `Retry-After`, so a misbehaving
    /// server cannot park the run for hours.
    pub cap: Duration,
    pub sleep: Arc<dyn Fn(Duration) + Send + Sync>,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("retries", &self.retries)
            .field("base", &self.base)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// Production policy: 1 s, 2 s, 4 s … (± jitter), capped at 60 s.
    pub fn standard(retries: u32) -> Self {
        Self {
            retries,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            sleep: Arc::new(std::thread::sleep),
        }
    }
}

/// Delay before retry number `attempt` (0-based). A server's `Retry-After` wins (it
/// knows its rate window); otherwise `base · 2^attempt` scaled by a jitter factor in
/// [0.5, 1) from `u ∈ [0, 1)`, so K candidates retried together do not stampede.
pub fn retry_delay(
    attempt: u32,
    retry_after: Option<Duration>,
    base: Duration,
    cap: Duration,
    u: f64,
) -> Duration {
    let d = match retry_after {
        Some(d) => d,
        None => base
            .saturating_mul(1u32 << attempt.min(20))
            .mul_f64(0.5 + 0.5 * u.clamp(0.0, 1.0)),
    };
    d.min(cap)
}

/// `Retry-After` as delta-seconds. The HTTP-date form is ignored (exponential backoff
/// applies instead): parsing dates would need a clock agreement we cannot check.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Why a call failed after its retries.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// Every attempt failed with a retryable error; the last one is described.
    Exhausted { attempts: u32, last: String },
    /// A 4xx answer other than 401, 403 and 429: the request itself was refused, and
    /// the same request would be refused again. The whole body (key scrubbed) is kept
    /// so the caller can tell what was refused (e.g. the response format, see
    /// [`super::Wire::refuses_schema`]); messages quote an excerpt.
    Refused { status: u16, body: String },
    /// No answer within the timeout. Not retried: the server may still be generating
    /// the answer (a CPU-hosted model takes minutes), and a second request would compete
    /// with the first one or queue behind it on a single-slot server.
    TimedOut { secs: f64, message: String },
    /// A failure retrying cannot fix (authentication, a body that is not JSON).
    Fatal(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted { attempts, last } => {
                write!(f, "gave up after {attempts} attempt(s): {last}")
            }
            Self::Refused { status, body } => {
                let status = StatusCode::from_u16(*status)
                    .map_or_else(|_| status.to_string(), |s| s.to_string());
                write!(f, "HTTP {status}: {}", excerpt(body))
            }
            Self::TimedOut { secs, message } => write!(
                f,
                "{message} (no answer within {} s; not sent again, the server may \
still be working on it). A model served on a CPU needs minutes per plan: raise \
`[planner] timeout_secs` (a 0.5B model on 2 cores took up to 812 s for a 30-block \
model's full layer table), or list fewer layers with `[prompt] listed_layers`",
                seconds_text(*secs)
            ),
            Self::Fatal(m) => f.write_str(m),
        }
    }
}

/// `600`, `2.5`, `0.3`: whole seconds from 10 s on.
fn seconds_text(secs: f64) -> String {
    if secs >= 10.0 {
        format!("{secs:.0}")
    } else {
        format!("{secs:.1}")
    }
}

/// A prepared request: where, which headers, which JSON body (serialized text, so a
/// wire format can fix the order of its keys; see [`super::wire`]).
pub struct HttpCall {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// A blocking client (built on first use, on the caller's blocking thread: reqwest's
/// blocking client must not be created on an async executor) plus the retry policy.
pub struct Transport {
    timeout: Duration,
    policy: RetryPolicy,
    client: OnceLock<Result<Client, String>>,
    jitter: Mutex<u64>,
    key: Secret,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("timeout", &self.timeout)
            .field("policy", &self.policy)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Longest excerpt of an error body quoted in a message.
const BODY_EXCERPT: usize = 300;

impl Transport {
    pub fn new(timeout: Duration, policy: RetryPolicy, key: Secret, seed: u64) -> Self {
        Self {
            timeout,
            policy,
            client: OnceLock::new(),
            jitter: Mutex::new(seed ^ 0x5EC4_7E0B),
            key,
        }
    }

    pub fn key(&self) -> &Secret {
        &self.key
    }

    fn client(&self) -> Result<&Client, CallError> {
        self.client
            .get_or_init(|| {
                Client::builder()
                    .timeout(self.timeout)
                    .build()
                    .map_err(|e| format!("cannot build HTTP client: {e}"))
            })
            .as_ref()
            .map_err(|e| CallError::Fatal(e.clone()))
    }

    fn jitter(&self) -> f64 {
        let mut s = self.jitter.lock().unwrap_or_else(|p| p.into_inner());
        unit(&mut s)
    }

    /// POST `call` and return the response body as JSON, retrying per the policy. A 5xx
    /// answer that `refused` recognises (status, body) is a [`CallError::Refused`], not
    /// retried: some servers answer a request they cannot parse with a 500, and the same
    /// request would be refused again.
    pub fn post_json(
        &self,
        call: &HttpCall,
        refused: &dyn Fn(u16, &str) -> bool,
    ) -> Result<serde_json::Value, CallError> {
        let client = self.client()?;
        let mut attempt = 0u32;
        loop {
            let (retry_after, message) = match self.once(client, call, refused) {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fatal(m) => return Err(CallError::Fatal(self.key.scrub(&m))),
                Attempt::TimedOut(m) => {
                    return Err(CallError::TimedOut {
                        secs: self.timeout.as_secs_f64(),
                        message: self.key.scrub(&m),
                    })
                }
                Attempt::Refused { status, body } => {
                    return Err(CallError::Refused {
                        status,
                        body: self.key.scrub(&body),
                    })
                }
                Attempt::Retry {
                    retry_after,
                    message,
                } => (retry_after, message),
            };
            if attempt >= self.policy.retries {
                return Err(CallError::Exhausted {
                    attempts: attempt + 1,
                    last: self.key.scrub(&message),
                });
            }
            let d = retry_delay(
                attempt,
                retry_after,
                self.policy.base,
                self.policy.cap,
                self.jitter(),
            );
            (self.policy.sleep)(d);
            attempt += 1;
        }
    }

    fn once(
        &self,
        client: &Client,
        call: &HttpCall,
        refused: &dyn Fn(u16, &str) -> bool,
    ) -> Attempt {
        let mut req = client
            .post(&call.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(call.body.clone());
        for (k, v) in &call.headers {
            req = req.header(*k, v);
        }
        let resp = match req.send() {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Attempt::TimedOut(describe(&e)),
            // Refused or reset connections: the service may recover.
            Err(e) => {
                return Attempt::Retry {
                    retry_after: None,
                    message: describe(&e),
                }
            }
        };
        let status = resp.status();
        let retry_after = parse_retry_after(
            resp.headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        let text = match resp.text() {
            Ok(t) => t,
            Err(e) if e.is_timeout() => {
                return Attempt::TimedOut(format!("reading the body failed: {}", describe(&e)))
            }
            Err(e) => {
                return Attempt::Retry {
                    retry_after: None,
                    message: format!("reading the body failed: {}", describe(&e)),
                }
            }
        };
        if status.is_server_error() && refused(status.as_u16(), &text) {
            return Attempt::Refused {
                status: status.as_u16(),
                body: text,
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Attempt::Retry {
                retry_after,
                message: format!("HTTP {status}: {}", excerpt(&text)),
            };
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // The body of an auth failure may quote part of the key: do not repeat it.
            return Attempt::Fatal(format!(
                "HTTP {status}: authentication failed (check the API key variable)"
            ));
        }
        if status.is_client_error() {
            return Attempt::Refused {
                status: status.as_u16(),
                body: text,
            };
        }
        if !status.is_success() {
            return Attempt::Fatal(format!("HTTP {status}: {}", excerpt(&text)));
        }
        match serde_json::from_str(&text) {
            Ok(v) => Attempt::Done(v),
            Err(e) => Attempt::Fatal(format!(
                "HTTP {status} with a body that is not JSON ({e}): {}",
                excerpt(&text)
            )),
        }
    }
}

enum Attempt {
    Done(serde_json::Value),
    Retry {
        retry_after: Option<Duration>,
        message: String,
    },
    Refused {
        status: u16,
        body: String,
    },
    TimedOut(String),
    Fatal(String),
}

/// A reqwest error without its URL's query (none of ours carries a key, but a custom
/// base URL might), classified for the reader.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let e = e.to_string();
    format!("{kind}: {}", strip_query(&e))
}

fn strip_query(s: &str) -> String {
    match s.find('?') {
        Some(i) => {
            let end = s[i..].find([' ', ')']).map_or(s.len(), |j| i + j);
            format!("{}{}", &s[..i], &s[end..])
        }
        None => s.to_string(),
    }
}

fn excerpt(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(BODY_EXCERPT) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_and_respect_retry_after_and_cap() {
        let b = Duration::from_millis(1000);
        let cap = Duration::from_secs(60);
        assert_eq!(
            retry_delay(0, None, b, cap, 0.0),
            Duration::from_millis(500)
        );
        assert_eq!(
            retry_delay(2, None, b, cap, 0.0),
            Duration::from_millis(2000)
        );
        assert_eq!(
            retry_delay(2, None, b, cap, 0.5),
            Duration::from_millis(3000)
        );
        assert_eq!(retry_delay(30, None, b, cap, 0.9), cap);
        let ra = Some(Duration::from_secs(7));
        assert_eq!(retry_delay(0, ra, b, cap, 0.3), Duration::from_secs(7));
        assert_eq!(
            retry_delay(0, Some(Duration::from_secs(3600)), b, cap, 0.0),
            cap
        );
    }

    #[test]
    fn retry_after_parses_seconds_only() {
        assert_eq!(parse_retry_after(Some(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(Some("0.5")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(Some("-3")), None);
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn secrets_never_print_and_are_scrubbed() {
        let s = Secret::new(Some("sk-very-secret-123".into()));
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(
            s.scrub("bad key sk-very-secret-123 given"),
            "bad key <redacted> given"
        );
        assert_eq!(
            format!("{:?}", Secret::new(Some(String::new()))),
            "Secret(None)"
        );
    }

    #[test]
    fn messages_drop_queries_and_long_bodies() {
        assert_eq!(
            strip_query("error sending request for url (http://h/x?key=abc)"),
            "error sending request for url (http://h/x)"
        );
        let long = "x".repeat(1000);
        assert_eq!(excerpt(&long).chars().count(), BODY_EXCERPT + 1);
    }
}
