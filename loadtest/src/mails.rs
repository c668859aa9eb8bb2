//! The e-mails of a run: every e-mail the notification service writes is a row of
//! `notification.emails` (sent afterwards, asynchronously), so the rows created since the run
//! started, by status and by template, are what the run made it send.

use chrono::{DateTime, Utc};
use sqlx::Connection;

/// The database's `now()`: the run's bounds are compared with `created_at`, set by the database.
pub async fn database_now(database_url: &str) -> anyhow::Result<DateTime<Utc>> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(&mut conn).await?)
}

pub struct Mails {
    /// Created since the run started (the setup's invitations and welcomes included).
    pub total: i64,
    /// Of them, created since the load phases began.
    pub since_load: i64,
    /// Of them, still waiting to be sent.
    pub queued: i64,
    pub digests: i64,
    /// (status, count), most first.
    pub by_status: Vec<(String, i64)>,
    /// (template, count), most first, the first few.
    pub by_template: Vec<(String, i64)>,
}

/// Templates named in the summary; the rest are added up as "others".
const TOP_TEMPLATES: usize = 5;

/// The e-mails created since `run_from` (`load_from`: when the load phases began); `None`: the
/// system has no `notification.emails` (one from before e-mails were kept).
pub async fn count(
    database_url: &str,
    run_from: DateTime<Utc>,
    load_from: DateTime<Utc>,
) -> anyhow::Result<Option<Mails>> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('notification.emails') IS NOT NULL")
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    let (total, since_load, queued, digests): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE created_at >= $2), count(*) FILTER (WHERE status = 'queued'), \
           count(*) FILTER (WHERE template = 'digest') \
         FROM notification.emails WHERE created_at >= $1",
    )
    .bind(run_from)
    .bind(load_from)
    .fetch_one(&mut conn)
    .await?;
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM notification.emails WHERE created_at >= $1 \
         GROUP BY status ORDER BY count(*) DESC, status",
    )
    .bind(run_from)
    .fetch_all(&mut conn)
    .await?;
    let by_template: Vec<(String, i64)> = sqlx::query_as(
        "SELECT template, count(*) FROM notification.emails WHERE created_at >= $1 \
         GROUP BY template ORDER BY count(*) DESC, template",
    )
    .bind(run_from)
    .fetch_all(&mut conn)
    .await?;
    Ok(Some(Mails {
        total,
        since_load,
        queued,
        digests,
        by_status,
        by_template,
    }))
}

/// Mails per 100 conversions.
fn per_100(mails: i64, conversions: i64) -> String {
    if conversions > 0 {
        format!("{:.3}", 100.0 * mails as f64 / conversions as f64)
    } else {
        "n/a".to_owned()
    }
}

/// "a 3, b 2, others 1": the first `top` of `counts`, the rest added up.
fn listing(counts: &[(String, i64)], top: usize) -> String {
    let mut parts: Vec<String> = counts.iter().take(top).map(|(k, n)| format!("{k} {n}")).collect();
    let others: i64 = counts.iter().skip(top).map(|(_, n)| n).sum();
    if others > 0 {
        parts.push(format!("others {others}"));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The summary lines; `approved`: the run's program's approved conversions (attribution's count).
pub fn summary(mails: Option<&Mails>, approved: i64) -> Vec<String> {
    let Some(m) = mails else {
        return vec!["e-mails: not measured (the system has no notification.emails)".to_owned()];
    };
    vec![
        format!(
            "e-mails written during the run: {} ({} of them since the load phases began, {} digests); by status: {}; by template: {}",
            m.total,
            m.since_load,
            m.digests,
            listing(&m.by_status, usize::MAX),
            listing(&m.by_template, TOP_TEMPLATES)
        ),
        format!(
            "e-mails per 100 approved conversions: {} since the load phases began, {} with the setup's ({approved} approved conversions of the run's program, attribution's count)",
            per_100(m.since_load, approved),
            per_100(m.total, approved)
        ),
        format!(
            "e-mails still queued at the end: {} (they are sent asynchronously)",
            m.queued
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_top_templates_and_the_rate() {
        let counts = |v: &[(&str, i64)]| v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect();
        let mails = Mails {
            total: 1_012,
            since_load: 1_000,
            queued: 9,
            digests: 0,
            by_status: counts(&[("sent", 1_003), ("queued", 9)]),
            by_template: counts(&[("a", 6), ("b", 5), ("c", 4), ("d", 3), ("e", 2), ("f", 1), ("g", 1)]),
        };
        let lines = summary(Some(&mails), 1_000_000);
        assert!(lines[0].contains("by status: sent 1003, queued 9;"), "{}", lines[0]);
        assert!(
            lines[0].ends_with("by template: a 6, b 5, c 4, d 3, e 2, others 2"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("e-mails per 100 approved conversions: 0.100 since"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("queued at the end: 9"), "{}", lines[2]);
        assert_eq!(
            summary(None, 1),
            vec!["e-mails: not measured (the system has no notification.emails)"]
        );
        assert_eq!(per_100(3, 0), "n/a");
    }
}
