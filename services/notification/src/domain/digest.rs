//! Digests: which kinds of e-mail are summed per period instead of sent one by one, how often
//! (the period an entry recorded at a given time belongs to), and what one digest holds
//! (pure: the consumer, the digest job and the templates share it).

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc};

/// An org's choice for `conversion_approved` after its first commission in a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    /// 10-minute windows: at most one mail per 10 minutes.
    Instant,
    /// The UTC day (the default).
    Daily,
    /// The ISO week (Monday to Monday, UTC).
    Weekly,
    Off,
}

/// The instant window.
const WINDOW_SECONDS: i64 = 600;

impl Frequency {
    pub const NAMES: &'static [&'static str] = &["instant", "daily", "weekly", "off"];

    pub fn parse(name: &str) -> Option<Frequency> {
        match name {
            "instant" => Some(Frequency::Instant),
            "daily" => Some(Frequency::Daily),
            "weekly" => Some(Frequency::Weekly),
            "off" => Some(Frequency::Off),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Frequency::Instant => "instant",
            Frequency::Daily => "daily",
            Frequency::Weekly => "weekly",
            Frequency::Off => "off",
        }
    }

    /// The period `at` falls in: its key (unique per org in `digests`) and when it ends.
    /// `None` when off.
    pub fn period(self, at: DateTime<Utc>) -> Option<(String, DateTime<Utc>)> {
        let midnight = |date: chrono::NaiveDate| Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN));
        match self {
            Frequency::Off => None,
            Frequency::Instant => {
                let start = at.timestamp().div_euclid(WINDOW_SECONDS) * WINDOW_SECONDS;
                let start = DateTime::<Utc>::from_timestamp(start, 0)?;
                Some((
                    format!("instant:{}", start.format("%Y-%m-%dT%H:%M")),
                    start + Duration::seconds(WINDOW_SECONDS),
                ))
            }
            Frequency::Daily => {
                let day = at.date_naive();
                Some((format!("daily:{day}"), midnight(day) + Duration::days(1)))
            }
            Frequency::Weekly => {
                let week = at.iso_week();
                let monday = at.date_naive() - Duration::days(i64::from(at.weekday().num_days_from_monday()));
                Some((
                    format!("weekly:{}-W{:02}", week.year(), week.week()),
                    midnight(monday) + Duration::days(7),
                ))
            }
        }
    }
}

/// Kinds summed into digests, with the frequency an org gets until it chooses one. The rest of
/// [`super::templates::KINDS`] is sent at once.
pub const DIGEST_KINDS: &[(&str, Frequency)] = &[
    // After the first commission in a program, which is e-mailed at once.
    ("conversion_approved", Frequency::Daily),
    // A sale the owner rejected, with the owner's reason.
    ("conversion_rejected", Frequency::Daily),
    // Owners: applications to a program that approves enrollments by hand.
    ("application_received", Frequency::Daily),
    // Owners: conversions still pending a day after they were reported.
    ("approvals_waiting", Frequency::Daily),
    // Owners: a payout run's outcome once every item is final.
    ("payout_run_summary", Frequency::Instant),
];

/// The frequency `kind` has when nobody chose one; `None` for kinds sent at once.
pub fn default_frequency(kind: &str) -> Option<Frequency> {
    DIGEST_KINDS.iter().find(|(k, _)| *k == kind).map(|(_, f)| *f)
}

/// One org's digest for one period: a section per kind, a line per program (sorted by program
/// name). Empty sections are left out of the e-mail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Digest {
    pub approved: Vec<ApprovedLine>,
    pub rejected: Vec<RejectedLine>,
    pub applications: Vec<ApplicationsLine>,
    pub waiting: Vec<WaitingLine>,
    pub payout_runs: Vec<PayoutRunLine>,
}

impl Digest {
    pub fn is_empty(&self) -> bool {
        self.approved.is_empty()
            && self.rejected.is_empty()
            && self.applications.is_empty()
            && self.waiting.is_empty()
            && self.payout_runs.is_empty()
    }
}

/// Approved commissions in one program and currency.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ApprovedLine {
    pub program: String,
    pub currency: String,
    pub count: i64,
    pub commission_minor: i64,
    /// The largest sale amounts, largest first (at most 3).
    pub largest_sales_minor: Vec<i64>,
}

/// Sales the owner rejected in one program and currency, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedLine {
    pub program: String,
    pub currency: String,
    pub count: i64,
    /// The rejected sales' amounts summed.
    pub sales_minor: i64,
    /// (the owner's reason, how many sales it was given for), most frequent first (at most 5);
    /// an empty reason is a rejection without one.
    pub reasons: Vec<(String, i64)>,
}

/// New applications to one program (owner's digest).
#[derive(Debug, Clone, PartialEq)]
pub struct ApplicationsLine {
    pub program: String,
    pub count: i64,
    /// The applicants' organization names, oldest first (at most 5).
    pub applicants: Vec<String>,
}

/// Conversions of one program pending for more than a day (owner's digest).
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingLine {
    pub program: String,
    pub count: i64,
    /// When the oldest of them was reported.
    pub oldest_reported_at: DateTime<Utc>,
}

/// A finished payout run (owner's digest).
#[derive(Debug, Clone, PartialEq)]
pub struct PayoutRunLine {
    pub program: String,
    pub currency: String,
    pub payout_run_id: String,
    pub paid_count: i64,
    /// What the paid affiliates received.
    pub paid_net_minor: i64,
    /// The platform's fees on the paid items.
    pub fee_minor: i64,
    /// Affiliates' debts netted from the paid items.
    pub debt_minor: i64,
    pub failed_count: i64,
    /// What could not be paid, and stays payable for the next run.
    pub failed_gross_minor: i64,
    /// Why items failed, most frequent first (at most 5).
    pub failure_reasons: Vec<String>,
    /// Charged to the owner's payment method for the run.
    pub charged_minor: i64,
    /// Given back to the owner because it could not be paid out.
    pub refunded_minor: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_end_after_what_they_hold() {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 23, 59, 30)
            .single()
            .unwrap_or_default();
        let (key, end) = Frequency::Daily.period(at).unwrap_or_default();
        assert_eq!(key, "daily:2026-01-01");
        assert_eq!(
            end,
            Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).single().unwrap_or_default()
        );
        // 2026-01-01 is a Thursday of ISO week 2026-W01 (Monday 2025-12-29).
        let (key, end) = Frequency::Weekly.period(at).unwrap_or_default();
        assert_eq!(key, "weekly:2026-W01");
        assert_eq!(
            end,
            Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single().unwrap_or_default()
        );
        let (key, end) = Frequency::Instant.period(at).unwrap_or_default();
        assert_eq!(key, "instant:2026-01-01T23:50");
        assert_eq!(
            end,
            Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).single().unwrap_or_default()
        );
        assert_eq!(Frequency::Off.period(at), None);
        for name in Frequency::NAMES {
            assert_eq!(Frequency::parse(name).map(Frequency::name), Some(*name));
        }
        assert_eq!(Frequency::parse("hourly"), None);
    }
}
