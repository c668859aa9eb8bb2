//! Configuration: environment first, optionally a `KEY=VALUE` file named by `AMBA_CONFIG_FILE`
//! (the environment wins). Every value is validated at start-up and a bad one stops the process
//! with a message naming the variable. Only `main` reads the environment; tests build
//! [`Settings`] from a map.

use amba_bus::Namespace;
use amba_core::secret::Secret;
use std::collections::HashMap;
use std::net::SocketAddr;

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: Secret,
    /// `AMBA_DB_PASSWORD_<SERVICE>` (for `amba migrate` only): the password that makes the
    /// service's role `amba_<service>` a login role. Unset: the role's login is left as it is
    /// (CloudNativePG manages it in production). Keyed by service name.
    pub db_passwords: Vec<(&'static str, Secret)>,
    pub nats_url: String,
    /// `AMBA_NATS_CREDS`: what this process logs in to NATS with — a `.creds` file (user JWT and
    /// nkey seed) or a file holding one `user:password` line.
    pub nats_creds: Option<std::path::PathBuf>,
    /// `AMBA_NATS_TLS_CA`: the CA that signed the NATS servers' certificates (TLS required then).
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// `AMBA_NATS_TLS_CERT` and `AMBA_NATS_TLS_KEY`: a client certificate, where servers verify one.
    pub nats_tls_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `AMBA_STREAM_REPLICAS` (default 1): copies of each JetStream stream; 3 on a 3-server
    /// cluster. Existing streams are updated to it at start.
    pub stream_replicas: usize,
    /// `AMBA_FAILPOINTS`: fault injection for the fault suite (`name=actions;...`, see the `fail`
    /// crate); unset in any real deployment.
    pub failpoints: Vec<(String, String)>,
    pub namespace: Namespace,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Where this process serves Prometheus `/metrics` (`AMBA_METRICS_ADDR`); unset: nowhere.
    /// A port of its own, so metrics never share the public port.
    pub metrics_addr: Option<SocketAddr>,
    /// What `mcp_config` and links point to; defaults to `http://<AMBA_HTTP_ADDR>`.
    pub public_url: String,
    /// Extra `Host` values MCP accepts behind an ingress (`AMBA_ALLOWED_HOSTS`, comma-separated).
    pub allowed_hosts: Vec<String>,
    /// Load balancers / ingresses whose `X-Forwarded-For` is believed (`AMBA_TRUSTED_PROXIES`,
    /// comma-separated addresses or CIDR blocks); none by default.
    pub trusted_proxies: amba_edge::client_addr::TrustedProxies,
    /// `AMBA_LINK_SECRET`: signs affiliate-link subjects (same on every edge; ≥ 32 characters).
    pub link_secret: Option<Secret>,
    pub stripe_api_base: String,
    pub stripe_secret_key: Option<Secret>,
    /// `AMBA_STRIPE_WEBHOOK_SECRET`: one signing secret, or several comma-separated while one is
    /// rotated.
    pub stripe_webhook_secrets: Vec<Secret>,
    /// `AMBA_STRIPE_TIMEOUT_SECONDS`: how long one Stripe call may take (default 20).
    pub stripe_timeout: std::time::Duration,
    /// `AMBA_PAYOUT_UNKNOWN_GRACE_SECONDS`: how long a transfer whose outcome is unknown may stay
    /// absent at Stripe before its reservation is voided (default 300).
    pub payout_unknown_grace: std::time::Duration,
    pub smtp_url: Option<Secret>,
    /// `AMBA_MAIL_FROM`: the From of every e-mail; default `Amba Affiliate <no-reply@<public host>>`.
    pub mail_from: String,
    /// E-mail send budgets: `AMBA_MAIL_INVITATIONS_PER_HOUR` (per program owner's org, default
    /// 500) and `AMBA_MAIL_PER_RECIPIENT_PER_DAY` (e-mails outside summaries per org, default 100).
    pub mail_budgets: amba_notification::consumers::Budgets,
    /// `AMBA_DATA_DIR` (default `.amba`): a PostgreSQL/NATS `amba dev` starts, and e-mails as
    /// `.eml` files under `mail/` when there is no `AMBA_SMTP_URL`.
    pub data_dir: std::path::PathBuf,
    /// The per-org budgets (`AMBA_REPORTS_PER_ORG`, `AMBA_TOUCHPOINTS_PER_ORG`, … each
    /// `<burst>,<n>/s|min|h`) and calls in flight per org (`AMBA_IN_FLIGHT_PER_ORG`); see the
    /// edge's `rate_limit` module.
    pub org_budgets: amba_edge::rate_limit::OrgBudgets,
    /// `ORG_PAYOUTS_LIVE`: real transfers; off ⇒ 503 PAYOUTS_NOT_ENABLED (dry runs still work).
    pub payouts_live: bool,
    /// `MULTI_LEVEL_ENABLED`: the platform switch for upline overrides.
    pub multi_level_enabled: bool,
    /// `AMBA_DISPOSABLE_DOMAINS_FILE`: throwaway e-mail domains to add to the bundled list for
    /// the disposable-e-mail fraud check, one per line.
    pub disposable_domains_file: Option<std::path::PathBuf>,
    /// `AMBA_FX_RATES_URL`: reference exchange rates in the ECB's eurofxref XML format,
    /// `http(s)://` or `file://` (default the ECB's daily feed; `off` fetches none, and sales in
    /// another currency than their program's then wait); `AMBA_FX_REFRESH_SECONDS` how often
    /// (default 86400, daily).
    pub fx_rates: Option<amba_attribution::jobs::fx_rates::RateFeed>,
    /// `AMBA_WEBHOOKS_ALLOW_PRIVATE`: webhooks may call http and loopback/private addresses
    /// (development and tests only; link-local and metadata addresses stay refused).
    pub webhooks_allow_private: bool,
    /// `AMBA_WEBHOOK_RETRY_SCALE`: multiplies the webhook retry schedule (default 1; drills and
    /// tests shrink it, e.g. 0.001).
    pub webhook_retry_scale: f64,
    /// `AMBA_BACKGROUND_TRANSACTIONS`: in a process that takes reports and also runs the ledger,
    /// e-mail or payouts (`amba dev`), how many database transactions those services may run at
    /// once between them (default 2), so that they never crowd out the report writer;
    /// `AMBA_BACKGROUND_TRANSACTIONS_WHILE_INGESTING` (default 1): how many while reports are
    /// being written (at most the first).
    pub background_transactions: usize,
    pub background_transactions_while_ingesting: usize,
    pub otlp_endpoint: Option<String>,
    /// `AMBA_LOG_FORMAT=json` for log shippers; text otherwise.
    pub log_json: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

fn bad(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

/// The services with a database role of their own, and the variable of each one's password.
pub const DB_PASSWORD_VARS: [(&str, &str); 5] = [
    ("enrollment", "AMBA_DB_PASSWORD_ENROLLMENT"),
    ("attribution", "AMBA_DB_PASSWORD_ATTRIBUTION"),
    ("commission", "AMBA_DB_PASSWORD_COMMISSION"),
    ("payout", "AMBA_DB_PASSWORD_PAYOUT"),
    ("notification", "AMBA_DB_PASSWORD_NOTIFICATION"),
];

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/amba";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

impl Settings {
    /// Reads the process environment (and `AMBA_CONFIG_FILE` if set).
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_env_with(&[])
    }

    /// [`Settings::from_env`] with `overrides` (command-line flags) winning over the environment;
    /// an `AMBA_CONFIG_FILE` override names the file to read.
    pub fn from_env_with(overrides: &[(&str, String)]) -> Result<Settings, ConfigError> {
        let overrides: HashMap<String, String> = overrides.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let mut values: HashMap<String, String> = HashMap::new();
        if let Some(path) = overrides
            .get("AMBA_CONFIG_FILE")
            .cloned()
            .or_else(|| std::env::var("AMBA_CONFIG_FILE").ok())
        {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| bad("AMBA_CONFIG_FILE", format!("cannot read {path}: {e}")))?;
            values.extend(parse_env_file(&text));
        }
        values.extend(std::env::vars());
        values.extend(overrides);
        Settings::from_map(&values)
    }

    /// Builds settings from variables; absent ones take their defaults.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());

        let database_url = get("AMBA_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(bad("AMBA_DATABASE_URL", "must be a postgres:// URL"));
        }
        let nats_url = get("AMBA_NATS_URL").unwrap_or_else(|| DEFAULT_NATS_URL.to_owned());
        if !nats_url
            .split(',')
            .all(|u| u.trim().starts_with("nats://") || u.trim().starts_with("tls://"))
        {
            return Err(bad("AMBA_NATS_URL", "must be nats:// or tls:// URLs, comma-separated"));
        }
        let file = |name: &'static str| -> Result<Option<std::path::PathBuf>, ConfigError> {
            match get(name) {
                None => Ok(None),
                Some(path) if std::path::Path::new(&path).is_file() => Ok(Some(path.into())),
                Some(path) => Err(bad(name, format!("{path} is not a readable file"))),
            }
        };
        let nats_creds = file("AMBA_NATS_CREDS")?;
        let nats_tls_ca = file("AMBA_NATS_TLS_CA")?;
        let nats_tls_client = match (file("AMBA_NATS_TLS_CERT")?, file("AMBA_NATS_TLS_KEY")?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "AMBA_NATS_TLS_CERT",
                    "set both AMBA_NATS_TLS_CERT and AMBA_NATS_TLS_KEY, or neither",
                ));
            }
        };
        let stream_replicas = match get("AMBA_STREAM_REPLICAS") {
            None => 1,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=5).contains(n))
                .ok_or_else(|| bad("AMBA_STREAM_REPLICAS", format!("{v:?} is not a number from 1 to 5")))?,
        };
        let failpoints = get("AMBA_FAILPOINTS")
            .map(|v| {
                v.split(';')
                    .filter(|p| !p.trim().is_empty())
                    .map(|point| {
                        point
                            .split_once('=')
                            .map(|(name, actions)| (name.trim().to_owned(), actions.trim().to_owned()))
                            .ok_or_else(|| bad("AMBA_FAILPOINTS", format!("{point:?} is not name=actions")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let namespace = Namespace::new(&get("AMBA_NAMESPACE").unwrap_or_else(|| "amba".to_owned()))
            .map_err(|e| bad("AMBA_NAMESPACE", e.to_string()))?;
        let http_addr = addr(&get, "AMBA_HTTP_ADDR", "127.0.0.1:8080")?;
        let grpc_addr = addr(&get, "AMBA_GRPC_ADDR", "127.0.0.1:50051")?;
        let public_url = get("AMBA_PUBLIC_URL").unwrap_or_else(|| format!("http://{http_addr}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(bad("AMBA_PUBLIC_URL", "must be an absolute http(s) URL"));
        }
        let stripe_api_base = get("AMBA_STRIPE_API_BASE").unwrap_or_else(|| "https://api.stripe.com".to_owned());
        if !(stripe_api_base.starts_with("http://") || stripe_api_base.starts_with("https://")) {
            return Err(bad("AMBA_STRIPE_API_BASE", "must be an absolute http(s) URL"));
        }
        let smtp_url = get("AMBA_SMTP_URL");
        if let Some(url) = &smtp_url
            && !(url.starts_with("smtp://") || url.starts_with("smtps://"))
        {
            return Err(bad("AMBA_SMTP_URL", "must be an smtp:// or smtps:// URL"));
        }
        let log_json = match get("AMBA_LOG_FORMAT").as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(bad("AMBA_LOG_FORMAT", format!("{other:?} is not text or json")));
            }
        };
        let metrics_addr = match get("AMBA_METRICS_ADDR") {
            Some(_) => Some(addr(&get, "AMBA_METRICS_ADDR", "0.0.0.0:9090")?),
            None => None,
        };
        let trusted_proxies =
            amba_edge::client_addr::TrustedProxies::parse(&get("AMBA_TRUSTED_PROXIES").unwrap_or_default())
                .map_err(|problem| bad("AMBA_TRUSTED_PROXIES", problem))?;
        let link_secret = get("AMBA_LINK_SECRET");
        if link_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(bad(
                "AMBA_LINK_SECRET",
                "must be at least 32 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        Ok(Settings {
            link_secret: link_secret.map(Secret::new),
            database_url: Secret::new(database_url),
            db_passwords: DB_PASSWORD_VARS
                .iter()
                .filter_map(|&(service, variable)| Some((service, Secret::new(get(variable)?))))
                .collect(),
            nats_url,
            nats_creds,
            nats_tls_ca,
            nats_tls_client,
            stream_replicas,
            failpoints,
            namespace,
            http_addr,
            grpc_addr,
            metrics_addr,
            public_url: public_url.trim_end_matches('/').to_owned(),
            allowed_hosts: get("AMBA_ALLOWED_HOSTS")
                .map(|v| {
                    v.split(',')
                        .map(|h| h.trim().to_owned())
                        .filter(|h| !h.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            trusted_proxies,
            stripe_api_base,
            stripe_secret_key: get("AMBA_STRIPE_SECRET_KEY").map(Secret::new),
            stripe_webhook_secrets: get("AMBA_STRIPE_WEBHOOK_SECRET")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(Secret::new)
                        .collect()
                })
                .unwrap_or_default(),
            stripe_timeout: seconds(&get, "AMBA_STRIPE_TIMEOUT_SECONDS", 20)?,
            payout_unknown_grace: seconds(&get, "AMBA_PAYOUT_UNKNOWN_GRACE_SECONDS", 300)?,
            smtp_url: smtp_url.map(Secret::new),
            org_budgets: amba_edge::rate_limit::OrgBudgets::from_vars(get)
                .map_err(|(variable, problem)| bad(variable, problem))?,
            mail_budgets: amba_notification::consumers::Budgets {
                invitations_per_org_per_hour: count(&get, "AMBA_MAIL_INVITATIONS_PER_HOUR", 500)?,
                per_recipient_per_day: count(&get, "AMBA_MAIL_PER_RECIPIENT_PER_DAY", 100)?,
            },
            data_dir: get("AMBA_DATA_DIR").map(Into::into).unwrap_or_else(|| ".amba".into()),
            mail_from: match get("AMBA_MAIL_FROM") {
                Some(from) if from.contains('@') => from,
                Some(from) => {
                    return Err(bad(
                        "AMBA_MAIL_FROM",
                        format!("{from:?} is not an address like Amba <no-reply@example.com>"),
                    ));
                }
                None => format!(
                    "Amba Affiliate <no-reply@{}>",
                    amba_edge::host_of(&public_url).unwrap_or_else(|| "localhost".into())
                ),
            },
            payouts_live: flag(&get, "ORG_PAYOUTS_LIVE")?,
            multi_level_enabled: flag(&get, "MULTI_LEVEL_ENABLED")?,
            disposable_domains_file: get("AMBA_DISPOSABLE_DOMAINS_FILE").map(Into::into),
            webhooks_allow_private: flag(&get, "AMBA_WEBHOOKS_ALLOW_PRIVATE")?,
            webhook_retry_scale: match get("AMBA_WEBHOOK_RETRY_SCALE") {
                None => 1.0,
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 1.0)
                    .ok_or_else(|| {
                        bad(
                            "AMBA_WEBHOOK_RETRY_SCALE",
                            format!("{v:?} is not a number above 0, at most 1"),
                        )
                    })?,
            },
            fx_rates: match get("AMBA_FX_RATES_URL").as_deref() {
                Some("off") => None,
                Some(url)
                    if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("file://")) =>
                {
                    return Err(bad(
                        "AMBA_FX_RATES_URL",
                        format!("{url:?} is not an http(s):// or file:// URL (or off)"),
                    ));
                }
                url => Some(amba_attribution::jobs::fx_rates::RateFeed {
                    url: url.unwrap_or(amba_attribution::domain::fx::ECB_DAILY_URL).to_owned(),
                    refresh: std::time::Duration::from_secs(u64::from(count(&get, "AMBA_FX_REFRESH_SECONDS", 86_400)?)),
                }),
            },
            background_transactions: usize::try_from(count(&get, "AMBA_BACKGROUND_TRANSACTIONS", 2)?).unwrap_or(1),
            background_transactions_while_ingesting: usize::try_from(count(
                &get,
                "AMBA_BACKGROUND_TRANSACTIONS_WHILE_INGESTING",
                1,
            )?)
            .unwrap_or(1),
            otlp_endpoint: get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            log_json,
        })
    }
}

fn addr(
    get: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = get(variable).unwrap_or_else(|| default.to_owned());
    value.parse().map_err(|_| {
        bad(
            variable,
            format!("{value:?} is not a host:port address such as {default}"),
        )
    })
}

fn seconds(
    get: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: u64,
) -> Result<std::time::Duration, ConfigError> {
    match get(variable) {
        None => Ok(std::time::Duration::from_secs(default)),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| bad(variable, format!("{v:?} is not a whole number of seconds (1 or more)"))),
    }
}

fn count(get: &impl Fn(&str) -> Option<String>, variable: &'static str, default: u32) -> Result<u32, ConfigError> {
    match get(variable) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(variable, format!("{v:?} is not a whole number (1 or more)"))),
    }
}

fn flag(get: &impl Fn(&str) -> Option<String>, variable: &'static str) -> Result<bool, ConfigError> {
    match get(variable).map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("0" | "false" | "off" | "no") => Ok(false),
        Some("1" | "true" | "on" | "yes") => Ok(true),
        Some(other) => Err(bad(variable, format!("{other:?} is not a boolean (use true or false)"))),
    }
}

/// `KEY=VALUE` lines; `#` comments and blank lines ignored; optional quotes stripped.
fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_are_local_and_safe() -> Result<(), ConfigError> {
        let s = Settings::from_map(&HashMap::new())?;
        assert_eq!(s.namespace.as_str(), "amba");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.public_url, "http://127.0.0.1:8080");
        assert!(!s.payouts_live);
        assert!(!s.multi_level_enabled);
        // Beside ingest in one process: two background transactions when quiet, one while writing.
        assert_eq!(
            (s.background_transactions, s.background_transactions_while_ingesting),
            (2, 1)
        );
        Ok(())
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            ("AMBA_DATABASE_URL", "mysql://x"),
            ("AMBA_NATS_URL", "http://x"),
            ("AMBA_NAMESPACE", "Bad.NS"),
            ("AMBA_HTTP_ADDR", "localhost"),
            ("AMBA_GRPC_ADDR", "1.2.3.4"),
            ("AMBA_PUBLIC_URL", "example.com"),
            ("AMBA_STRIPE_API_BASE", "stripe"),
            ("AMBA_SMTP_URL", "mail.example.com"),
            ("ORG_PAYOUTS_LIVE", "maybe"),
            ("MULTI_LEVEL_ENABLED", "2"),
            ("AMBA_LOG_FORMAT", "xml"),
            ("AMBA_TRUSTED_PROXIES", "10.0.0.0/8, ingress.local"),
            ("AMBA_METRICS_ADDR", "9090"),
            ("AMBA_TOUCHPOINTS_PER_ORG", "1000"),
            ("AMBA_REPORTS_PER_ORG", "10000,fast"),
            ("AMBA_CONFIGURATION_PER_ORG", "0,1/min"),
            ("AMBA_IN_FLIGHT_PER_ORG", "none"),
            ("AMBA_BACKGROUND_TRANSACTIONS", "0"),
            ("AMBA_BACKGROUND_TRANSACTIONS_WHILE_INGESTING", "two"),
        ];
        for (variable, value) in cases {
            let err = Settings::from_map(&vars(&[(variable, value)])).err();
            assert_eq!(err.as_ref().map(|e| e.variable), Some(variable), "{variable}={value}");
            assert!(err.is_some_and(|e| e.to_string().contains(variable)));
        }
    }

    #[test]
    fn flags_and_lists_parse() -> Result<(), ConfigError> {
        let s = Settings::from_map(&vars(&[
            ("ORG_PAYOUTS_LIVE", "TRUE"),
            ("AMBA_ALLOWED_HOSTS", "a.example.com, b.example.com"),
        ]))?;
        assert!(s.payouts_live);
        assert_eq!(s.allowed_hosts, vec!["a.example.com", "b.example.com"]);
        Ok(())
    }

    #[test]
    fn secrets_do_not_leak_into_debug_output() -> Result<(), ConfigError> {
        let s = Settings::from_map(&vars(&[
            ("AMBA_STRIPE_SECRET_KEY", "sk_test_abc"),
            ("AMBA_DATABASE_URL", "postgres://u:pw@h/db"),
        ]))?;
        let debug = format!("{s:?}");
        assert!(!debug.contains("sk_test_abc") && !debug.contains("pw@"));
        Ok(())
    }

    #[test]
    fn env_file_lines() {
        let parsed = parse_env_file("# comment\nAMBA_NAMESPACE=dev\n\nORG_PAYOUTS_LIVE=\"false\"\nnot a pair\n");
        assert_eq!(
            parsed,
            vec![
                ("AMBA_NAMESPACE".to_owned(), "dev".to_owned()),
                ("ORG_PAYOUTS_LIVE".to_owned(), "false".to_owned())
            ]
        );
    }
}
