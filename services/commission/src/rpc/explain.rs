//! A conversion's commissions (direct and overrides upline) and the ledger postings that
//! resulted, for explain: the program's owner sees all of it; the affiliate credited with the
//! conversion sees its own lines, and the overrides it paid without whom they went to.

use super::Commission;
use amba_bus::rpc::caller;
use amba_core::ApiError;
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};

#[derive(sqlx::FromRow)]
struct LineRow {
    commission_id: String,
    level: i32,
    enrollment_id: String,
    affiliate_org_id: Option<String>,
    currency: String,
    sale_minor: i64,
    amount_minor: i64,
    rate_bps: Option<i32>,
    commission_version: i32,
    commission_tier: i32,
    held_minor: i64,
    release_at: DateTime<Utc>,
    released_at: Option<DateTime<Utc>>,
    recovered_minor: i64,
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    journal_id: i64,
    kind: String,
    reference: String,
    posted_at: DateTime<Utc>,
    account: String,
    enrollment_id: String,
    currency: String,
    amount_minor: i64,
}

impl Commission {
    pub async fn conversion_ledger(
        &self,
        request: pb::ConversionLedgerRequest,
    ) -> Result<pb::ConversionLedgerReply, ApiError> {
        let who = caller(request.caller)?;
        let conversion_id = request.conversion_id.trim();
        let not_found = || ApiError::not_found(format!("the ledger of conversion {conversion_id}"));
        let mut conn = self.pool.acquire().await?;
        // Whose it is: the program's owner, and the org of the enrollment credited with it.
        let seen: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT p.owner_org_id, c.enrollment_id, e.affiliate_org_id FROM conversions c \
             JOIN programs p ON p.program_id = c.program_id \
             LEFT JOIN enrollments e ON e.enrollment_id = c.enrollment_id WHERE c.conversion_id = $1",
        )
        .bind(conversion_id)
        .fetch_optional(&mut *conn)
        .await?;
        let (owner_org_id, credited_enrollment, affiliate_org_id) = seen.ok_or_else(not_found)?;
        let owner = owner_org_id == who.org_id;
        if !owner && affiliate_org_id.as_deref() != Some(who.org_id.as_str()) {
            return Err(not_found());
        }
        let lines: Vec<LineRow> = sqlx::query_as(
            "SELECT c.commission_id, c.level, c.enrollment_id, e.affiliate_org_id, c.currency, c.sale_minor, c.amount_minor, \
             c.rate_bps, c.commission_version, c.commission_tier, c.held_minor, c.release_at, c.released_at, \
             c.recovered_minor FROM commissions c LEFT JOIN enrollments e ON e.enrollment_id = c.enrollment_id \
             WHERE c.conversion_id = $1 ORDER BY c.level",
        )
        .bind(conversion_id)
        .fetch_all(&mut *conn)
        .await?;
        let entries: Vec<EntryRow> = sqlx::query_as(
            "SELECT j.journal_id, j.kind, j.reference, j.posted_at, n.account, n.enrollment_id, n.currency, n.amount_minor \
             FROM journal j JOIN entries n ON n.journal_id = j.journal_id \
             WHERE j.reference IN (SELECT commission_id FROM commissions WHERE conversion_id = $1 \
                                   UNION ALL SELECT clawback_id FROM clawbacks WHERE conversion_id = $1) \
               AND ($2 OR j.enrollment_id = $3) \
             ORDER BY j.journal_id, n.entry_id",
        )
        .bind(conversion_id)
        .bind(owner)
        .bind(&credited_enrollment)
        .fetch_all(&mut *conn)
        .await?;
        let visible = |enrollment_id: &str| owner || enrollment_id == credited_enrollment;
        let commissions = lines
            .into_iter()
            .map(|l| {
                let shown = visible(&l.enrollment_id);
                pb::CommissionLine {
                    commission_id: if shown { l.commission_id } else { String::new() },
                    level: l.level,
                    enrollment_id: if shown { l.enrollment_id } else { String::new() },
                    affiliate_org_id: if shown {
                        l.affiliate_org_id.unwrap_or_default()
                    } else {
                        String::new()
                    },
                    currency: l.currency,
                    sale_minor: l.sale_minor,
                    amount_minor: l.amount_minor,
                    rate_bps: l.rate_bps,
                    commission_version: u32::try_from(l.commission_version).unwrap_or_default(),
                    commission_tier: l.commission_tier,
                    held_minor: l.held_minor,
                    release_at_micros: l.release_at.timestamp_micros(),
                    released_at_micros: l.released_at.map(|t| t.timestamp_micros()).unwrap_or_default(),
                    recovered_minor: l.recovered_minor,
                }
            })
            .collect();
        let mut postings: Vec<pb::LedgerPosting> = Vec::new();
        let mut last_journal = None;
        for e in entries {
            if last_journal != Some(e.journal_id) {
                last_journal = Some(e.journal_id);
                postings.push(pb::LedgerPosting {
                    kind: e.kind.clone(),
                    reference: e.reference.clone(),
                    posted_at_micros: e.posted_at.timestamp_micros(),
                    entries: Vec::new(),
                });
            }
            if let Some(posting) = postings.last_mut() {
                posting.entries.push(pb::LedgerEntry {
                    account: e.account,
                    enrollment_id: if visible(&e.enrollment_id) {
                        e.enrollment_id
                    } else {
                        String::new()
                    },
                    currency: e.currency,
                    amount_minor: e.amount_minor,
                });
            }
        }
        Ok(pb::ConversionLedgerReply {
            commissions,
            postings,
            owner_view: owner,
        })
    }
}
