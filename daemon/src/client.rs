//! The HTTP client of the daemon's API (what `secateur runs …` uses). Errors carry the
//! daemon's JSON error message and details, so the CLI shows exactly what the server
//! said (`400: invalid configuration: …`).

use std::time::Duration;

use crate::types::{ApiError, Health, RunDetail, RunList, RunView, SubmitRequest};

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{url}` is not a daemon address: {why} (expected e.g. http://127.0.0.1:7878)")]
    BadUrl { url: String, why: String },
    #[error("cannot reach the daemon at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{status}: {}{}", body.error, details(&body.details))]
    Api { status: u16, body: ApiError },
    #[error("unexpected answer from the daemon: {0}")]
    Decode(String),
}

fn details(d: &[String]) -> String {
    d.iter().map(|l| format!("\n  {l}")).collect()
}

/// What went wrong sending a request, as a person needs it: reqwest's own message is
/// `error sending request for url (…)`; the innermost cause says why (`Connection
/// refused (os error 111)`).
fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".into();
    }
    let mut last: &dyn std::error::Error = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// `base` is an http(s) URL with a host.
fn check_base(base: &str) -> Result<(), ClientError> {
    let bad = |why: String| ClientError::BadUrl {
        url: base.to_string(),
        why,
    };
    let lower = base.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(bad("it must start with http:// or https://".into()));
    }
    let url = url::Url::parse(base).map_err(|e| bad(e.to_string()))?;
    if url.host().is_none() {
        return Err(bad("it names no host".into()));
    }
    Ok(())
}

/// A client for one daemon.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` like `http://127.0.0.1:7878`; `token` is sent as a bearer token. A `base`
    /// that is no http(s) URL is refused here, with a sentence naming it, instead of
    /// failing every request with reqwest's bare `builder error`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        check_base(base)?;
        // Idle connections are dropped well before the daemon closes them
        // (`daemon.header_read_timeout_ms`, 10 s by default), so a request never races
        // the server's close on a reused connection.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// A request to `path` with the token attached.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = req
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                message: cause(&e),
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !status.is_success() {
            let body = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| ApiError {
                error: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                details: vec![],
            });
            return Err(ClientError::Api {
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.send(self.request(reqwest::Method::GET, "/health"))
            .await
    }

    pub async fn list(&self) -> Result<Vec<RunView>, ClientError> {
        let l: RunList = self
            .send(self.request(reqwest::Method::GET, "/runs"))
            .await?;
        Ok(l.runs)
    }

    pub async fn show(&self, id: &str) -> Result<RunDetail, ClientError> {
        self.send(self.request(reqwest::Method::GET, &format!("/runs/{id}")))
            .await
    }

    pub async fn submit(&self, req: &SubmitRequest) -> Result<RunView, ClientError> {
        self.send(self.request(reqwest::Method::POST, "/runs").json(req))
            .await
    }

    pub async fn cancel(&self, id: &str) -> Result<RunView, ClientError> {
        self.send(self.request(reqwest::Method::POST, &format!("/runs/{id}/cancel")))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_is_a_sentence_naming_it() {
        for (url, why) in [
            ("127.0.0.1:7878", "must start with http:// or https://"),
            ("localhost:7878", "must start with http:// or https://"),
            ("ftp://h/", "must start with http:// or https://"),
            ("http://", "empty host"),
            ("http://[::1", "invalid IPv6 address"),
        ] {
            let e = Client::new(url, None).err().expect(url).to_string();
            assert!(
                e.starts_with(&format!("`{url}` is not a daemon address: ")),
                "{e}"
            );
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("builder error"), "{e}");
        }
        assert!(Client::new("http://127.0.0.1:7878/", None).is_ok());
    }
}
