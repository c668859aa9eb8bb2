//! Every rate limit of the edge, in one place (GCRA from `governor`, keyed, memory bounded).
//!
//! | budget | key | burst | sustained | charged for |
//! |---|---|---|---|---|
//! | `public` | client address (IPv6 by /64) | 60 | 10/s | anonymous clicks (`POST /v1/touchpoints`, `/r/`), anonymous MCP calls |
//! | `creations` | org | 20 | 1 per 6 s | signups and token creation by an authenticated org |
//! | `touchpoints` | org | 1,000 | 200/s (`AMBA_TOUCHPOINTS_PER_ORG`) | touchpoints recorded with a token (gRPC, MCP) |
//! | `token_lookups` | client address (IPv6 by /64) | 100 | 10/s | token checks that miss the cache (unknown, revoked or new tokens) |
//!
//! A refusal is `RATE_LIMITED` (HTTP 429 with `Retry-After`, gRPC `RESOURCE_EXHAUSTED` with
//! `retry-after` metadata, an MCP tool error) whose details carry `retry_after_seconds`.

use amba_core::{ApiError, ErrorCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Keys kept per budget before idle ones are forgotten (each is a few dozen bytes).
const MAX_KEYS: usize = 100_000;

/// What is being charged, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Public,
    Creations,
    Touchpoints,
    TokenLookups,
}

pub struct RateLimits {
    public: Keyed<IpAddr>,
    creations: Keyed<String>,
    touchpoints: Keyed<String>,
    token_lookups: Keyed<IpAddr>,
}

/// The per-org touchpoint budget by default: (burst, sustained per second).
pub const TOUCHPOINTS_PER_ORG: (u32, u32) = (1_000, 200);

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits::with_touchpoints(TOUCHPOINTS_PER_ORG)
    }
}

impl RateLimits {
    /// The default budgets, with the per-org touchpoint budget (burst, per second) given
    /// (`AMBA_TOUCHPOINTS_PER_ORG`: backends that record clicks server-side may need more).
    pub fn with_touchpoints((burst, per_second): (u32, u32)) -> Self {
        RateLimits {
            public: Keyed::new(60, Duration::from_millis(100)),
            creations: Keyed::new(20, Duration::from_secs(6)),
            touchpoints: Keyed::new(burst, Duration::from_secs(1) / per_second.max(1)),
            token_lookups: Keyed::new(100, Duration::from_millis(100)),
        }
    }
}

impl RateLimits {
    /// Charges one request from `client` (anonymous callers, token lookups).
    pub fn check_address(&self, budget: Budget, client: IpAddr) -> Result<(), ApiError> {
        let limiter = match budget {
            Budget::TokenLookups => &self.token_lookups,
            _ => &self.public,
        };
        limiter.check(&address_key(client), "this address")
    }

    /// Charges one request of an authenticated org.
    pub fn check_org(&self, budget: Budget, org_id: &str) -> Result<(), ApiError> {
        let limiter = match budget {
            Budget::Touchpoints => &self.touchpoints,
            _ => &self.creations,
        };
        limiter.check(&org_id.to_owned(), "this organization")
    }
}

struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(burst: u32, period: Duration) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Keyed {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
        }
    }

    fn check(&self, key: &K, whom: &str) -> Result<(), ApiError> {
        if self.limiter.len() >= MAX_KEYS {
            // Keys whose bucket is full again carry no state worth keeping.
            self.limiter.retain_recent();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            rate_limited(whom, wait)
        })
    }
}

/// The refusal, with a whole number of seconds to wait (at least 1).
pub fn rate_limited(whom: &str, wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    ApiError::new(
        ErrorCode::RateLimited,
        format!("too many requests from {whom}; retry in {seconds} s"),
    )
    .with_details(serde_json::json!({ "retry_after_seconds": seconds }))
}

/// The `Retry-After` seconds of a refusal, if it is one.
pub fn retry_after(err: &ApiError) -> Option<u64> {
    (err.code == ErrorCode::RateLimited)
        .then(|| err.details.get("retry_after_seconds").and_then(|v| v.as_u64()))
        .flatten()
}

/// One key per IPv4 address and per IPv6 /64 (what one subscriber usually gets); IPv4-mapped
/// IPv6 addresses count as their IPv4 address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_refused_with_a_retry_hint_and_keys_stay_apart() {
        let limits = RateLimits::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..60 {
            assert!(limits.check_address(Budget::Public, a).is_ok());
        }
        let refused = limits.check_address(Budget::Public, a).err();
        assert_eq!(refused.as_ref().map(|e| e.code), Some(ErrorCode::RateLimited));
        assert_eq!(refused.as_ref().and_then(retry_after), Some(1));
        assert!(limits.check_address(Budget::Public, b).is_ok());
        for _ in 0..20 {
            assert!(limits.check_org(Budget::Creations, "org_a").is_ok());
        }
        let refused = limits.check_org(Budget::Creations, "org_a").err();
        assert!(
            refused
                .as_ref()
                .and_then(retry_after)
                .is_some_and(|s| (1..=6).contains(&s))
        );
        assert!(limits.check_org(Budget::Creations, "org_b").is_ok());
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let limits = RateLimits::default();
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into()));
        let same_64: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::V4([0, 0, 0, 0].into()));
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into()));
        assert_eq!(address_key(first), address_key(same_64));
        assert_ne!(address_key(first), address_key(other_64));
        for _ in 0..60 {
            assert!(limits.check_address(Budget::Public, first).is_ok());
        }
        assert!(limits.check_address(Budget::Public, same_64).is_err());
        assert!(limits.check_address(Budget::Public, other_64).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into()));
        assert_eq!(address_key(mapped), IpAddr::V4([10, 0, 0, 1].into()));
    }
}
