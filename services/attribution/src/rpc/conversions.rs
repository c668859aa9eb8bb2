use super::{Attribution, caller, db_error};
use crate::actors::accrue::{self, Approval};
use crate::actors::writer::{Submission, event};
use crate::domain::report::Report;
use crate::store::{self, conversions::ConversionRow};
use amba_bus::events::{OutboxEvent, new_meta};
use amba_core::id::{ConversionId, ProgramId};
use amba_core::{ApiError, ErrorCode, cursor};
use amba_proto::wire as pb;
use chrono::Utc;
use sqlx::PgConnection;

impl Attribution {
    /// Reports through the group-commit writers; one outcome each, in order. Invalid ones fail alone.
    pub async fn report_batch(&self, request: pb::ReportBatchRequest) -> Result<pb::ReportConversionsReply, ApiError> {
        let now = Utc::now();
        let pending = request.reports.into_iter().map(|item| {
            let writers = self.writers.clone();
            async move {
                let who = caller(item.caller)?;
                let report = Report::parse(&item.report.unwrap_or_default(), now)?;
                writers
                    .submit(Submission {
                        report,
                        caller_org_id: who.org_id,
                        traceparent: item.traceparent,
                    })
                    .await
            }
        });
        let outcomes = futures::future::join_all(pending).await;
        Ok(pb::ReportConversionsReply {
            outcomes: outcomes
                .into_iter()
                .map(|o| pb::ReportOutcome {
                    result: Some(match o {
                        Ok(reply) => pb::report_outcome::Result::Ok(reply),
                        Err(err) => pb::report_outcome::Result::Error(amba_bus::rpc::error_to_proto(&err)),
                    }),
                })
                .collect(),
        })
    }

    /// Owner approves a pending conversion: commission is decided now, under the current rule.
    #[tracing::instrument(skip_all, fields(conversion_id = %request.conversion_id), err(level = "info"))]
    pub async fn approve(&self, request: pb::DecideConversionRequest) -> Result<pb::ConversionReply, ApiError> {
        let who = caller(request.caller)?;
        let reason = amba_proto::validate::reason(&request.reason)?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let (mut row, program) = self.owned_pending(&mut tx, &request.conversion_id, &who.org_id).await?;
        let enrollment_id = row.enrollment_id.clone().ok_or_else(ApiError::internal)?;
        let enrollment = store::read_model::enrollment(&mut tx, &enrollment_id)
            .await
            .map_err(db_error)?;
        if enrollment.as_ref().is_none_or(|e| e.status != "active") {
            return Err(ApiError::conflict(
                "the affiliate's enrollment is no longer active; reject the conversion instead",
            ));
        }
        let now = Utc::now();
        let approval = Approval {
            program_id: row.program_id.clone(),
            version: program.commission_version,
            enrollment_id,
            amount_minor: row.amount_minor,
            renewal_since: row
                .renewal
                .then_some(())
                .and(row.customer_first_conversion_at)
                .map(|first| (first, row.occurred_at)),
            decided_at: now,
        };
        let priced = accrue::price(&mut tx, &self.rules, &[approval]).await.map_err(|e| {
            tracing::error!(error = %e, "pricing an approval failed");
            ApiError::unavailable("the commission rule is not available yet; retry shortly")
        })?;
        let priced = priced.first().copied().ok_or_else(ApiError::internal)?;
        row.status = "approved".into();
        row.decided_at = Some(now);
        row.commission_minor = priced.commission_minor;
        row.commission_version = priced.version;
        row.commission_tier = priced.tier;
        if !reason.is_empty() {
            row.reason = Some(reason);
        }
        self.write_decision(&mut tx, &row, "approved").await?;
        tx.commit().await.map_err(db_error)?;
        self.waker.wake();
        Ok(pb::ConversionReply {
            conversion: Some(row.to_proto()),
        })
    }

    /// Owner rejects a pending conversion: no commission.
    #[tracing::instrument(skip_all, fields(conversion_id = %request.conversion_id), err(level = "info"))]
    pub async fn reject(&self, request: pb::DecideConversionRequest) -> Result<pb::ConversionReply, ApiError> {
        let who = caller(request.caller)?;
        let reason = amba_proto::validate::reason(&request.reason)?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let (mut row, _) = self.owned_pending(&mut tx, &request.conversion_id, &who.org_id).await?;
        row.status = "rejected".into();
        row.decided_at = Some(Utc::now());
        row.reason = non_empty(&reason).or(row.reason);
        self.write_decision(&mut tx, &row, "rejected").await?;
        tx.commit().await.map_err(db_error)?;
        self.waker.wake();
        Ok(pb::ConversionReply {
            conversion: Some(row.to_proto()),
        })
    }

    /// Owner records a refund or chargeback (full or partial). The commission service reverses
    /// the commission from the `conversion.clawed_back` event. Idempotent on the key; without
    /// one, on a key made of the request itself (amount, or "the rest", and reason), so a blind
    /// retry of a request whose reply was lost returns the recorded clawback instead of a
    /// second refund. (Two equal partial refunds of one conversion need their own keys.)
    #[tracing::instrument(skip_all, fields(conversion_id = request.clawback.as_ref().map(|c| c.conversion_id.as_str())), err(level = "info"))]
    pub async fn clawback(&self, request: pb::AuthenticatedClawback) -> Result<pb::ClawbackReply, ApiError> {
        let who = caller(request.caller)?;
        let request = amba_proto::validate::clawback(&request.clawback.unwrap_or_default())?;
        let conversion_id = ConversionId::parse(&request.conversion_id)?;
        let reason = request.reason.clone();
        let key = Some(non_empty(&request.idempotency_key).unwrap_or_else(|| natural_clawback_key(&request)));
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let row = self.owned(&mut tx, conversion_id.as_str(), &who.org_id, true).await?.0;
        if let Some(key) = &key
            && let Some((clawback_id, refund, _)) =
                store::conversions::clawback_by_key(&mut tx, conversion_id.as_str(), key)
                    .await
                    .map_err(db_error)?
        {
            if request.amount_minor != 0 && request.amount_minor != refund {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyMismatch,
                    "idempotency_key was used for a clawback of another amount",
                ));
            }
            return Ok(pb::ClawbackReply {
                conversion: Some(row.to_proto()),
                clawback_id,
                refund_minor: refund,
                duplicate: true,
            });
        }
        match row.status.as_str() {
            "approved" => {}
            "clawed_back" => return Err(ApiError::conflict("this conversion was already clawed back in full")),
            other => {
                return Err(ApiError::conflict(format!(
                    "only approved conversions can be clawed back; this one is {other}"
                )));
            }
        }
        let remaining = row.amount_minor - row.clawed_back_minor;
        let refund = if request.amount_minor == 0 {
            remaining
        } else {
            request.amount_minor
        };
        if refund > remaining {
            return Err(ApiError::conflict(format!(
                "only {remaining} of this conversion remains to claw back"
            )));
        }
        if refund <= 0 {
            return Err(ApiError::conflict("nothing remains to claw back"));
        }
        let clawback_id = format!("clb_{}", amba_core::id::time_ordered_suffix());
        store::conversions::insert_clawback(
            &mut tx,
            &clawback_id,
            conversion_id.as_str(),
            refund,
            &reason,
            key.as_deref(),
        )
        .await
        .map_err(db_error)?;
        let after = store::conversions::get(&mut tx, conversion_id.as_str(), false)
            .await
            .map_err(db_error)?
            .ok_or_else(ApiError::internal)?;
        let meta = new_meta();
        let body = pb::ConversionClawedBack {
            meta: Some(meta.clone()),
            clawback_id: clawback_id.clone(),
            conversion: Some(after.to_proto()),
            refund_minor: refund,
            reason,
        };
        amba_bus::outbox::enqueue(
            &mut tx,
            &OutboxEvent::new(self.ns.event("conversion", "clawed_back"), &meta, &body),
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        self.waker.wake();
        Ok(pb::ClawbackReply {
            conversion: Some(after.to_proto()),
            clawback_id,
            refund_minor: refund,
            duplicate: false,
        })
    }

    /// Owner: a program's conversions. Affiliate (`mine`): the caller org's own.
    pub async fn list(&self, request: pb::ListConversionsRequest) -> Result<pb::ListConversionsResponse, ApiError> {
        let who = caller(request.caller)?;
        let program_id = non_empty(&request.program_id)
            .map(|p| ProgramId::parse(&p))
            .transpose()?;
        let status = non_empty(&request.status);
        if let Some(status) = &status
            && !["pending", "approved", "rejected", "unattributed", "clawed_back"].contains(&status.as_str())
        {
            return Err(ApiError::invalid(format!(
                "invalid status {status:?}; expected pending, approved, rejected, unattributed or clawed_back"
            )));
        }
        let after = cursor::decode(&request.cursor)?;
        let limit = cursor::page_size(request.limit);
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let filter = if request.mine {
            store::conversions::ListFilter {
                program_id: program_id.as_ref().map(|p| p.as_str()),
                affiliate_org_id: Some(&who.org_id),
                status: status.as_deref(),
            }
        } else {
            let program_id = program_id
                .as_ref()
                .ok_or_else(|| ApiError::invalid("program_id is required"))?;
            let programs = store::read_model::programs(&mut conn, &[program_id.to_string()])
                .await
                .map_err(db_error)?;
            if programs
                .get(program_id.as_str())
                .is_none_or(|p| p.owner_org_id != who.org_id)
            {
                return Err(ApiError::not_found(format!("program {program_id}")));
            }
            store::conversions::ListFilter {
                program_id: Some(program_id.as_str()),
                affiliate_org_id: None,
                status: status.as_deref(),
            }
        };
        let rows = store::conversions::list(&mut conn, &filter, after.as_deref(), limit + 1)
            .await
            .map_err(db_error)?;
        let more = rows.len() > limit as usize;
        let conversions: Vec<pb::Conversion> = rows.iter().take(limit as usize).map(ConversionRow::to_proto).collect();
        let next_cursor = match conversions.last() {
            Some(last) if more => cursor::encode(&last.conversion_id),
            _ => String::new(),
        };
        Ok(pb::ListConversionsResponse {
            conversions,
            next_cursor,
        })
    }

    /// The conversion, if the caller owns its program (else NOT_FOUND), with the program.
    async fn owned(
        &self,
        conn: &mut PgConnection,
        conversion_id: &str,
        org_id: &str,
        lock: bool,
    ) -> Result<(ConversionRow, crate::domain::report::ProgramFacts), ApiError> {
        let not_found = || ApiError::not_found(format!("conversion {conversion_id}"));
        let row = store::conversions::get(conn, conversion_id, lock)
            .await
            .map_err(db_error)?
            .ok_or_else(not_found)?;
        let programs = store::read_model::programs(conn, std::slice::from_ref(&row.program_id))
            .await
            .map_err(db_error)?;
        let program = programs
            .get(&row.program_id)
            .filter(|p| p.owner_org_id == org_id)
            .cloned()
            .ok_or_else(not_found)?;
        Ok((row, program))
    }

    async fn owned_pending(
        &self,
        conn: &mut PgConnection,
        conversion_id: &str,
        org_id: &str,
    ) -> Result<(ConversionRow, crate::domain::report::ProgramFacts), ApiError> {
        let conversion_id = ConversionId::parse(conversion_id.trim())?;
        let (row, program) = self.owned(conn, conversion_id.as_str(), org_id, true).await?;
        if row.status != "pending" {
            return Err(ApiError::conflict(format!(
                "only pending conversions can be decided; this one is {}",
                row.status
            )));
        }
        Ok((row, program))
    }

    async fn write_decision(&self, conn: &mut PgConnection, row: &ConversionRow, kind: &str) -> Result<(), ApiError> {
        store::conversions::decide(conn, row).await.map_err(db_error)?;
        amba_bus::outbox::enqueue(conn, &event(&self.ns, kind, &row.to_proto(), "pending"))
            .await
            .map_err(db_error)
    }
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The idempotency key of a clawback that names none: the request itself.
fn natural_clawback_key(request: &pb::ClawbackRequest) -> String {
    let amount = match request.amount_minor {
        0 => "rest".to_owned(),
        amount => amount.to_string(),
    };
    format!("natural:{amount}:{}", request.reason)
}
