//! Outbound webhooks: owners' endpoints (create, list, delete, test, rotate) and their
//! deliveries, signed per Standard Webhooks.
//!
//! - A delivery is made with its feed row, in the consumer's transaction, for every active
//!   endpoint of the program that wants the event's type; its id is the `webhook-id` header,
//!   the same on every attempt (at-least-once: receivers deduplicate on it; per-endpoint order
//!   is not promised).
//! - The delivery job leases at most one due delivery per endpoint at a time and sends each in
//!   its own task, 10 s at most, redirects not followed: a slow or dead endpoint delays only
//!   itself, never ingest (delivery is not in any request's path) nor another owner's.
//! - Failures are retried on `domain::webhooks::RETRY_AFTER_SECONDS` (more than a day); an
//!   endpoint failing for [`DISABLE_AFTER_DAYS`] is disabled and its owner e-mailed.
//! - Targets are checked at creation and on every connection: a resolver of our own refuses
//!   link-local (metadata), loopback, private and the platform's own addresses, so a name that
//!   re-resolves elsewhere later (DNS rebinding) is refused too.

use crate::domain::feed::{Entry, TYPES};
use crate::domain::templates;
use crate::domain::webhooks::{self, DISABLE_AFTER_DAYS, TargetError, WebhookConfig};
use crate::store;
use amba_core::ApiError;
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Endpoints one program may have.
const MAX_PER_PROGRAM: i64 = 10;
/// One attempt's limit.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer is kept.
const EXCERPT: usize = 256;
/// How long a rotated-out secret keeps signing beside the new one.
const ROTATION_OVERLAP_HOURS: i64 = 24;
/// Deliveries in flight at once (each to a different endpoint).
const CONCURRENCY: usize = 32;

#[derive(sqlx::FromRow)]
struct WebhookRow {
    webhook_id: String,
    program_id: String,
    url: String,
    event_types: Vec<String>,
    status: String,
    created_at: DateTime<Utc>,
    last_success_at: Option<DateTime<Utc>>,
    last_failure_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    failing_since: Option<DateTime<Utc>>,
    disabled_at: Option<DateTime<Utc>>,
    previous_secret_until: Option<DateTime<Utc>>,
    pending: i64,
}

const WEBHOOK_COLUMNS: &str = "w.webhook_id, w.program_id, w.url, w.event_types, w.status, w.created_at, \
     w.last_success_at, w.last_failure_at, w.last_error, w.failing_since, w.disabled_at, w.previous_secret_until, \
     (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.webhook_id AND d.status = 'pending') AS pending";

impl WebhookRow {
    fn to_proto(&self) -> pb::Webhook {
        let micros = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros()).unwrap_or_default();
        pb::Webhook {
            webhook_id: self.webhook_id.clone(),
            program_id: self.program_id.clone(),
            url: self.url.clone(),
            event_types: self.event_types.clone(),
            status: self.status.clone(),
            created_at_micros: self.created_at.timestamp_micros(),
            last_success_at_micros: micros(self.last_success_at),
            last_failure_at_micros: micros(self.last_failure_at),
            last_error: self.last_error.clone().unwrap_or_default(),
            failing_since_micros: micros(self.failing_since),
            disabled_at_micros: micros(self.disabled_at),
            previous_secret_until_micros: micros(self.previous_secret_until),
            pending_deliveries: u32::try_from(self.pending).unwrap_or(u32::MAX),
        }
    }
}

async fn webhook(conn: &mut PgConnection, webhook_id: &str) -> Result<Option<(WebhookRow, String)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Owned {
        #[sqlx(flatten)]
        row: WebhookRow,
        owner_org_id: String,
    }
    let found: Option<Owned> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {WEBHOOK_COLUMNS}, w.owner_org_id FROM webhooks w WHERE w.webhook_id = $1 AND w.status <> 'deleted'"
    )))
    .bind(webhook_id)
    .fetch_optional(conn)
    .await?;
    Ok(found.map(|o| (o.row, o.owner_org_id)))
}

/// Refuses what webhooks may never call, by the URL's form and where its host resolves now.
async fn check_target(url: &str, config: &WebhookConfig) -> Result<(), ApiError> {
    let refused = |e: TargetError| ApiError::invalid(format!("url: {e}"));
    let (host, port) = webhooks::check_url(url, config.allow_private).map_err(refused)?;
    let addresses = resolve(&host, port).await;
    let own = own_addresses(config).await;
    webhooks::check_addresses(&addresses, config.allow_private, &own).map_err(refused)?;
    Ok(())
}

async fn resolve(host: &str, port: u16) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, port))).await {
        Ok(Ok(found)) => found.map(|a: SocketAddr| a.ip()).collect(),
        _ => Vec::new(),
    }
}

/// The platform's own public addresses. Its loopback or private ones are refused with every
/// other such address anyway, except in development, where they are what everything runs on.
async fn own_addresses(config: &WebhookConfig) -> Vec<IpAddr> {
    match &config.own_host {
        Some(host) => resolve(host, 443)
            .await
            .into_iter()
            .filter(|ip| webhooks::address_allowed(*ip, false))
            .collect(),
        None => Vec::new(),
    }
}

/// The program, if the caller owns it: an affiliate of it is told the tool is the owner's
/// (FORBIDDEN), anyone else that it does not exist.
async fn owned_program(conn: &mut PgConnection, caller: &pb::Principal, program_id: &str) -> Result<(), ApiError> {
    let owner: Option<String> = sqlx::query_scalar("SELECT owner_org_id FROM programs_view WHERE program_id = $1")
        .bind(program_id)
        .fetch_optional(&mut *conn)
        .await?;
    match owner {
        Some(owner) if owner == caller.org_id => Ok(()),
        Some(_) if store::is_member(conn, program_id, &caller.org_id).await? => {
            Err(ApiError::not_owner(format!("program {program_id}"), true, None))
        }
        _ => Err(ApiError::not_found(format!("program {program_id}"))),
    }
}

async fn owned_webhook(
    conn: &mut PgConnection,
    caller: &pb::Principal,
    webhook_id: &str,
) -> Result<WebhookRow, ApiError> {
    match webhook(conn, webhook_id.trim()).await? {
        Some((row, owner)) if owner == caller.org_id => Ok(row),
        _ => Err(ApiError::not_found(format!("webhook {webhook_id}"))),
    }
}

pub async fn create(
    pool: &PgPool,
    config: &WebhookConfig,
    who: &pb::Principal,
    request: pb::WebhookCreateRequest,
) -> Result<pb::WebhookSecretReply, ApiError> {
    let program_id = request.program_id.trim();
    if let Some(unknown) = request.event_types.iter().find(|t| !TYPES.contains(&t.as_str())) {
        return Err(ApiError::invalid(format!(
            "event_types: {unknown:?} is not an event type; expected any of: {}",
            TYPES.join(", ")
        )));
    }
    let url = request.url.trim();
    if url.len() > 2_000 {
        return Err(ApiError::invalid("url must be at most 2000 characters"));
    }
    let mut conn = pool.acquire().await?;
    owned_program(&mut conn, who, program_id).await?;
    check_target(url, config).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks WHERE program_id = $1 AND status = 'active'")
        .bind(program_id)
        .fetch_one(&mut *conn)
        .await?;
    if count >= MAX_PER_PROGRAM {
        return Err(ApiError::conflict(format!(
            "a program has at most {MAX_PER_PROGRAM} webhook endpoints; delete one first"
        )));
    }
    let webhook_id = format!("whk_{}", amba_core::id::time_ordered_suffix());
    let secret = webhooks::new_secret();
    let mut types = request.event_types.clone();
    types.sort();
    types.dedup();
    sqlx::query(
            "INSERT INTO webhooks (webhook_id, program_id, owner_org_id, url, event_types, secret) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&webhook_id)
        .bind(program_id)
        .bind(&who.org_id)
        .bind(url)
        .bind(&types)
        .bind(&secret)
        .execute(&mut *conn)
        .await?;
    let (row, _) = webhook(&mut conn, &webhook_id).await?.ok_or_else(ApiError::internal)?;
    Ok(pb::WebhookSecretReply {
        webhook: Some(row.to_proto()),
        secret,
    })
}

pub async fn list(
    pool: &PgPool,
    who: &pb::Principal,
    request: pb::WebhookListRequest,
) -> Result<pb::WebhookListReply, ApiError> {
    let mut conn = pool.acquire().await?;
    owned_program(&mut conn, who, request.program_id.trim()).await?;
    let rows: Vec<WebhookRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.program_id = $1 AND w.status <> 'deleted' ORDER BY w.webhook_id"
        )))
        .bind(request.program_id.trim())
        .fetch_all(&mut *conn)
        .await?;
    Ok(pb::WebhookListReply {
        webhooks: rows.iter().map(WebhookRow::to_proto).collect(),
    })
}

pub async fn delete(
    pool: &PgPool,
    who: &pb::Principal,
    request: pb::WebhookRequest,
) -> Result<pb::WebhookReply, ApiError> {
    let mut conn = pool.acquire().await?;
    let mut row = owned_webhook(&mut conn, who, &request.webhook_id).await?;
    sqlx::query("UPDATE webhooks SET status = 'deleted' WHERE webhook_id = $1")
        .bind(&row.webhook_id)
        .execute(&mut *conn)
        .await?;
    row.status = "deleted".into();
    Ok(pb::WebhookReply {
        webhook: Some(row.to_proto()),
        delivery_id: String::new(),
    })
}

/// A `webhook.test` delivery to the endpoint, now (an active one).
pub async fn test(
    pool: &PgPool,
    who: &pb::Principal,
    request: pb::WebhookRequest,
) -> Result<pb::WebhookReply, ApiError> {
    let mut conn = pool.acquire().await?;
    let row = owned_webhook(&mut conn, who, &request.webhook_id).await?;
    if row.status != "active" {
        return Err(ApiError::conflict(format!(
            "webhook {} is {}",
            row.webhook_id, row.status
        )));
    }
    let event_id = format!("test_{}", amba_core::id::time_ordered_suffix());
    let delivery_id = delivery_id(&row.webhook_id, &event_id);
    let body = serde_json::json!({
        "type": "webhook.test",
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {"webhook_id": row.webhook_id, "program_id": row.program_id},
    });
    sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, webhook_id, event_id, type, body) VALUES ($1, $2, $3, 'webhook.test', $4)",
        )
        .bind(&delivery_id)
        .bind(&row.webhook_id)
        .bind(&event_id)
        .bind(body.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(pb::WebhookReply {
        webhook: Some(row.to_proto()),
        delivery_id,
    })
}

/// A new secret; the old one keeps signing beside it for a day, so receivers switch over.
pub async fn rotate(
    pool: &PgPool,
    who: &pb::Principal,
    request: pb::WebhookRequest,
) -> Result<pb::WebhookSecretReply, ApiError> {
    let mut conn = pool.acquire().await?;
    let row = owned_webhook(&mut conn, who, &request.webhook_id).await?;
    let secret = webhooks::new_secret();
    sqlx::query(
        "UPDATE webhooks SET previous_secret = secret, previous_secret_until = now() + make_interval(hours => $2), \
             secret = $3 WHERE webhook_id = $1",
    )
    .bind(&row.webhook_id)
    .bind(i32::try_from(ROTATION_OVERLAP_HOURS).unwrap_or(24))
    .bind(&secret)
    .execute(&mut *conn)
    .await?;
    let (row, _) = webhook(&mut conn, &row.webhook_id)
        .await?
        .ok_or_else(ApiError::internal)?;
    Ok(pb::WebhookSecretReply {
        webhook: Some(row.to_proto()),
        secret,
    })
}

/// A delivery's id (the `webhook-id` header): the same for one endpoint and one event, always.
fn delivery_id(webhook_id: &str, event_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{webhook_id}|{event_id}").as_bytes());
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// Queues the deliveries of `entries` to every active endpoint that wants them (in the feed
/// consumer's transaction; a redelivered event queues nothing new).
pub async fn fan_out(conn: &mut PgConnection, entries: &[Entry]) -> Result<(), sqlx::Error> {
    let programs: Vec<&str> = entries.iter().map(|e| e.program_id.as_str()).collect();
    let wanted: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT webhook_id, program_id, event_types FROM webhooks WHERE status = 'active' AND program_id = ANY($1)",
    )
    .bind(&programs)
    .fetch_all(&mut *conn)
    .await?;
    if wanted.is_empty() {
        return Ok(());
    }
    // One row per (event, endpoint that wants it), as columns for one statement.
    let (mut ids, mut hooks, mut events, mut kinds, mut bodies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        for (webhook_id, program_id, types) in &wanted {
            if *program_id != entry.program_id || !(types.is_empty() || types.contains(&entry.kind)) {
                continue;
            }
            let at = DateTime::from_timestamp_micros(entry.occurred_at_micros).unwrap_or_else(Utc::now);
            let body = serde_json::json!({
                "type": entry.kind,
                "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "data": entry.payload,
            });
            ids.push(delivery_id(webhook_id, &entry.event_id));
            hooks.push(webhook_id.as_str());
            events.push(entry.event_id.as_str());
            kinds.push(entry.kind.as_str());
            bodies.push(body.to_string());
        }
    }
    sqlx::query(
        "INSERT INTO webhook_deliveries (delivery_id, webhook_id, event_id, type, body) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&hooks)
    .bind(&events)
    .bind(&kinds)
    .bind(&bodies)
    .execute(conn)
    .await?;
    Ok(())
}

/// Resolves webhook hosts and refuses the addresses webhooks may not reach, on every connection.
struct GuardedResolver {
    allow_private: bool,
    own: Vec<IpAddr>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (allow_private, own) = (self.allow_private, self.own.clone());
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = resolve(&host, 0).await;
            let first = webhooks::check_addresses(&found, allow_private, &own)?;
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::new(first, 0)));
            Ok(addrs)
        })
    }
}

#[derive(sqlx::FromRow)]
struct Due {
    delivery_id: String,
    webhook_id: String,
    body: String,
    attempts: i32,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_until: Option<DateTime<Utc>>,
}

/// Leases due deliveries: the oldest due one of each active endpoint not already in flight.
async fn lease(pool: &PgPool, busy: &[String], limit: i64) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS ( \
           SELECT x.delivery_id FROM webhooks w CROSS JOIN LATERAL ( \
             SELECT delivery_id FROM webhook_deliveries \
             WHERE webhook_id = w.webhook_id AND status = 'pending' AND next_attempt_at <= now() \
               AND (leased_until IS NULL OR leased_until < now()) \
             ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED) x \
           WHERE w.status = 'active' AND NOT (w.webhook_id = ANY($1)) LIMIT $2) \
         UPDATE webhook_deliveries d SET leased_until = now() + INTERVAL '1 minute' \
         FROM due, webhooks w WHERE d.delivery_id = due.delivery_id AND w.webhook_id = d.webhook_id \
         RETURNING d.delivery_id, d.webhook_id, d.body, d.attempts, w.url, w.secret, w.previous_secret, w.previous_secret_until",
    )
    .bind(busy)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Sends due deliveries until `shutdown`.
pub async fn deliver(
    pool: PgPool,
    config: WebhookConfig,
    shutdown: CancellationToken,
) -> Result<(), amba_bus::RunError> {
    let resolver = GuardedResolver {
        allow_private: config.allow_private,
        own: own_addresses(&config).await,
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent("Amba-Webhooks/1")
        .dns_resolver(Arc::new(resolver))
        .build()
        .map_err(|e| amba_bus::RunError::Setup(format!("the webhook client: {e}")))?;
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        // Poll often while there is work, once a second when there is none.
        let mut idle = true;
        while tasks.try_join_next().is_some() {}
        let busy: Vec<String> = in_flight
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        let room = CONCURRENCY.saturating_sub(busy.len());
        if room > 0 {
            match lease(&pool, &busy, i64::try_from(room).unwrap_or(1)).await {
                Ok(due) => {
                    idle = due.is_empty();
                    for job in due {
                        if let Ok(mut set) = in_flight.lock() {
                            set.insert(job.webhook_id.clone());
                        }
                        let (pool, client, config, in_flight) =
                            (pool.clone(), client.clone(), config.clone(), in_flight.clone());
                        tasks.spawn(async move {
                            let webhook_id = job.webhook_id.clone();
                            if let Err(error) = attempt(&pool, &client, &config, job).await {
                                tracing::warn!(%error, %webhook_id, "recording a webhook delivery failed");
                            }
                            if let Ok(mut set) = in_flight.lock() {
                                set.remove(&webhook_id);
                            }
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "leasing webhook deliveries failed"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                while tasks.join_next().await.is_some() {}
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(if idle { 1_000 } else { 100 })) => {}
        }
    }
}

/// One attempt of one delivery, and its outcome recorded.
async fn attempt(pool: &PgPool, client: &reqwest::Client, config: &WebhookConfig, job: Due) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let mut secrets = vec![job.secret.as_str()];
    if let (Some(previous), Some(until)) = (&job.previous_secret, job.previous_secret_until)
        && until > now
    {
        secrets.push(previous);
    }
    let outcome = send(client, config, &job, &secrets, now.timestamp()).await;
    let attempts = u32::try_from(job.attempts).unwrap_or(0).saturating_add(1);
    let mut tx = pool.begin().await?;
    match outcome {
        Ok((status, excerpt)) => {
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = $2, delivered_at = now(), last_status = $3, \
                 response_excerpt = $4, leased_until = NULL WHERE delivery_id = $1",
            )
            .bind(&job.delivery_id)
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
            .bind(i32::from(status))
            .bind(excerpt)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE webhooks SET last_success_at = now(), failing_since = NULL WHERE webhook_id = $1")
                .bind(&job.webhook_id)
                .execute(&mut *tx)
                .await?;
        }
        Err(failure) => {
            let next = webhooks::next_attempt(attempts, now, config.retry_scale);
            sqlx::query(
                "UPDATE webhook_deliveries SET attempts = $2, last_status = $3, last_error = $4, response_excerpt = $5, \
                 status = CASE WHEN $6::timestamptz IS NULL THEN 'failed' ELSE 'pending' END, \
                 next_attempt_at = COALESCE($6, next_attempt_at), leased_until = NULL WHERE delivery_id = $1",
            )
            .bind(&job.delivery_id)
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
            .bind(failure.status.map(i32::from))
            .bind(&failure.error)
            .bind(&failure.excerpt)
            .bind(next)
            .execute(&mut *tx)
            .await?;
            let failing_since: Option<DateTime<Utc>> = sqlx::query_scalar(
                "UPDATE webhooks SET last_failure_at = now(), last_error = $2, failing_since = COALESCE(failing_since, now()) \
                 WHERE webhook_id = $1 RETURNING failing_since",
            )
            .bind(&job.webhook_id)
            .bind(&failure.error)
            .fetch_optional(&mut *tx)
            .await?;
            if failing_since.is_some_and(|since| now - since >= chrono::Duration::days(DISABLE_AFTER_DAYS)) {
                disable(&mut tx, &job.webhook_id, &failure.error).await?;
            }
        }
    }
    tx.commit().await
}

struct Failure {
    status: Option<u16>,
    error: String,
    excerpt: Option<String>,
}

/// Posts the delivery; 2xx is delivered, anything else (or no answer in time) a failure.
async fn send(
    client: &reqwest::Client,
    config: &WebhookConfig,
    job: &Due,
    secrets: &[&str],
    timestamp: i64,
) -> Result<(u16, Option<String>), Failure> {
    let failure = |error: String| Failure {
        status: None,
        error,
        excerpt: None,
    };
    // A literal address never goes through the resolver: check it here.
    let (host, _) = webhooks::check_url(&job.url, config.allow_private).map_err(|e| failure(e.to_string()))?;
    if let Ok(ip) = host.parse::<IpAddr>()
        && !webhooks::address_allowed(ip, config.allow_private)
    {
        return Err(failure(TargetError::Forbidden(ip).to_string()));
    }
    let signature = webhooks::signature(secrets, &job.delivery_id, timestamp, job.body.as_bytes())
        .ok_or_else(|| failure("the endpoint's secret does not sign".into()))?;
    let response = client
        .post(&job.url)
        .header("content-type", "application/json")
        .header("webhook-id", &job.delivery_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(job.body.clone())
        .send()
        .await
        .map_err(|e| failure(describe(&e)))?;
    let status = response.status();
    let excerpt = excerpt(response).await;
    if status.is_success() {
        Ok((status.as_u16(), excerpt))
    } else {
        Err(Failure {
            status: Some(status.as_u16()),
            error: format!("HTTP {status}"),
            excerpt,
        })
    }
}

fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(500).collect()
}

/// At most [`EXCERPT`] characters of the answer, read no further than needed.
async fn excerpt(mut response: reqwest::Response) -> Option<String> {
    let mut bytes = Vec::new();
    while bytes.len() < EXCERPT * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text: String = String::from_utf8_lossy(&bytes).chars().take(EXCERPT).collect();
    (!text.is_empty()).then_some(text)
}

/// Disables an endpoint that failed for days and e-mails its owner (once per endpoint).
async fn disable(conn: &mut PgConnection, webhook_id: &str, last_error: &str) -> Result<(), sqlx::Error> {
    let disabled: Option<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE webhooks SET status = 'disabled', disabled_at = now() WHERE webhook_id = $1 AND status = 'active' \
         RETURNING owner_org_id, program_id, url, failing_since",
    )
    .bind(webhook_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((owner, program_id, url, since)) = disabled else {
        return Ok(());
    };
    tracing::warn!(%webhook_id, %url, "webhook endpoint disabled after failing for days");
    let program: Option<String> = sqlx::query_scalar("SELECT name FROM programs_view WHERE program_id = $1")
        .bind(&program_id)
        .fetch_optional(&mut *conn)
        .await?;
    let recipients: Option<Vec<String>> = sqlx::query_scalar("SELECT emails FROM orgs_view WHERE org_id = $1")
        .bind(&owner)
        .fetch_optional(&mut *conn)
        .await?;
    let recipients = recipients.unwrap_or_default();
    if recipients.is_empty() {
        return Ok(());
    }
    let since = since.format("%Y-%m-%d %H:%M UTC").to_string();
    let email = match templates::webhook_disabled(program.as_deref().unwrap_or(&program_id), &url, &since, last_error) {
        Ok(email) => email,
        Err(error) => {
            tracing::error!(%error, "the webhook_disabled e-mail does not render");
            return Ok(());
        }
    };
    let email_id = format!("eml_{}", amba_core::id::time_ordered_suffix());
    let event_id = format!("webhook_disabled:{webhook_id}");
    store::insert_email(
        conn,
        &store::NewEmail {
            email_id: &email_id,
            event_id: &event_id,
            template: email.kind,
            org_id: &owner,
            recipients: &recipients,
            subject: &email.subject,
            body: &email.body,
            status: "queued",
            sender_org_id: None,
            last_error: None,
        },
    )
    .await?;
    Ok(())
}
