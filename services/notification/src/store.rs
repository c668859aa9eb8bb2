//! The notification schema: read models (org e-mails, programs), preferences, and e-mails.

use crate::domain::digest::{ApplicationsLine, ApprovedLine, Digest, PayoutRunLine, RejectedLine, WaitingLine};
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};
use prost::Message;
use sqlx::PgConnection;

/// The org's addresses, and its name when the event carries one (else the known one stays).
pub async fn upsert_org_emails(
    conn: &mut PgConnection,
    org_id: &str,
    emails: &[String],
    name: Option<&str>,
) -> Result<(), sqlx::Error> {
    if org_id.is_empty() || emails.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO orgs_view (org_id, emails, name) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id) DO UPDATE SET emails = EXCLUDED.emails, \
         name = COALESCE(EXCLUDED.name, orgs_view.name), updated_at = now()",
    )
    .bind(org_id)
    .bind(emails)
    .bind(name.filter(|n| !n.is_empty()))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn org_emails(conn: &mut PgConnection, org_id: &str) -> Result<Option<Vec<String>>, sqlx::Error> {
    sqlx::query_scalar("SELECT emails FROM orgs_view WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(conn)
        .await
}

/// The org's name, if known.
pub async fn org_name(conn: &mut PgConnection, org_id: &str) -> Result<Option<String>, sqlx::Error> {
    let name: Option<Option<String>> = sqlx::query_scalar("SELECT name FROM orgs_view WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(conn)
        .await?;
    Ok(name.flatten())
}

pub async fn upsert_program(
    conn: &mut PgConnection,
    program_id: &str,
    name: &str,
    currency: &str,
    owner_org_id: &str,
    hold_days: i32,
    (version, version_micros): (i64, i64),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO programs_view (program_id, name, currency, owner_org_id, version_micros, version, hold_days) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (program_id) DO UPDATE SET name = EXCLUDED.name, currency = EXCLUDED.currency, \
         owner_org_id = EXCLUDED.owner_org_id, version_micros = EXCLUDED.version_micros, version = EXCLUDED.version, \
         hold_days = EXCLUDED.hold_days \
         WHERE (programs_view.version, programs_view.version_micros) <= (EXCLUDED.version, EXCLUDED.version_micros)",
    )
    .bind(program_id)
    .bind(name)
    .bind(currency)
    .bind(owner_org_id)
    .bind(version_micros)
    .bind(version)
    .bind(hold_days)
    .execute(conn)
    .await?;
    Ok(())
}

/// The owner org of a program, if known.
pub async fn program_owner(conn: &mut PgConnection, program_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT owner_org_id FROM programs_view WHERE program_id = $1")
        .bind(program_id)
        .fetch_optional(conn)
        .await
}

/// (name, currency) of a program.
pub async fn program(conn: &mut PgConnection, program_id: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT name, currency FROM programs_view WHERE program_id = $1")
        .bind(program_id)
        .fetch_optional(conn)
        .await
}

/// A program's hold in days, if known.
pub async fn hold_days(conn: &mut PgConnection, program_id: &str) -> Result<Option<i32>, sqlx::Error> {
    let hold: Option<Option<i32>> = sqlx::query_scalar("SELECT hold_days FROM programs_view WHERE program_id = $1")
        .bind(program_id)
        .fetch_optional(conn)
        .await?;
    Ok(hold.flatten())
}

/// An org's setting of one kind in one program: the program's own row wins, then the org's
/// (`program_id = ''`), then the default (on; a digest kind's default frequency).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Setting {
    pub enabled: bool,
    /// The chosen frequency's name (digest kinds), if any row chose one.
    pub frequency: Option<String>,
    /// Where `enabled` comes from: program | organization | default.
    pub scope: &'static str,
}

/// Resolves `rows` — (program_id, enabled, frequency) of one org and kind — for `program_id`.
fn resolve(rows: &[(String, bool, Option<String>)], program_id: &str) -> Setting {
    let program = rows.iter().find(|(p, _, _)| !program_id.is_empty() && p == program_id);
    let org = rows.iter().find(|(p, _, _)| p.is_empty());
    let (enabled, scope) = match (program, org) {
        (Some((_, on, _)), _) => (*on, "program"),
        (None, Some((_, on, _))) => (*on, "organization"),
        (None, None) => (true, "default"),
    };
    let frequency = program
        .and_then(|(_, _, f)| f.clone())
        .or_else(|| org.and_then(|(_, _, f)| f.clone()));
    Setting {
        enabled,
        frequency,
        scope,
    }
}

/// The org's setting of `kind` in `program_id` ('' for the org's own).
pub async fn setting(
    conn: &mut PgConnection,
    org_id: &str,
    kind: &str,
    program_id: &str,
) -> Result<Setting, sqlx::Error> {
    let rows: Vec<(String, bool, Option<String>)> = sqlx::query_as(
        "SELECT program_id, enabled, frequency FROM preferences WHERE org_id = $1 AND kind = $2 \
         AND program_id IN ('', $3)",
    )
    .bind(org_id)
    .bind(kind)
    .bind(program_id)
    .fetch_all(conn)
    .await?;
    Ok(resolve(&rows, program_id))
}

pub async fn enabled(conn: &mut PgConnection, org_id: &str, kind: &str, program_id: &str) -> Result<bool, sqlx::Error> {
    Ok(setting(conn, org_id, kind, program_id).await?.enabled)
}

/// The setting of every kind in `kinds` for `program_id` ('' for the org's own), in order.
pub async fn settings(
    conn: &mut PgConnection,
    org_id: &str,
    kinds: &[&str],
    program_id: &str,
) -> Result<Vec<Setting>, sqlx::Error> {
    let rows: Vec<(String, String, bool, Option<String>)> = sqlx::query_as(
        "SELECT kind, program_id, enabled, frequency FROM preferences WHERE org_id = $1 AND program_id IN ('', $2)",
    )
    .bind(org_id)
    .bind(program_id)
    .fetch_all(conn)
    .await?;
    Ok(kinds
        .iter()
        .map(|kind| {
            let of_kind: Vec<_> = rows
                .iter()
                .filter(|(k, _, _, _)| k == kind)
                .map(|(_, p, on, f)| (p.clone(), *on, f.clone()))
                .collect();
            resolve(&of_kind, program_id)
        })
        .collect())
}

/// Turns `kind` on or off in `program_id` ('' for the org's own), keeping its frequency; with a
/// `frequency`, sets that too.
pub async fn set_preference(
    conn: &mut PgConnection,
    org_id: &str,
    kind: &str,
    program_id: &str,
    enabled: bool,
    frequency: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO preferences (org_id, kind, program_id, enabled, frequency) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (org_id, kind, program_id) DO UPDATE SET enabled = EXCLUDED.enabled, \
         frequency = COALESCE(EXCLUDED.frequency, preferences.frequency)",
    )
    .bind(org_id)
    .bind(kind)
    .bind(program_id)
    .bind(enabled)
    .bind(frequency)
    .execute(conn)
    .await?;
    Ok(())
}

/// One-click unsubscribe: `kinds` off for the org and in every program it set them for.
pub async fn turn_off(conn: &mut PgConnection, org_id: &str, kinds: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO preferences (org_id, kind, program_id, enabled) SELECT $1, kind, '', false FROM unnest($2::text[]) kind \
         ON CONFLICT (org_id, kind, program_id) DO UPDATE SET enabled = false",
    )
    .bind(org_id)
    .bind(kinds)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE preferences SET enabled = false WHERE org_id = $1 AND kind = ANY($2) AND enabled")
        .bind(org_id)
        .bind(kinds)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `program_id` is known here (settings per program name one).
pub async fn program_exists(conn: &mut PgConnection, program_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM programs_view WHERE program_id = $1)")
        .bind(program_id)
        .fetch_one(conn)
        .await
}

pub struct NewEmail<'a> {
    pub email_id: &'a str,
    pub event_id: &'a str,
    pub template: &'a str,
    pub org_id: &'a str,
    pub recipients: &'a [String],
    pub subject: &'a str,
    pub body: &'a str,
    pub status: &'a str,
    /// Who caused it, when that is another org (an invitation's program owner).
    pub sender_org_id: Option<&'a str>,
    /// Why it was not sent (a refused e-mail's budget).
    pub last_error: Option<&'a str>,
}

/// Queues an e-mail once per (event, template); a second time is a no-op.
pub async fn insert_email(conn: &mut PgConnection, e: &NewEmail<'_>) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO emails (email_id, event_id, template, org_id, recipients, subject, body, status, \
         sender_org_id, last_error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (event_id, template) DO NOTHING",
    )
    .bind(e.email_id)
    .bind(e.event_id)
    .bind(e.template)
    .bind(e.org_id)
    .bind(e.recipients)
    .bind(e.subject)
    .bind(e.body)
    .bind(e.status)
    .bind(e.sender_org_id)
    .bind(e.last_error)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Whether `recipient` got an e-mail of `template` (for `org_id`) less than `within` ago.
pub async fn sent_recently(
    conn: &mut PgConnection,
    org_id: &str,
    template: &str,
    recipient: &str,
    within: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM emails WHERE org_id = $1 AND template = $2 AND $3 = ANY(recipients) \
         AND created_at > now() - make_interval(secs => $4))",
    )
    .bind(org_id)
    .bind(template)
    .bind(recipient)
    .bind(within.as_secs_f64())
    .fetch_one(conn)
    .await
}

/// Invitations `sender_org_id` caused in the last hour that went or go out, counted up to `cap`.
pub async fn invitations_last_hour(conn: &mut PgConnection, sender_org_id: &str, cap: u32) -> Result<u32, sqlx::Error> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM emails WHERE sender_org_id = $1 AND template IN ('invited', 'invitation_sent') \
         AND status IN ('queued', 'sent', 'failed') AND created_at > now() - interval '1 hour' LIMIT $2) capped",
    )
    .bind(sender_org_id)
    .bind(i64::from(cap))
    .fetch_one(conn)
    .await?;
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// E-mails outside digests the org got in the last day that went or go out, counted up to `cap`.
pub async fn immediate_last_day(conn: &mut PgConnection, org_id: &str, cap: u32) -> Result<u32, sqlx::Error> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM emails WHERE org_id = $1 AND template <> 'digest' \
         AND status IN ('queued', 'sent', 'failed') AND created_at > now() - interval '1 day' LIMIT $2) capped",
    )
    .bind(org_id)
    .bind(i64::from(cap))
    .fetch_one(conn)
    .await?;
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EmailRow {
    pub email_id: String,
    pub template: String,
    pub org_id: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub body: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

const EMAIL: &str = "SELECT email_id, template, org_id, recipients, subject, body, status, attempts, last_error, created_at, \
    sent_at FROM emails";

/// Locks up to `limit` queued e-mails that are due; other senders skip them.
pub async fn lock_due(conn: &mut PgConnection, limit: i64) -> Result<Vec<EmailRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{EMAIL} WHERE status = 'queued' AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    )))
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn mark_sent(conn: &mut PgConnection, email_id: &str, message_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE emails SET status = 'sent', sent_at = now(), attempts = attempts + 1, message_id = $2, last_error = NULL \
         WHERE email_id = $1",
    )
    .bind(email_id)
    .bind(message_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn mark_failed(conn: &mut PgConnection, email_id: &str, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE emails SET status = 'failed', attempts = attempts + 1, last_error = $2 WHERE email_id = $1")
        .bind(email_id)
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn retry_later(
    conn: &mut PgConnection,
    email_id: &str,
    error: &str,
    delay: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE emails SET attempts = attempts + 1, last_error = $2, \
         next_attempt_at = now() + make_interval(secs => $3) WHERE email_id = $1",
    )
    .bind(email_id)
    .bind(error)
    .bind(delay.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn page(
    conn: &mut PgConnection,
    org_id: &str,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<EmailRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{EMAIL} WHERE org_id = $1 AND ($2::text IS NULL OR email_id < $2) ORDER BY email_id DESC LIMIT $3"
    )))
    .bind(org_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Whether `event_id` is (or now becomes) the org's first approved commission in the program.
pub async fn claim_first_commission(
    conn: &mut PgConnection,
    org_id: &str,
    program_id: &str,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO first_commissions (org_id, program_id, event_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(org_id)
    .bind(program_id)
    .bind(event_id)
    .execute(&mut *conn)
    .await?;
    let first: String =
        sqlx::query_scalar("SELECT event_id FROM first_commissions WHERE org_id = $1 AND program_id = $2")
            .bind(org_id)
            .bind(program_id)
            .fetch_one(conn)
            .await?;
    Ok(first == event_id)
}

/// Each program's name and currency, of those in `program_ids` known.
pub async fn programs(
    conn: &mut PgConnection,
    program_ids: &[&str],
) -> Result<std::collections::HashMap<String, (String, String)>, sqlx::Error> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT program_id, name, currency FROM programs_view WHERE program_id = ANY($1)")
            .bind(program_ids)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, currency)| (id, (name, currency)))
        .collect())
}

/// [`claim_first_commission`] for many (org, program, event) at once, one claim per pair:
/// the event holding each pair's claim, by (org, program).
pub async fn claim_first_commissions(
    conn: &mut PgConnection,
    claims: &[(&str, &str, &str)],
) -> Result<std::collections::HashMap<(String, String), String>, sqlx::Error> {
    let orgs: Vec<&str> = claims.iter().map(|c| c.0).collect();
    let programs: Vec<&str> = claims.iter().map(|c| c.1).collect();
    let events: Vec<&str> = claims.iter().map(|c| c.2).collect();
    sqlx::query(
        "INSERT INTO first_commissions (org_id, program_id, event_id) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&orgs)
    .bind(&programs)
    .bind(&events)
    .execute(&mut *conn)
    .await?;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT f.org_id, f.program_id, f.event_id FROM first_commissions f \
         JOIN UNNEST($1::text[], $2::text[]) AS c(org_id, program_id) USING (org_id, program_id)",
    )
    .bind(&orgs)
    .bind(&programs)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(org, program, event)| ((org, program), event))
        .collect())
}

/// Every preference row of `kind` of the `org_ids`: (org_id, program_id, enabled, frequency).
pub async fn settings_of_orgs(
    conn: &mut PgConnection,
    kind: &str,
    org_ids: &[&str],
) -> Result<Vec<(String, String, bool, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT org_id, program_id, enabled, frequency FROM preferences WHERE kind = $1 AND org_id = ANY($2)",
    )
    .bind(kind)
    .bind(org_ids)
    .fetch_all(conn)
    .await
}

/// The setting of `org_id` in `program_id` among rows read by [`settings_of_orgs`] (as
/// [`setting`] resolves it).
pub fn resolve_for(rows: &[(String, String, bool, Option<String>)], org_id: &str, program_id: &str) -> Setting {
    let of_org: Vec<(String, bool, Option<String>)> = rows
        .iter()
        .filter(|(org, _, _, _)| org == org_id)
        .map(|(_, program, on, frequency)| (program.clone(), *on, frequency.clone()))
        .collect();
    resolve(&of_org, program_id)
}

/// An approved commission's digest line, as [`insert_approved_entries`] writes it.
#[derive(Debug, Clone)]
pub struct OwnedDigestEntry {
    pub event_id: String,
    pub kind: &'static str,
    pub org_id: String,
    pub program_id: String,
    pub currency: String,
    pub commission_minor: i64,
    pub sale_minor: i64,
    pub recorded_at: DateTime<Utc>,
    pub period: String,
    pub period_end: DateTime<Utc>,
}

/// [`insert_entry`] for many commission lines in one statement; a redelivered event adds nothing.
pub async fn insert_approved_entries(conn: &mut PgConnection, entries: &[OwnedDigestEntry]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&OwnedDigestEntry) -> &str| entries.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO digest_entries (event_id, kind, org_id, program_id, currency, commission_minor, sale_minor, \
         recorded_at, period, period_end) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], \
         $8::timestamptz[], $9::text[], $10::timestamptz[]) ON CONFLICT (event_id, kind) DO NOTHING",
    )
    .bind(column(|e| &e.event_id))
    .bind(column(|e| e.kind))
    .bind(column(|e| &e.org_id))
    .bind(column(|e| &e.program_id))
    .bind(column(|e| &e.currency))
    .bind(entries.iter().map(|e| e.commission_minor).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.sale_minor).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
    .bind(column(|e| &e.period))
    .bind(entries.iter().map(|e| e.period_end).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Something summed into a digest, once per (event, kind).
#[derive(Debug, Clone, Default)]
pub struct DigestEntry<'a> {
    pub event_id: &'a str,
    pub kind: &'a str,
    pub org_id: &'a str,
    pub program_id: &'a str,
    pub currency: &'a str,
    pub commission_minor: i64,
    pub sale_minor: i64,
    pub reason: Option<&'a str>,
    pub label: Option<&'a str>,
    pub subject_ref: Option<&'a str>,
    pub payload: Option<Vec<u8>>,
    /// When it happened.
    pub recorded_at: DateTime<Utc>,
    pub period: &'a str,
    pub period_end: DateTime<Utc>,
}

/// Records an entry for its digest; a redelivered event adds nothing.
pub async fn insert_entry(conn: &mut PgConnection, e: &DigestEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO digest_entries (event_id, kind, org_id, program_id, currency, commission_minor, sale_minor, \
         reason, label, subject_ref, payload, recorded_at, period, period_end) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (event_id, kind) DO NOTHING",
    )
    .bind(e.event_id)
    .bind(e.kind)
    .bind(e.org_id)
    .bind(e.program_id)
    .bind(e.currency)
    .bind(e.commission_minor)
    .bind(e.sale_minor)
    .bind(e.reason)
    .bind(e.label)
    .bind(e.subject_ref)
    .bind(e.payload.as_deref())
    .bind(e.recorded_at)
    .bind(e.period)
    .bind(e.period_end)
    .execute(conn)
    .await?;
    Ok(())
}

/// A conversion was decided: it no longer waits, unless its digest is already built.
pub async fn drop_waiting(conn: &mut PgConnection, conversion_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM digest_entries e WHERE e.kind = 'approvals_waiting' AND e.subject_ref = $1 \
         AND NOT EXISTS (SELECT 1 FROM digests d WHERE d.org_id = e.org_id AND d.period = e.period)",
    )
    .bind(conversion_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// (org, period) pairs that ended by `before` and have no digest yet.
pub async fn due_digests(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT e.org_id, e.period FROM digest_entries e WHERE e.period_end <= $1 \
         AND NOT EXISTS (SELECT 1 FROM digests d WHERE d.org_id = e.org_id AND d.period = e.period) LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Claims the digest of (org, period); false when another job already did (it waits for that
/// job's commit first, so two jobs never both build one).
pub async fn claim_digest(conn: &mut PgConnection, org_id: &str, period: &str) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO digests (org_id, period, commissions) \
         SELECT $1, $2, count(*)::INTEGER FROM digest_entries WHERE org_id = $1 AND period = $2 \
         ON CONFLICT (org_id, period) DO NOTHING",
    )
    .bind(org_id)
    .bind(period)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Drops the entries of digests built more than a week ago: one row per approved sale must not
/// outlive its digest for ever (100 k sales a day would be 100 k rows a day). The digest's own
/// row stays and keeps the period from being built again.
pub async fn forget_old_entries(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM digest_entries e USING digests d \
         WHERE d.org_id = e.org_id AND d.period = e.period AND d.created_at < now() - interval '7 days'",
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// What (org, period) sums, per kind and program; money sums exact (NUMERIC in SQL).
pub async fn digest(conn: &mut PgConnection, org_id: &str, period: &str) -> Result<Digest, sqlx::Error> {
    const PROGRAM: &str = "COALESCE(v.name, e.program_id)";
    const FROM: &str = "FROM digest_entries e LEFT JOIN programs_view v ON v.program_id = e.program_id \
         WHERE e.org_id = $1 AND e.period = $2 AND e.kind = $3";
    let approved: Vec<ApprovedLine> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROGRAM} AS program, e.currency, count(*) AS count, sum(e.commission_minor)::BIGINT AS commission_minor, \
         (array_agg(e.sale_minor ORDER BY e.sale_minor DESC))[1:3] AS largest_sales_minor {FROM} \
         GROUP BY e.program_id, v.name, e.currency ORDER BY 1, 2"
    )))
    .bind(org_id)
    .bind(period)
    .bind("conversion_approved")
    .fetch_all(&mut *conn)
    .await?;
    let rejected_rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROGRAM}, e.currency, COALESCE(e.reason, ''), count(*), sum(e.sale_minor)::BIGINT {FROM} \
         GROUP BY e.program_id, v.name, e.currency, e.reason ORDER BY 1, 2, 4 DESC, 3"
    )))
    .bind(org_id)
    .bind(period)
    .bind("conversion_rejected")
    .fetch_all(&mut *conn)
    .await?;
    let mut rejected: Vec<RejectedLine> = Vec::new();
    for (program, currency, reason, count, sales_minor) in rejected_rows {
        match rejected.last_mut() {
            Some(line) if line.program == program && line.currency == currency => {
                line.count += count;
                line.sales_minor += sales_minor;
                if line.reasons.len() < 5 {
                    line.reasons.push((reason, count));
                }
            }
            _ => rejected.push(RejectedLine {
                program,
                currency,
                count,
                sales_minor,
                reasons: vec![(reason, count)],
            }),
        }
    }
    let applications: Vec<(String, i64, Vec<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROGRAM}, count(*), (array_agg(COALESCE(e.label, '') ORDER BY e.recorded_at))[1:5] {FROM} \
         GROUP BY e.program_id, v.name ORDER BY 1"
    )))
    .bind(org_id)
    .bind(period)
    .bind("application_received")
    .fetch_all(&mut *conn)
    .await?;
    let waiting: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROGRAM}, count(*), min(e.recorded_at) {FROM} GROUP BY e.program_id, v.name ORDER BY 1"
    )))
    .bind(org_id)
    .bind(period)
    .bind("approvals_waiting")
    .fetch_all(&mut *conn)
    .await?;
    let runs: Vec<(String, String, String, Option<Vec<u8>>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROGRAM}, e.currency, COALESCE(e.subject_ref, ''), e.payload {FROM} ORDER BY 1, e.recorded_at"
    )))
    .bind(org_id)
    .bind(period)
    .bind("payout_run_summary")
    .fetch_all(&mut *conn)
    .await?;
    Ok(Digest {
        approved,
        rejected,
        applications: applications
            .into_iter()
            .map(|(program, count, applicants)| ApplicationsLine {
                program,
                count,
                applicants,
            })
            .collect(),
        waiting: waiting
            .into_iter()
            .map(|(program, count, oldest_reported_at)| WaitingLine {
                program,
                count,
                oldest_reported_at,
            })
            .collect(),
        payout_runs: runs
            .into_iter()
            .map(|(program, currency, payout_run_id, payload)| {
                // Written by this service from the event's summary; an unreadable one counts as empty.
                let s = payload
                    .and_then(|bytes| pb::PayoutRunSummary::decode(bytes.as_slice()).ok())
                    .unwrap_or_default();
                PayoutRunLine {
                    program,
                    currency,
                    payout_run_id,
                    paid_count: i64::from(s.paid_count),
                    paid_net_minor: s.paid_net_minor,
                    fee_minor: s.fee_minor,
                    debt_minor: s.debt_minor,
                    failed_count: i64::from(s.failed_count),
                    failed_gross_minor: s.failed_gross_minor,
                    failure_reasons: s.failure_reasons,
                    charged_minor: s.charged_minor,
                    refunded_minor: s.refunded_minor,
                }
            })
            .collect(),
    })
}

/// Notes the affiliates that enrollment events name as in their programs (the event feed's
/// consumer, on every enrollment event).
pub async fn remember_members(
    conn: &mut PgConnection,
    entries: &[crate::domain::feed::Entry],
) -> Result<(), sqlx::Error> {
    let (programs, orgs): (Vec<&str>, Vec<&str>) = entries
        .iter()
        .filter(|e| e.kind.starts_with("enrollment."))
        .filter_map(|e| Some((e.program_id.as_str(), e.affiliate_org_id.as_deref()?)))
        .unzip();
    if programs.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO program_members (program_id, org_id) SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING")
        .bind(&programs)
        .bind(&orgs)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `org_id` is (or was) an affiliate of `program_id`.
pub async fn is_member(conn: &mut PgConnection, program_id: &str, org_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM program_members WHERE program_id = $1 AND org_id = $2)")
        .bind(program_id)
        .bind(org_id)
        .fetch_one(conn)
        .await
}
