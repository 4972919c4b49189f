//! What a submitted run config may make the daemon do outside its own files: which
//! environment variables it may read as API keys, and which hosts it may send them to.
//!
//! Without these rules a config with `backend = "openai"`,
//! `base_url = "http://127.0.0.1:PORT/v1"` and `api_key_env = "SECATEUR_DAEMON_TOKEN"`
//! makes the daemon send `Authorization: Bearer <its own token>` to whoever listens
//! there, and any other variable of its environment the same way. So every backend a
//! config names (planner, critic reflection, and their fallbacks) is checked against
//! the operator's allow-lists in `[daemon]` before anything is queued or written, and
//! again when a stored run starts (the operator may have narrowed the lists since).
//!
//! Hosts are compared after parsing with the `url` crate, the parser reqwest itself
//! uses, so `https://api.openai.com@evil.example/` is `evil.example` here as it is there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use config::{BackendConfig, Config, DaemonSection};
use url::{Host, Url};

/// One refused setting: the dotted field and why it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

/// Every backend of `cfg` with its dotted prefix.
fn backends(cfg: &Config) -> Vec<(String, &BackendConfig)> {
    let mut out = vec![("planner".to_string(), &cfg.planner)];
    if let Some(r) = &cfg.critic.reflection {
        out.push(("critic.reflection".to_string(), r));
    }
    let fallbacks: Vec<(String, &BackendConfig)> = out
        .iter()
        .filter_map(|(p, b)| b.fallback.as_deref().map(|f| (format!("{p}.fallback"), f)))
        .collect();
    out.extend(fallbacks);
    out
}

/// Everything in `cfg` that the daemon's allow-lists refuse; empty when it may run.
pub fn check(cfg: &Config, rules: &DaemonSection) -> Vec<Refusal> {
    let mut out = Vec::new();
    for (prefix, bc) in backends(cfg) {
        if let Some(name) = &bc.api_key_env {
            if let Some(why) = key_refusal(name, rules) {
                out.push(Refusal {
                    field: format!("{prefix}.api_key_env"),
                    why,
                });
            }
        }
        if let Some(url) = &bc.base_url {
            if let Some(why) = url_refusal(url, bc.api_key_env.is_some(), rules) {
                out.push(Refusal {
                    field: format!("{prefix}.base_url"),
                    why,
                });
            }
        }
    }
    out
}

/// Why the environment variable `name` may not be read as an API key, if it may not.
fn key_refusal(name: &str, rules: &DaemonSection) -> Option<String> {
    if name == rules.token_env {
        return Some(format!(
            "\"{name}\" holds the daemon's bearer token (daemon.token_env); it is never an API key"
        ));
    }
    if rules.allowed_api_key_envs.iter().any(|a| a == name) {
        return None;
    }
    let allowed = if rules.allowed_api_key_envs.is_empty() {
        "none are (the operator lists them in daemon.allowed_api_key_envs)".to_string()
    } else {
        format!("allowed: {}", rules.allowed_api_key_envs.join(", "))
    };
    Some(format!(
        "\"{name}\" is not a variable this daemon lets runs read; {allowed}"
    ))
}

/// Why `raw` may not be a base URL, if it may not. `sends_key`: a key goes with the
/// requests, so it must travel encrypted unless it stays on this machine.
fn url_refusal(raw: &str, sends_key: bool, rules: &DaemonSection) -> Option<String> {
    let url = match Url::parse(raw) {
        Ok(u) => u,
        Err(e) => return Some(format!("\"{raw}\" is not a URL ({e})")),
    };
    let Some(host) = url.host() else {
        return Some(format!("\"{raw}\" names no host"));
    };
    if is_loopback(&host) {
        return (!rules.allow_loopback_base_urls).then(|| {
            format!(
                "\"{raw}\" points at this machine; the daemon allows that only with \
                 daemon.allow_loopback_base_urls = true"
            )
        });
    }
    let name = host.to_string().to_ascii_lowercase();
    let listed = rules
        .allowed_base_url_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&name));
    if !listed {
        return Some(format!(
            "host \"{name}\" is not one this daemon lets runs call; allowed: {} \
             (daemon.allowed_base_url_hosts)",
            rules.allowed_base_url_hosts.join(", ")
        ));
    }
    (sends_key && url.scheme() != "https")
        .then(|| format!("\"{raw}\" would send the API key unencrypted; use https://"))
}

/// Whether `host` is this machine: `localhost` (and `*.localhost`, RFC 6761), the
/// loopback ranges, and the unspecified addresses (connecting to 0.0.0.0 reaches
/// local listeners on Linux), also as IPv4-mapped IPv6.
fn is_loopback(host: &Host<&str>) -> bool {
    let v4 = |a: &Ipv4Addr| a.is_loopback() || a.is_unspecified();
    let v6 = |a: &Ipv6Addr| {
        a.is_loopback() || a.is_unspecified() || a.to_ipv4_mapped().is_some_and(|m| v4(&m))
    };
    match host {
        Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Host::Ipv4(a) => v4(a),
        Host::Ipv6(a) => v6(a),
    }
}

/// Whether `ip` would count as this machine (exposed for tests of the rule).
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_loopback(&Host::Ipv4(a)),
        IpAddr::V6(a) => is_loopback(&Host::Ipv6(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::BackendKind;

    fn rules() -> DaemonSection {
        DaemonSection {
            allowed_api_key_envs: vec!["OPENAI_API_KEY".into()],
            ..Default::default()
        }
    }

    fn url_ok(raw: &str, key: bool, r: &DaemonSection) -> bool {
        url_refusal(raw, key, r).is_none()
    }

    #[test]
    fn hosts_are_the_ones_reqwest_would_call() {
        let r = rules();
        assert!(url_ok("https://api.openai.com/v1", true, &r));
        assert!(url_ok("https://API.OpenAI.com/v1", true, &r));
        // The userinfo trick: the host is evil.example.
        assert!(!url_ok("https://api.openai.com@evil.example/v1", true, &r));
        assert!(!url_ok("https://api.openai.com.evil.example/v1", true, &r));
        assert!(!url_ok("https://evil.example/v1", false, &r));
        // A key never travels in clear text, even to an allowed host.
        let e = url_refusal("http://api.openai.com/v1", true, &r).unwrap();
        assert!(e.contains("unencrypted"), "{e}");
        assert!(url_ok("http://api.openai.com/v1", false, &r));
        assert!(url_refusal("not a url", false, &r)
            .unwrap()
            .contains("not a URL"));
    }

    #[test]
    fn loopback_in_every_spelling_needs_the_operators_consent() {
        let mut r = rules();
        for raw in [
            "http://127.0.0.1:17900/v1",
            "http://127.1.2.3/v1",
            "http://0x7f.1/v1",
            "http://2130706433/v1",
            "http://0.0.0.0:8080/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::]/",
            "http://localhost:11434/v1",
            "http://LOCALHOST./v1",
            "http://api.localhost/v1",
        ] {
            let e = url_refusal(raw, false, &r).unwrap_or_default();
            assert!(e.contains("allow_loopback_base_urls"), "{raw}: {e:?}");
        }
        r.allow_loopback_base_urls = true;
        assert!(url_ok("http://127.0.0.1:11434/v1", true, &r));
        assert!(url_ok("http://localhost:11434/v1", false, &r));
        assert!(is_loopback_ip("::1".parse().unwrap()));
        assert!(!is_loopback_ip("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn every_backend_and_fallback_is_checked_and_the_token_never_allowed() {
        let mut r = rules();
        // Even an operator who lists the token variable (config validation refuses
        // that too) cannot make it an API key.
        r.allowed_api_key_envs.push(r.token_env.clone());
        let exfil = BackendConfig {
            backend: BackendKind::Openai,
            model: Some("m".into()),
            base_url: Some("http://127.0.0.1:17900/v1".into()),
            api_key_env: Some(r.token_env.clone()),
            ..Default::default()
        };
        let mut cfg = Config::default();
        cfg.planner.fallback = Some(Box::new(exfil.clone()));
        let mut reflection = exfil.clone();
        reflection.api_key_env = Some("AWS_SECRET_ACCESS_KEY".into());
        reflection.fallback = Some(Box::new(exfil));
        cfg.critic.reflection = Some(reflection);
        let fields: Vec<String> = check(&cfg, &r).into_iter().map(|f| f.field).collect();
        assert_eq!(
            fields,
            [
                "critic.reflection.api_key_env",
                "critic.reflection.base_url",
                "planner.fallback.api_key_env",
                "planner.fallback.base_url",
                "critic.reflection.fallback.api_key_env",
                "critic.reflection.fallback.base_url",
            ]
        );
        let why = &check(&cfg, &r)[2].why;
        assert!(why.contains("bearer token"), "{why}");
        // The offline default reaches nothing.
        assert!(check(&Config::default(), &rules()).is_empty());
    }
}
