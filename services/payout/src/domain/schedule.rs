//! Settlement periods: weekly is the ISO week (UTC), monthly the calendar month (UTC). A program
//! with a schedule is settled once per period, by the first settlement tick inside it.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

/// The period a tick at `at` settles for `schedule`, e.g. `2026-W49` or `2026-12`; `None` for
/// a manual schedule.
pub fn period(schedule: &str, at: DateTime<Utc>) -> Option<String> {
    match schedule {
        "weekly" => {
            let week = at.iso_week();
            Some(format!("{}-W{:02}", week.year(), week.week()))
        }
        "monthly" => Some(format!("{}-{:02}", at.year(), at.month())),
        _ => None,
    }
}

/// When the next period after `at` starts: the next Monday 00:00 UTC or the next 1st 00:00 UTC.
pub fn next_run(schedule: &str, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let day = at.date_naive();
    let next = match schedule {
        "weekly" => day + Duration::days(7 - i64::from(day.weekday().num_days_from_monday())),
        "monthly" => {
            let (year, month) = if day.month() == 12 {
                (day.year() + 1, 1)
            } else {
                (day.year(), day.month() + 1)
            };
            NaiveDate::from_ymd_opt(year, month, 1)?
        }
        _ => return None,
    };
    Utc.from_local_datetime(&next.and_hms_opt(0, 0, 0)?).single()
}

/// The event id (and Nats-Msg-Id) of the settlement tick at `at`: a publish retried for the same
/// instant is stored once; every other tick is applied, and settles what is due and not settled
/// yet (a run per program and period is unique, so extra ticks pay nothing twice).
pub fn tick_id(at: DateTime<Utc>) -> String {
    format!("tick:{}", at.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn periods_and_next_runs() {
        // 2026-12-31 is a Thursday in ISO week 53 of 2026; 2027-01-01 still belongs to it.
        assert_eq!(
            period("weekly", at("2026-12-31T23:00:00Z")).as_deref(),
            Some("2026-W53")
        );
        assert_eq!(
            period("weekly", at("2027-01-01T01:00:00Z")).as_deref(),
            Some("2026-W53")
        );
        assert_eq!(
            period("monthly", at("2027-01-01T01:00:00Z")).as_deref(),
            Some("2027-01")
        );
        assert_eq!(period("manual", at("2027-01-01T01:00:00Z")), None);
        assert_eq!(
            next_run("weekly", at("2026-12-02T10:00:00Z")),
            Some(at("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            next_run("weekly", at("2026-12-07T00:00:00Z")),
            Some(at("2026-12-14T00:00:00Z"))
        );
        assert_eq!(
            next_run("monthly", at("2026-12-02T10:00:00Z")),
            Some(at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(tick_id(at("2026-12-02T10:00:00Z")), "tick:2026-12-02T10:00:00.000000Z");
        assert_ne!(tick_id(at("2026-12-02T10:00:00Z")), tick_id(at("2026-12-02T10:01:00Z")));
    }
}
