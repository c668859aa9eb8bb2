//! Outbound webhooks, pure: which targets may be called (SSRF), the retry schedule, the signing
//! secrets and the Standard Webhooks headers (https://www.standardwebhooks.com), signed with the
//! spec's own implementation (`standardwebhooks`).

use amba_core::address::Reach;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use std::net::IpAddr;

/// What the operator sets.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `AMBA_WEBHOOKS_ALLOW_PRIVATE`: http and loopback/private targets, for development and
    /// tests only (link-local stays refused).
    pub allow_private: bool,
    /// Multiplies the retry schedule (1 in production; tests shrink it).
    pub retry_scale: f64,
    /// The platform's own host, never a target.
    pub own_host: Option<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow_private: false,
            retry_scale: 1.0,
            own_host: None,
        }
    }
}

/// How long after a failure each next attempt comes (the spec's suggested schedule): the last
/// attempt is 1 day, 8 hours and a half after the first; then the delivery is failed.
pub const RETRY_AFTER_SECONDS: &[i64] = &[5, 300, 1_800, 7_200, 18_000, 36_000, 36_000, 36_000];

/// An endpoint failing every delivery for this long is disabled (and its owner told).
pub const DISABLE_AFTER_DAYS: i64 = 5;

/// When attempt `attempts + 1` is due after `attempts` failed ones, with `scale` (1 in production;
/// tests shrink the schedule); `None`: no attempt is left.
pub fn next_attempt(attempts: u32, failed_at: DateTime<Utc>, scale: f64) -> Option<DateTime<Utc>> {
    let seconds = *RETRY_AFTER_SECONDS.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
    let millis = (seconds as f64 * 1_000.0 * scale).round() as i64;
    Some(failed_at + Duration::milliseconds(millis.max(1)))
}

/// A new signing secret: `whsec_` and 24 random bytes in base64, as the spec writes them.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// The `webhook-signature` header: one `v1,<signature>` per secret in force (two while a
/// rotation overlaps), separated by spaces.
pub fn signature(secrets: &[&str], msg_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let mut signatures = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let hook = standardwebhooks::Webhook::new(secret).ok()?;
        signatures.push(hook.sign(msg_id, timestamp, body).ok()?);
    }
    Some(signatures.join(" "))
}

/// Why a webhook target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the url must be an absolute https URL (http only for loopback or private hosts in development)")]
    Scheme,
    #[error("the url cannot carry credentials")]
    Credentials,
    #[error("the url has no host")]
    NoHost,
    #[error(
        "the url's host resolves to {0}, which webhooks may not reach (link-local, metadata, loopback, private or this platform)"
    )]
    Forbidden(IpAddr),
    #[error("the url's host does not resolve")]
    Unresolved,
}

/// Where the target's host may point: `allow_private` (development, tests) lets loopback and
/// private addresses through; link-local (metadata endpoints live there), multicast, broadcast
/// and unspecified addresses never are.
pub fn address_allowed(address: IpAddr, allow_private: bool) -> bool {
    match amba_core::address::reach(address) {
        Reach::Public => true,
        Reach::Private => allow_private,
        Reach::Never => false,
    }
}

/// Checks a target URL's form (not where it resolves): https, or http when `allow_private`;
/// no credentials; a host. Returns the host and port to resolve.
pub fn check_url(url: &str, allow_private: bool) -> Result<(String, u16), TargetError> {
    let parsed = url::Url::parse(url.trim()).map_err(|_| TargetError::Scheme)?;
    let port = match (parsed.scheme(), allow_private) {
        ("https", _) => parsed.port().unwrap_or(443),
        ("http", true) => parsed.port().unwrap_or(80),
        _ => return Err(TargetError::Scheme),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(TargetError::Credentials);
    }
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or(TargetError::NoHost)?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// The addresses a host resolved to, all of which must be allowed (one bad answer refuses the
/// target: DNS may hand out either), and not the platform's own.
pub fn check_addresses(addresses: &[IpAddr], allow_private: bool, own: &[IpAddr]) -> Result<IpAddr, TargetError> {
    let first = *addresses.first().ok_or(TargetError::Unresolved)?;
    if let Some(bad) = addresses
        .iter()
        .find(|a| !address_allowed(**a, allow_private) || own.contains(a))
    {
        return Err(TargetError::Forbidden(*bad));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn targets() {
        assert_eq!(
            check_url("https://hooks.example/x?y=1", false),
            Ok(("hooks.example".into(), 443))
        );
        assert_eq!(
            check_url("http://127.0.0.1:9000/h", true),
            Ok(("127.0.0.1".into(), 9000))
        );
        assert_eq!(check_url("http://hooks.example/x", false), Err(TargetError::Scheme));
        assert_eq!(check_url("ftp://hooks.example/x", true), Err(TargetError::Scheme));
        assert_eq!(
            check_url("https://u:p@hooks.example/", false),
            Err(TargetError::Credentials)
        );
        assert_eq!(check_url("https://[::1]:8443/", true), Ok(("::1".into(), 8443)));
        for never in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "0.0.0.0",
            "224.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!address_allowed(ip(never), true), "{never}");
        }
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "::1",
            "fd00::1",
            "100.64.0.1",
        ] {
            assert!(!address_allowed(ip(private), false), "{private}");
            assert!(address_allowed(ip(private), true), "{private}");
        }
        assert!(address_allowed(ip("93.184.216.34"), false));
        assert_eq!(
            check_addresses(&[ip("93.184.216.34"), ip("169.254.169.254")], true, &[]),
            Err(TargetError::Forbidden(ip("169.254.169.254")))
        );
        assert_eq!(
            check_addresses(&[ip("93.184.216.34")], false, &[ip("93.184.216.34")]),
            Err(TargetError::Forbidden(ip("93.184.216.34")))
        );
        assert_eq!(check_addresses(&[], false, &[]), Err(TargetError::Unresolved));
    }

    #[test]
    fn schedule_and_signatures() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        assert_eq!(next_attempt(1, t0, 1.0), Some(t0 + Duration::seconds(5)));
        assert_eq!(next_attempt(2, t0, 1.0), Some(t0 + Duration::seconds(300)));
        assert_eq!(next_attempt(9, t0, 1.0), None);
        let total: i64 = RETRY_AFTER_SECONDS.iter().sum();
        assert!(total >= 24 * 3_600, "retries last at least a day");
        let secret = new_secret();
        assert!(secret.starts_with("whsec_") && STANDARD.decode(&secret[6..]).map(|k| k.len()) == Ok(24));
        let old = new_secret();
        let header = signature(&[&secret, &old], "msg_1", 1_800_000_000, b"{}").unwrap_or_default();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
    }
}
