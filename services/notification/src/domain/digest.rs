//! How often later commissions are summed into one e-mail, and which period a commission
//! recorded at a given time belongs to (pure: the consumer and the digest job share it).

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
