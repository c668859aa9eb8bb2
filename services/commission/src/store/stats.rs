//! Per-enrollment daily figures by sale day (`daily_stats`).

use super::*;
use sqlx::PgConnection;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsBump {
    pub clicks: i64,
    pub conversions: i64,
    pub click_conversions: i64,
    pub approved: i64,
    pub clawed_back: i64,
    pub revenue_minor: i64,
    pub commission_minor: i64,
    pub paid_minor: i64,
    pub clawed_back_minor: i64,
    pub refunded_minor: i64,
}

impl std::ops::AddAssign<&StatsBump> for StatsBump {
    fn add_assign(&mut self, other: &StatsBump) {
        self.clicks += other.clicks;
        self.conversions += other.conversions;
        self.click_conversions += other.click_conversions;
        self.approved += other.approved;
        self.clawed_back += other.clawed_back;
        self.revenue_minor += other.revenue_minor;
        self.commission_minor += other.commission_minor;
        self.paid_minor += other.paid_minor;
        self.clawed_back_minor += other.clawed_back_minor;
        self.refunded_minor += other.refunded_minor;
    }
}

/// One row of `daily_stats`: (program, enrollment, day).
pub type StatsKey = (String, String, chrono::NaiveDate);

/// Figures to add to `daily_stats`, summed per row first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsBumps(pub BTreeMap<StatsKey, StatsBump>);

impl StatsBumps {
    pub fn add(&mut self, program_id: &str, enrollment_id: &str, day: chrono::NaiveDate, bump: &StatsBump) {
        let key = (program_id.to_owned(), enrollment_id.to_owned(), day);
        *self.0.entry(key).or_default() += bump;
    }
}

/// Adds to one enrollment's row of the day (the rollup analytics read, never recomputed).
pub async fn bump_stats(
    conn: &mut PgConnection,
    program_id: &str,
    enrollment_id: &str,
    at_micros: i64,
    b: &StatsBump,
) -> Result<(), sqlx::Error> {
    let mut bumps = StatsBumps::default();
    bumps.add(program_id, enrollment_id, day_of(at_micros), b);
    bump_all_stats(conn, &bumps).await
}

/// Adds every row's figures with one statement (rows in key order: a stable lock order).
pub async fn bump_all_stats(conn: &mut PgConnection, bumps: &StatsBumps) -> Result<(), sqlx::Error> {
    if bumps.0.is_empty() {
        return Ok(());
    }
    let rows = &bumps.0;
    let key = |f: fn(&StatsKey) -> &str| rows.keys().map(f).collect::<Vec<&str>>();
    let days: Vec<chrono::NaiveDate> = rows.keys().map(|k| k.2).collect();
    let figure = |f: fn(&StatsBump) -> i64| rows.values().map(f).collect::<Vec<i64>>();
    sqlx::query(
        "INSERT INTO daily_stats AS s (program_id, enrollment_id, day, clicks, conversions, approved, revenue_minor, \
         commission_minor, paid_minor, clawed_back_minor, refunded_minor, click_conversions, clawed_back) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::date[], $4::bigint[], $5::bigint[], $6::bigint[], \
         $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[]) \
         ON CONFLICT (program_id, enrollment_id, day) DO UPDATE SET clicks = s.clicks + EXCLUDED.clicks, \
         conversions = s.conversions + EXCLUDED.conversions, approved = s.approved + EXCLUDED.approved, \
         click_conversions = s.click_conversions + EXCLUDED.click_conversions, \
         clawed_back = s.clawed_back + EXCLUDED.clawed_back, \
         revenue_minor = s.revenue_minor + EXCLUDED.revenue_minor, \
         commission_minor = s.commission_minor + EXCLUDED.commission_minor, \
         paid_minor = s.paid_minor + EXCLUDED.paid_minor, \
         clawed_back_minor = s.clawed_back_minor + EXCLUDED.clawed_back_minor, \
         refunded_minor = s.refunded_minor + EXCLUDED.refunded_minor",
    )
    .bind(key(|k| &k.0))
    .bind(key(|k| &k.1))
    .bind(&days)
    .bind(figure(|b| b.clicks))
    .bind(figure(|b| b.conversions))
    .bind(figure(|b| b.approved))
    .bind(figure(|b| b.revenue_minor))
    .bind(figure(|b| b.commission_minor))
    .bind(figure(|b| b.paid_minor))
    .bind(figure(|b| b.clawed_back_minor))
    .bind(figure(|b| b.refunded_minor))
    .bind(figure(|b| b.click_conversions))
    .bind(figure(|b| b.clawed_back))
    .execute(conn)
    .await?;
    Ok(())
}
