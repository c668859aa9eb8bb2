//! Reference exchange rates, with their history, and the rates a batch of sales converts at.

use crate::domain::fx::{DayRates, MAX_RATE_AGE_DAYS, Rates};
use chrono::NaiveDate;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use std::collections::HashMap;
use std::str::FromStr;

/// Stores a feed's days; a day already stored keeps its rates (published rates never change).
/// Returns how many rates were new.
pub async fn store_rates(conn: &mut PgConnection, days: &[DayRates], source: &str) -> Result<u64, sqlx::Error> {
    let mut currencies = Vec::new();
    let mut dates = Vec::new();
    let mut rates = Vec::new();
    for day in days {
        for (currency, rate) in &day.rates {
            currencies.push(currency.as_str());
            dates.push(day.date);
            rates.push(rate.to_string());
        }
    }
    let done = sqlx::query(
        "INSERT INTO fx_rates (currency, rate_date, rate, source) \
         SELECT c, d, r::numeric, $4 FROM UNNEST($1::text[], $2::date[], $3::text[]) AS u(c, d, r) \
         ON CONFLICT (currency, rate_date) DO NOTHING",
    )
    .bind(&currencies)
    .bind(&dates)
    .bind(&rates)
    .bind(source)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// One sale to convert: its index, its currency, the program's and the sale's date.
pub struct RateQuery {
    pub index: i32,
    pub sale_currency: String,
    pub program_currency: String,
    pub day: NaiveDate,
}

/// For each query, both currencies' rates of the latest reference day on or before the sale's
/// date (at most [`MAX_RATE_AGE_DAYS`] before it) that has both; absent when there is none.
pub async fn rates(conn: &mut PgConnection, queries: &[RateQuery]) -> Result<HashMap<i32, Rates>, sqlx::Error> {
    if queries.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i32, NaiveDate, String, String, String)> = sqlx::query_as(
        "SELECT q.idx, r.rate_date, r.sale_rate::text, r.program_rate::text, r.source \
         FROM UNNEST($1::int[], $2::text[], $3::text[], $4::date[]) AS q(idx, sale, program, day) \
         CROSS JOIN LATERAL ( \
           SELECT s.rate_date, s.rate AS sale_rate, p.rate AS program_rate, s.source \
           FROM fx_rates s JOIN fx_rates p ON p.currency = q.program AND p.rate_date = s.rate_date \
           WHERE s.currency = q.sale AND s.rate_date <= q.day AND s.rate_date >= q.day - $5::int \
           ORDER BY s.rate_date DESC LIMIT 1) r",
    )
    .bind(queries.iter().map(|q| q.index).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.sale_currency.as_str()).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.program_currency.as_str()).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.day).collect::<Vec<_>>())
    .bind(i32::try_from(MAX_RATE_AGE_DAYS).unwrap_or(4))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(idx, date, sale, program, source)| {
            Some((
                idx,
                Rates {
                    date,
                    sale_per_eur: Decimal::from_str(&sale).ok()?,
                    program_per_eur: Decimal::from_str(&program).ok()?,
                    source,
                },
            ))
        })
        .collect())
}
