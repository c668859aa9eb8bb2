//! Every rate limit of the edge, in one place (GCRA from `governor`, keyed, memory bounded).
//!
//! | budget | key | burst | sustained | variable | charged for |
//! |---|---|---|---|---|---|
//! | `public` | client address (IPv6 by /64) | 60 | 10/s | — | anonymous clicks (`POST /v1/touchpoints`, `/r/`), anonymous MCP calls |
//! | `token_lookups` | client address (IPv6 by /64) | 100 | 10/s | — | token checks that miss the cache (unknown, revoked or new tokens) |
//! | `creations` | org | 20 | 10/min | `AMBA_CREATIONS_PER_ORG` | signups and token creation by an authenticated org |
//! | `configuration` | org | 30 | 30/min | `AMBA_CONFIGURATION_PER_ORG` | configuration writes: programs create/update, invites (each e-mails), applications, invite accept/decline, affiliate approve/reject/remove/set parent, referral code rotation, token revocation, notification preferences |
//! | `reports` | org | 10,000 | 1,000/s | `AMBA_REPORTS_PER_ORG` | every conversion report: MCP, gRPC unary, and each valid report of a `ReportConversions` stream |
//! | `touchpoints` | org | 1,000 | 200/s | `AMBA_TOUCHPOINTS_PER_ORG` | touchpoints recorded with a token (gRPC, MCP) |
//! | `decisions` | org | 200 | 20/s | `AMBA_DECISIONS_PER_ORG` | clawbacks (MCP, gRPC), conversion approvals and rejections |
//! | `analytics` | org | 60 | 2/s | `AMBA_ANALYTICS_PER_ORG` | analytics, leaderboard and stats reads (aggregations) |
//! | `payouts` | org | 20 | 6/min | `AMBA_PAYOUTS_PER_ORG` | payout runs (dry runs too), funding setup, payout account creation and onboarding links (each reaches Stripe) |
//! | `reads` | org | 300 | 30/s | `AMBA_READS_PER_ORG` | every other authenticated tool: lists, gets, balances, payout quotes |
//!
//! A per-org variable is `<burst>,<sustained>` with the sustained rate as `<n>/s`, `<n>/min` or
//! `<n>/h` (a bare number is per second: `AMBA_TOUCHPOINTS_PER_ORG=1000,200`). Which MCP tool
//! spends which budget is [`tool_budget`]. A budget is charged once an MCP call's arguments
//! passed the tool's schema (a mistake an agent corrects costs nothing; a stream's invalid
//! reports neither) and before anything reaches a service, so a refused call records nothing.
//!
//! **Calls in flight per org** (`AMBA_IN_FLIGHT_PER_ORG`, 64 by default). Each service answers
//! at most 256 requests at once per replica (`RpcServer`), shared by every org; rate budgets
//! alone do not stop one org from holding all of them with slow calls (or streams kept open). So
//! every authenticated call holds slots of its org at this edge from the moment it is admitted
//! (token verified; for MCP, arguments checked) until it is answered: one for an MCP tool call or
//! a gRPC unary call (each makes its service requests one at a time), and for a
//! `ReportConversions` stream as many as it may have batch requests in flight (up to 8, as many
//! as are free when it opens, at least one; it sends that many at once for its whole life). A
//! call that finds none free is refused at once — `RATE_LIMITED`, retry in 1 s — rather than
//! queued, so a flood piles up neither here nor at the services, and another org's calls never
//! wait behind it. The cap lives here, not in the services' request loop, because the edge is
//! where an org's requests enter and its identity is known before anything is sent; an
//! `RpcServer` sees opaque payloads and has already spent a slot by the time it could tell whose
//! request it holds. Slots are counted per process: an org may hold this many at each edge
//! replica. Only orgs with calls in flight take memory (one map entry each).
//!
//! A refusal is `RATE_LIMITED` (HTTP 429 with `Retry-After`, gRPC `RESOURCE_EXHAUSTED` with
//! `retry-after` metadata, an MCP tool error, a stream report's own outcome) whose details carry
//! `retry_after_seconds`.

use amba_core::{ApiError, ErrorCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Keys kept per budget before idle ones are forgotten (each is a few dozen bytes).
const MAX_KEYS: usize = 100_000;

/// Slots an org may hold at once at this edge by default (`AMBA_IN_FLIGHT_PER_ORG`).
pub const IN_FLIGHT_PER_ORG: u32 = 64;

/// The variable that overrides [`IN_FLIGHT_PER_ORG`].
pub const IN_FLIGHT_VARIABLE: &str = "AMBA_IN_FLIGHT_PER_ORG";

/// What is being charged, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    Public,
    TokenLookups,
    Creations,
    Configuration,
    Reports,
    Touchpoints,
    Decisions,
    Analytics,
    Payouts,
    Reads,
}

impl Budget {
    /// The budgets kept per org, in the order of the table above.
    pub const PER_ORG: [Budget; 8] = [
        Budget::Creations,
        Budget::Configuration,
        Budget::Reports,
        Budget::Touchpoints,
        Budget::Decisions,
        Budget::Analytics,
        Budget::Payouts,
        Budget::Reads,
    ];

    /// Its name in the table, the README and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Budget::Public => "public",
            Budget::TokenLookups => "token_lookups",
            Budget::Creations => "creations",
            Budget::Configuration => "configuration",
            Budget::Reports => "reports",
            Budget::Touchpoints => "touchpoints",
            Budget::Decisions => "decisions",
            Budget::Analytics => "analytics",
            Budget::Payouts => "payouts",
            Budget::Reads => "reads",
        }
    }

    /// The variable that overrides a per-org budget.
    pub fn variable(self) -> Option<&'static str> {
        Some(match self {
            Budget::Public | Budget::TokenLookups => return None,
            Budget::Creations => "AMBA_CREATIONS_PER_ORG",
            Budget::Configuration => "AMBA_CONFIGURATION_PER_ORG",
            Budget::Reports => "AMBA_REPORTS_PER_ORG",
            Budget::Touchpoints => "AMBA_TOUCHPOINTS_PER_ORG",
            Budget::Decisions => "AMBA_DECISIONS_PER_ORG",
            Budget::Analytics => "AMBA_ANALYTICS_PER_ORG",
            Budget::Payouts => "AMBA_PAYOUTS_PER_ORG",
            Budget::Reads => "AMBA_READS_PER_ORG",
        })
    }

    /// The budget when nothing overrides it.
    pub fn default_rate(self) -> Rate {
        match self {
            Budget::Public => Rate::new(60, 10, SECOND),
            Budget::TokenLookups => Rate::new(100, 10, SECOND),
            Budget::Creations => Rate::new(20, 10, MINUTE),
            Budget::Configuration => Rate::new(30, 30, MINUTE),
            // A shop reporting 500 sales a second stays well inside it, with room for bursts; a
            // full `ReportConversions` stream (10,000 reports) fits in the burst.
            Budget::Reports => Rate::new(10_000, 1_000, SECOND),
            Budget::Touchpoints => Rate::new(1_000, 200, SECOND),
            Budget::Decisions => Rate::new(200, 20, SECOND),
            Budget::Analytics => Rate::new(60, 2, SECOND),
            Budget::Payouts => Rate::new(20, 6, MINUTE),
            Budget::Reads => Rate::new(300, 30, SECOND),
        }
    }
}

/// The budget an authenticated call of an MCP tool spends; `None` for a name that is no tool.
/// Every tool is listed (a unit test of the MCP server checks it).
pub fn tool_budget(tool: &str) -> Option<Budget> {
    Some(match tool.strip_prefix("amba_affiliate_")? {
        "signup" | "tokens_create" => Budget::Creations,
        "programs_create"
        | "programs_update"
        | "invite"
        | "invite_claim"
        | "affiliate_code_set"
        | "affiliate_approve"
        | "affiliate_reject"
        | "affiliate_remove"
        | "affiliate_set_parent"
        | "my_program_apply"
        | "my_invite_accept"
        | "my_invite_decline"
        | "my_referral_generate"
        | "tokens_revoke"
        | "notifications_update"
        | "webhook_create"
        | "webhook_delete"
        | "webhook_test"
        | "webhook_rotate" => Budget::Configuration,
        "conversion_report" => Budget::Reports,
        "touchpoint_record" => Budget::Touchpoints,
        "conversion_clawback"
        | "conversion_approve"
        | "conversion_reject"
        | "conversion_assign"
        | "conversions_decide"
        | "commission_release" => Budget::Decisions,
        "analytics_get" | "leaderboard_get" | "my_stats_get" | "conversions_export" | "commissions_export" => {
            Budget::Analytics
        }
        "payout_run" | "program_funding_setup" | "my_payout_create" | "my_payout_onboarding" => Budget::Payouts,
        "programs_get"
        | "programs_list"
        | "affiliates_list"
        | "my_invites_list"
        | "my_programs_list"
        | "conversions_list"
        | "my_conversions_list"
        | "commission_explain"
        | "events_list"
        | "webhook_list"
        | "tokens_list"
        | "notifications_get"
        | "my_notifications_list"
        | "payouts_list"
        | "my_balance_get"
        | "my_payout_request" => Budget::Reads,
        _ => return None,
    })
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);

/// A budget: `burst` at once, then `count` per `per` sustained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub const fn new(burst: u32, count: u32, per: Duration) -> Rate {
        Rate { burst, count, per }
    }

    /// `<burst>,<n>[/s|/min|/h]` (a bare `<n>` is per second), both at least 1.
    pub fn parse(text: &str) -> Option<Rate> {
        let (burst, sustained) = text.split_once(',')?;
        let burst = burst.trim().replace('_', "").parse::<u32>().ok().filter(|b| *b > 0)?;
        let (count, per) = match sustained.split_once('/') {
            None => (sustained, SECOND),
            Some((count, unit)) => (
                count,
                match unit.trim() {
                    "s" => SECOND,
                    "min" => MINUTE,
                    "h" => HOUR,
                    _ => return None,
                },
            ),
        };
        let count = count.trim().replace('_', "").parse::<u32>().ok().filter(|c| *c > 0)?;
        Some(Rate { burst, count, per })
    }

    /// The time one request's worth of budget takes to come back.
    fn period(self) -> Duration {
        (self.per / self.count.max(1)).max(Duration::from_nanos(1))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "min",
            3_600 => "h",
            _ => "s",
        };
        write!(f, "{},{}/{unit}", self.burst, self.count)
    }
}

/// The per-org budgets and the per-org cap of calls in flight, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgBudgets {
    rates: HashMap<Budget, Rate>,
    pub in_flight: u32,
}

impl Default for OrgBudgets {
    fn default() -> Self {
        OrgBudgets {
            rates: Budget::PER_ORG.iter().map(|b| (*b, b.default_rate())).collect(),
            in_flight: IN_FLIGHT_PER_ORG,
        }
    }
}

impl OrgBudgets {
    /// The budgets from configuration variables (`get` answers a variable's value, if set); a
    /// bad value is `Err((variable, problem))`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<OrgBudgets, (&'static str, String)> {
        let mut budgets = OrgBudgets::default();
        for budget in Budget::PER_ORG {
            let Some(variable) = budget.variable() else {
                continue;
            };
            if let Some(value) = get(variable) {
                let rate = Rate::parse(&value).ok_or_else(|| {
                    (
                        variable,
                        format!(
                            "{value:?} is not <burst>,<sustained> such as {} (sustained: <n>/s, <n>/min or <n>/h; both at least 1)",
                            budget.default_rate()
                        ),
                    )
                })?;
                budgets.set(budget, rate);
            }
        }
        if let Some(value) = get(IN_FLIGHT_VARIABLE) {
            budgets.in_flight = value.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                (
                    IN_FLIGHT_VARIABLE,
                    format!("{value:?} is not a whole number of calls (1 or more)"),
                )
            })?;
        }
        Ok(budgets)
    }

    pub fn set(&mut self, budget: Budget, rate: Rate) {
        self.rates.insert(budget, rate);
    }

    pub fn rate(&self, budget: Budget) -> Rate {
        self.rates
            .get(&budget)
            .copied()
            .unwrap_or_else(|| budget.default_rate())
    }
}

pub struct RateLimits {
    public: Keyed<IpAddr>,
    token_lookups: Keyed<IpAddr>,
    per_org: HashMap<Budget, Keyed<String>>,
    in_flight: InFlight,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits::new(&OrgBudgets::default())
    }
}

impl RateLimits {
    /// The address budgets, and the per-org budgets as configured.
    pub fn new(budgets: &OrgBudgets) -> Self {
        RateLimits {
            public: Keyed::new(Budget::Public.default_rate()),
            token_lookups: Keyed::new(Budget::TokenLookups.default_rate()),
            per_org: Budget::PER_ORG
                .iter()
                .map(|budget| (*budget, Keyed::new(budgets.rate(*budget))))
                .collect(),
            in_flight: InFlight::new(budgets.in_flight),
        }
    }

    /// Charges one request from `client` (anonymous callers, token lookups).
    pub fn check_address(&self, budget: Budget, client: IpAddr) -> Result<(), ApiError> {
        let (budget, limiter) = match budget {
            Budget::TokenLookups => (budget, &self.token_lookups),
            _ => (Budget::Public, &self.public),
        };
        limiter
            .check(&address_key(client), "this address")
            .inspect_err(|_| count_refusal(budget.name()))
    }

    /// Charges one request of an authenticated org.
    pub fn check_org(&self, budget: Budget, org_id: &str) -> Result<(), ApiError> {
        self.charge_org(budget, org_id, 1)
            .inspect_err(|_| count_refusal(budget.name()))
    }

    /// Charges `n` requests of an authenticated org (a stream's reports): all at once when they
    /// fit, else one by one, so those that fit still go. One answer per request, in order.
    pub fn check_org_each(&self, budget: Budget, org_id: &str, n: usize) -> Vec<Result<(), ApiError>> {
        match u32::try_from(n).map(|n| self.charge_org(budget, org_id, n)) {
            Ok(Ok(())) => vec![Ok(()); n],
            _ => (0..n).map(|_| self.check_org(budget, org_id)).collect(),
        }
    }

    /// `n` requests at once: all of them, or none.
    fn charge_org(&self, budget: Budget, org_id: &str, n: u32) -> Result<(), ApiError> {
        match self.per_org.get(&budget) {
            Some(limiter) => limiter.check_n(&org_id.to_owned(), n, "this organization"),
            // Only the address budgets are missing here; never charge an org for them.
            None => Ok(()),
        }
    }

    /// Takes up to `wanted` of the org's in-flight slots (at least one), held until the
    /// returned [`Slots`] is dropped; none free is `RATE_LIMITED`.
    pub fn enter(&self, org_id: &str, wanted: u32) -> Result<Slots, ApiError> {
        self.in_flight
            .enter(org_id, wanted)
            .inspect_err(|_| count_refusal("in_flight"))
    }
}

struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Rate) -> Self {
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(rate.period())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Keyed {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
        }
    }

    fn check(&self, key: &K, whom: &str) -> Result<(), ApiError> {
        self.check_n(key, 1, whom)
    }

    fn check_n(&self, key: &K, n: u32, whom: &str) -> Result<(), ApiError> {
        if self.limiter.len() >= MAX_KEYS {
            // Keys whose bucket is full again carry no state worth keeping.
            self.limiter.retain_recent();
        }
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match self.limiter.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(rate_limited(
                whom,
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            // More than the whole burst at once: never all together; the caller may charge
            // them one by one.
            Err(_) => Err(rate_limited(whom, Duration::from_secs(1))),
        }
    }
}

/// Calls in flight per org at this edge: a count per org with calls in flight, nothing else.
struct InFlight {
    per_org: u32,
    held: Arc<Mutex<HashMap<String, u32>>>,
}

impl InFlight {
    fn new(per_org: u32) -> Self {
        InFlight {
            per_org: per_org.max(1),
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn enter(&self, org_id: &str, wanted: u32) -> Result<Slots, ApiError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let in_use = held.get(org_id).copied().unwrap_or(0);
        let taken = wanted.max(1).min(self.per_org.saturating_sub(in_use));
        if taken == 0 {
            return Err(rate_limited(
                &format!("this organization ({} calls in flight at once at most)", self.per_org),
                Duration::from_secs(1),
            ));
        }
        *held.entry(org_id.to_owned()).or_insert(0) += taken;
        slots_in_use(f64::from(taken));
        Ok(Slots {
            held: self.held.clone(),
            org_id: org_id.to_owned(),
            count: taken,
        })
    }
}

/// In-flight slots of one org, given back when dropped.
#[must_use = "the slots are given back as soon as this is dropped"]
pub struct Slots {
    held: Arc<Mutex<HashMap<String, u32>>>,
    org_id: String,
    count: u32,
}

impl Slots {
    /// How many slots were taken (between 1 and what was asked for).
    pub fn count(&self) -> u32 {
        self.count
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(in_use) = held.get_mut(&self.org_id) {
            *in_use = in_use.saturating_sub(self.count);
            if *in_use == 0 {
                held.remove(&self.org_id);
            }
        }
        slots_in_use(-f64::from(self.count));
    }
}

/// `amba_rate_limited_total{budget}`: refusals per budget (`in_flight` for the slots).
fn count_refusal(budget: &'static str) {
    amba_telemetry::metrics::counter!("amba_rate_limited_total", "budget" => budget).increment(1);
}

/// `amba_edge_org_slots_in_use`: in-flight slots held by every org together at this edge.
fn slots_in_use(change: f64) {
    amba_telemetry::metrics::gauge!("amba_edge_org_slots_in_use").increment(change);
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
    fn every_per_org_budget_is_its_own_and_each_orgs_own() {
        let mut budgets = OrgBudgets::default();
        for budget in Budget::PER_ORG {
            budgets.set(budget, Rate::new(3, 1, HOUR));
        }
        let limits = RateLimits::new(&budgets);
        for budget in Budget::PER_ORG {
            for _ in 0..3 {
                assert!(limits.check_org(budget, "org_a").is_ok(), "{budget:?}");
            }
            let refused = limits.check_org(budget, "org_a").err();
            assert!(
                refused.as_ref().and_then(retry_after).is_some_and(|s| s > 3_000),
                "{budget:?}: {refused:?}"
            );
            assert!(limits.check_org(budget, "org_b").is_ok(), "{budget:?}");
        }
        // Several at once (a stream's reports): those that fit, in order, the rest refused.
        let limits = RateLimits::new(&budgets);
        let each = |org: &str, n: usize| -> Vec<bool> {
            limits
                .check_org_each(Budget::Reports, org, n)
                .iter()
                .map(Result::is_ok)
                .collect()
        };
        assert_eq!(each("org_a", 2), [true, true]);
        assert_eq!(each("org_a", 2), [true, false]);
        assert_eq!(each("org_a", 1), [false]);
        assert_eq!(each("org_b", 5), [true, true, true, false, false]);
        assert!(each("org_c", 0).is_empty());
    }

    #[test]
    fn in_flight_slots_are_capped_per_org_and_given_back() -> Result<(), ApiError> {
        let limits = RateLimits::new(&OrgBudgets {
            in_flight: 3,
            ..OrgBudgets::default()
        });
        let stream = limits.enter("org_a", 8)?;
        assert_eq!(
            stream.count(),
            3,
            "a stream takes what is free, up to what it asked for"
        );
        let refused = limits.enter("org_a", 1).err();
        assert_eq!(refused.as_ref().and_then(retry_after), Some(1));
        let other = limits.enter("org_b", 1)?;
        drop(stream);
        let one = limits.enter("org_a", 1)?;
        let two = limits.enter("org_a", 8)?;
        assert_eq!((one.count(), two.count()), (1, 2));
        assert!(limits.enter("org_a", 1).is_err());
        drop((one, two, other));
        assert!(limits.in_flight.held.lock().is_ok_and(|held| held.is_empty()));
        Ok(())
    }

    #[test]
    fn budgets_parse_from_variables() {
        assert_eq!(Rate::parse("1000,200"), Some(Rate::new(1_000, 200, SECOND)));
        assert_eq!(Rate::parse(" 30 , 30/min "), Some(Rate::new(30, 30, MINUTE)));
        assert_eq!(Rate::parse("3,1/h"), Some(Rate::new(3, 1, HOUR)));
        assert_eq!(Rate::parse("10_000,1_000/s"), Some(Rate::new(10_000, 1_000, SECOND)));
        for bad in ["", "5", "0,1", "5,0", "5,1/day", "-1,3", "a,b"] {
            assert_eq!(Rate::parse(bad), None, "{bad:?}");
        }
        for budget in Budget::PER_ORG {
            let rate = budget.default_rate();
            assert_eq!(Rate::parse(&rate.to_string()), Some(rate));
        }
        let vars: HashMap<&str, &str> = [("AMBA_REPORTS_PER_ORG", "5,1/h"), ("AMBA_IN_FLIGHT_PER_ORG", "2")].into();
        let get = |name: &str| vars.get(name).map(|v| (*v).to_owned());
        let budgets = OrgBudgets::from_vars(get).unwrap_or_default();
        assert_eq!(budgets.rate(Budget::Reports), Rate::new(5, 1, HOUR));
        assert_eq!(budgets.rate(Budget::Reads), Budget::Reads.default_rate());
        assert_eq!(budgets.in_flight, 2);
        let bad = OrgBudgets::from_vars(|name| (name == "AMBA_PAYOUTS_PER_ORG").then(|| "many".to_owned()));
        assert_eq!(bad.err().map(|(variable, _)| variable), Some("AMBA_PAYOUTS_PER_ORG"));
        let bad = OrgBudgets::from_vars(|name| (name == IN_FLIGHT_VARIABLE).then(|| "0".to_owned()));
        assert_eq!(bad.err().map(|(variable, _)| variable), Some(IN_FLIGHT_VARIABLE));
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
