use super::{Attribution, caller};
use crate::actors::accrue::{self, Approval};
use crate::actors::writer::{Submission, event};
use crate::domain::export;
use crate::domain::report::{EnrollmentFacts, Report};
use crate::domain::trail::{AssignmentTrail, ReviewTrail, Trail};
use crate::store::{self, conversions::ConversionRow};
use amba_bus::events::{OutboxEvent, new_meta};
use amba_core::id::{ConversionId, EnrollmentId, ProgramId};
use amba_core::{ApiError, ErrorCode, cursor};
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};
use futures::StreamExt;
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
        let (row, _) = self
            .decide_one(&who.org_id, &request.conversion_id, &reason, Verdict::Approve, false)
            .await?;
        Ok(pb::ConversionReply {
            conversion: Some(row.to_proto()),
        })
    }

    /// Owner rejects a pending conversion: no commission.
    #[tracing::instrument(skip_all, fields(conversion_id = %request.conversion_id), err(level = "info"))]
    pub async fn reject(&self, request: pb::DecideConversionRequest) -> Result<pb::ConversionReply, ApiError> {
        let who = caller(request.caller)?;
        let reason = amba_proto::validate::reason(&request.reason)?;
        let (row, _) = self
            .decide_one(&who.org_id, &request.conversion_id, &reason, Verdict::Reject, false)
            .await?;
        Ok(pb::ConversionReply {
            conversion: Some(row.to_proto()),
        })
    }

    /// Owner approves or rejects up to [`MAX_DECISIONS`] conversions: each in its own
    /// transaction (so one conversion's money moves entirely or not at all), every valid one
    /// applied, and each id's outcome in the reply, in the order given.
    #[tracing::instrument(skip_all, fields(count = request.conversion_ids.len()), err(level = "info"))]
    pub async fn decide_many(
        &self,
        request: pb::DecideConversionsRequest,
    ) -> Result<pb::DecideConversionsReply, ApiError> {
        let who = caller(request.caller)?;
        let reason = amba_proto::validate::reason(&request.reason)?;
        let verdict = match request.decision.trim() {
            "approve" => Verdict::Approve,
            "reject" => Verdict::Reject,
            other => {
                return Err(ApiError::invalid(format!(
                    "decision {other:?} is not one of: approve, reject"
                )));
            }
        };
        if request.conversion_ids.is_empty() || request.conversion_ids.len() > MAX_DECISIONS {
            return Err(ApiError::invalid(format!(
                "conversion_ids holds {} ids; give 1 to {MAX_DECISIONS}",
                request.conversion_ids.len()
            )));
        }
        // Each distinct id once, a few at a time (well inside the request's deadline, without
        // taking every connection); a repeated id then answers from its first occurrence.
        let mut distinct: Vec<String> = Vec::new();
        for conversion_id in &request.conversion_ids {
            if !distinct.contains(conversion_id) {
                distinct.push(conversion_id.clone());
            }
        }
        let decisions = distinct.into_iter().map(|conversion_id| {
            let (service, org_id, reason) = (self.clone(), who.org_id.clone(), reason.clone());
            async move {
                let decided = service
                    .decide_one(&org_id, &conversion_id, &reason, verdict, true)
                    .await;
                let outcome = decision_outcome(&conversion_id, decided);
                (conversion_id, outcome)
            }
        });
        let decided: std::collections::HashMap<String, pb::ConversionDecisionOutcome> =
            futures::stream::iter(decisions)
                .buffered(DECISIONS_AT_ONCE)
                .collect()
                .await;
        let mut answered = std::collections::HashSet::new();
        let outcomes = request
            .conversion_ids
            .iter()
            .map(|conversion_id| {
                let mut outcome = decided.get(conversion_id).cloned().unwrap_or_default();
                if !answered.insert(conversion_id) && outcome.error_code.is_empty() {
                    outcome.outcome = format!("already {}", outcome.status);
                }
                outcome
            })
            .collect();
        Ok(pb::DecideConversionsReply { outcomes })
    }

    /// Owner credits an unattributed conversion to an active enrollment of the same program.
    /// It then goes the way a sale attributed on arrival would: approved with the commission of
    /// the rule in force at the sale's time in `auto` programs, else pending; and announces the
    /// same event (`conversion.approved` or `conversion.recorded`, previous status
    /// `unattributed`), so the ledger books it once. Assigning it again to the same enrollment
    /// changes nothing (`duplicate`).
    #[tracing::instrument(skip_all, fields(conversion_id = %request.conversion_id), err(level = "info"))]
    pub async fn assign(&self, request: pb::AssignConversionRequest) -> Result<pb::AssignConversionReply, ApiError> {
        let who = caller(request.caller)?;
        let reason = amba_proto::validate::reason(&request.reason)?;
        let conversion_id = ConversionId::parse(request.conversion_id.trim())?;
        let target = match (non_empty(&request.enrollment_id), non_empty(&request.code)) {
            (Some(enrollment_id), None) => Target::Enrollment(EnrollmentId::parse(&enrollment_id)?),
            (None, Some(code)) => Target::Code(code),
            _ => {
                return Err(ApiError::invalid(
                    "name the affiliate by exactly one of enrollment_id or code",
                ));
            }
        };
        let mut tx = self.pool.begin().await?;
        let (mut row, program) = self.owned(&mut tx, conversion_id.as_str(), &who.org_id, true).await?;
        let enrollment = resolve_target(&mut tx, &target, &row.program_id).await?;
        if row.status != "unattributed" {
            if row.attribution == "assigned" && row.enrollment_id.as_deref() == Some(enrollment.enrollment_id.as_str())
            {
                return Ok(pb::AssignConversionReply {
                    conversion: Some(row.to_proto()),
                    duplicate: true,
                });
            }
            let how = match (row.attribution.as_str(), &row.enrollment_id) {
                ("assigned", Some(earlier)) => format!(", assigned to enrollment {earlier}"),
                (attribution, _) => format!(" (attributed by {attribution})"),
            };
            return Err(ApiError::conflict(format!(
                "only unattributed conversions can be assigned; this one is {}{how}",
                row.status
            )));
        }
        if row.hold_reasons.split(',').any(|r| r == "fx_rate_missing") {
            return Err(ApiError::conflict(
                "this sale waits for the reference exchange rate of its date; assign it once it is converted into \
                 the program's currency",
            ));
        }
        if enrollment.status != "active" {
            return Err(ApiError::conflict(format!(
                "enrollment {} is {}; only an active affiliate can be credited",
                enrollment.enrollment_id, enrollment.status
            )));
        }
        // The customer binding, as on arrival: a renewal of a customer bound to this affiliate,
        // or the first conversion that binds the customer (an existing binding is kept).
        let binding = match &row.customer_ref {
            Some(customer) => store::read_model::bindings(&mut tx, &[(row.program_id.clone(), customer.clone())])
                .await?
                .remove(&(row.program_id.clone(), customer.clone())),
            None => None,
        };
        let renewal_first = binding
            .filter(|b| b.enrollment.enrollment_id == enrollment.enrollment_id)
            .map(|b| b.first_conversion_at);
        row.renewal = renewal_first.is_some();
        row.customer_first_conversion_at = renewal_first.or(row.customer_ref.as_ref().map(|_| row.occurred_at));
        if let (Some(customer), false) = (&row.customer_ref, row.renewal) {
            store::conversions::bind_customers(
                &mut tx,
                &[(
                    row.program_id.clone(),
                    customer.clone(),
                    enrollment.enrollment_id.clone(),
                    row.occurred_at,
                )],
            )
            .await?;
        }
        row.attribution = "assigned".into();
        row.enrollment_id = Some(enrollment.enrollment_id.clone());
        row.affiliate_org_id = Some(enrollment.affiliate_org_id.clone());
        row.code = match &target {
            Target::Code(code) => Some(code.clone()),
            Target::Enrollment(_) => None,
        };
        row.reason = non_empty(&reason);
        let mut trail = Trail {
            assignment: Some(AssignmentTrail {
                assigned_at: Utc::now(),
                enrollment_id: enrollment.enrollment_id.clone(),
                affiliate_org_id: enrollment.affiliate_org_id.clone(),
                code: row.code.clone(),
                reason: row.reason.clone(),
            }),
            ..Trail::default()
        };
        let kind = if program.auto_approve {
            let now = Utc::now();
            let version =
                store::read_model::version_at(&mut tx, &row.program_id, row.occurred_at, program.commission_version)
                    .await?;
            let priced = self.price_one(&mut tx, &row, version, now).await?;
            row.status = "approved".into();
            row.decided_at = Some(now);
            row.commission_minor = priced.commission_minor;
            row.commission_version = priced.version;
            row.commission_tier = priced.tier;
            row.reason = joined(row.reason.take(), priced.reason);
            trail.commission = Some(priced.trail);
            "approved"
        } else {
            row.status = "pending".into();
            "recorded"
        };
        store::conversions::assign(&mut tx, &row).await?;
        store::conversions::extend_trail(&mut tx, &row.conversion_id, &trail).await?;
        amba_bus::outbox::enqueue(&mut tx, &event(&self.ns, kind, &row.to_proto(), "unattributed")).await?;
        tx.commit().await?;
        self.waker.wake();
        Ok(pb::AssignConversionReply {
            conversion: Some(row.to_proto()),
            duplicate: false,
        })
    }

    /// Owner: a page of the program's conversions by sale time in `[from, to)`, as CSV, with
    /// the commission figures this service decided (direct commission at approval, and the part
    /// of it refunds took back, prorated as the ledger does).
    #[tracing::instrument(skip_all, fields(program_id = %request.program_id), err(level = "info"))]
    pub async fn export(&self, request: pb::ExportConversionsRequest) -> Result<pb::ExportConversionsReply, ApiError> {
        let who = caller(request.caller)?;
        let program_id = ProgramId::parse(request.program_id.trim())?;
        let (from, to) = amba_core::csv::export_range(request.from_micros, request.to_micros, MAX_EXPORT_DAYS)?;
        let after = match cursor::decode(&request.cursor)? {
            None => None,
            Some(key) => {
                Some(export_cursor(&key).ok_or_else(|| ApiError::invalid("cursor is not one this server issued"))?)
            }
        };
        let page_rows = match request.limit {
            0 => EXPORT_PAGE_ROWS,
            n => n.min(EXPORT_PAGE_ROWS),
        };
        let mut conn = self.pool.acquire().await?;
        owned_program(&mut conn, program_id.as_str(), &who.org_id, MY_CONVERSIONS_TOOL).await?;
        let rows = store::conversions::export_page(
            &mut conn,
            program_id.as_str(),
            from,
            to,
            after.as_ref().map(|(at, id)| (*at, id.as_str())),
            i64::from(page_rows) + 1,
        )
        .await?;
        let mut csv = export::header();
        let mut count: u32 = 0;
        let mut last: Option<&ConversionRow> = None;
        for row in &rows {
            let line = export::line(&export::ExportRow {
                conversion_id: &row.conversion_id,
                external_id: &row.external_id,
                occurred_at: row.occurred_at,
                status: &row.status,
                affiliate_org_id: row.affiliate_org_id.as_deref(),
                enrollment_id: row.enrollment_id.as_deref(),
                code: row.code.as_deref(),
                amount_minor: row.amount_minor,
                currency: &row.currency,
                commission_minor: row.commission_minor,
                refunded_minor: row.clawed_back_minor,
                reason: row.reason.as_deref(),
                decided_at: row.decided_at,
            });
            // A page stays far below NATS's message limit however long the texts are.
            if count == page_rows || (count > 0 && csv.len() + line.len() > EXPORT_PAGE_BYTES) {
                break;
            }
            csv.push_str(&line);
            count += 1;
            last = Some(row);
        }
        let next_cursor = match last {
            Some(last) if (count as usize) < rows.len() => cursor::encode(&format!(
                "{}|{}",
                last.occurred_at.timestamp_micros(),
                last.conversion_id
            )),
            _ => String::new(),
        };
        Ok(pb::ExportConversionsReply {
            csv,
            rows: count,
            next_cursor,
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
        let mut tx = self.pool.begin().await?;
        let row = self.owned(&mut tx, conversion_id.as_str(), &who.org_id, true).await?.0;
        if let Some(key) = &key
            && let Some((clawback_id, refund, _)) =
                store::conversions::clawback_by_key(&mut tx, conversion_id.as_str(), key).await?
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
        .await?;
        let after = store::conversions::get(&mut tx, conversion_id.as_str(), false)
            .await?
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
        .await?;
        tx.commit().await?;
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
            && !["pending", "held", "approved", "rejected", "unattributed", "clawed_back"].contains(&status.as_str())
        {
            return Err(ApiError::invalid(format!(
                "invalid status {status:?}; expected pending, held (pending for a fraud check), approved, rejected, \
                 unattributed or clawed_back"
            )));
        }
        let after = cursor::decode(&request.cursor)?;
        let limit = cursor::page_size(request.limit);
        let mut conn = self.pool.acquire().await?;
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
            owned_program(&mut conn, program_id.as_str(), &who.org_id, MY_CONVERSIONS_TOOL).await?;
            store::conversions::ListFilter {
                program_id: Some(program_id.as_str()),
                affiliate_org_id: None,
                status: status.as_deref(),
            }
        };
        let rows = store::conversions::list(&mut conn, &filter, after.as_deref(), limit + 1).await?;
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

    /// The conversion, if the caller owns its program, with the program. An org enrolled in
    /// that program gets FORBIDDEN, anyone else NOT_FOUND (as for an unknown id).
    async fn owned(
        &self,
        conn: &mut PgConnection,
        conversion_id: &str,
        org_id: &str,
        lock: bool,
    ) -> Result<(ConversionRow, crate::domain::report::ProgramFacts), ApiError> {
        let not_found = || ApiError::not_found(format!("conversion {conversion_id}"));
        let row = store::conversions::get(conn, conversion_id, lock)
            .await?
            .ok_or_else(not_found)?;
        let programs = store::read_model::programs(conn, std::slice::from_ref(&row.program_id)).await?;
        match programs.get(&row.program_id) {
            Some(program) if program.owner_org_id == org_id => Ok((row, program.clone())),
            Some(_) => {
                let enrolled = enrolled(conn, &row.program_id, org_id).await?;
                Err(ApiError::not_owner(
                    format!("conversion {conversion_id}"),
                    enrolled,
                    None,
                ))
            }
            None => Err(not_found()),
        }
    }

    /// Decides one pending conversion in its own transaction; returns it and whether this call
    /// changed it. One already in the verdict's status is returned unchanged when `repeat_ok`
    /// (bulk decisions), else refused like any non-pending one (CONFLICT naming its status).
    async fn decide_one(
        &self,
        org_id: &str,
        conversion_id: &str,
        reason: &str,
        verdict: Verdict,
        repeat_ok: bool,
    ) -> Result<(ConversionRow, bool), ApiError> {
        let conversion_id = ConversionId::parse(conversion_id.trim())?;
        let mut tx = self.pool.begin().await?;
        let (mut row, program) = self.owned(&mut tx, conversion_id.as_str(), org_id, true).await?;
        if repeat_ok && row.status == verdict.status() {
            return Ok((row, false));
        }
        if row.status != "pending" {
            return Err(ApiError::conflict(format!(
                "only pending conversions can be decided; this one is {}",
                row.status
            )));
        }
        let now = Utc::now();
        match verdict {
            Verdict::Approve => {
                if row.hold_reasons.split(',').any(|r| r == "fx_rate_missing") {
                    return Err(ApiError::conflict(
                        "this sale waits for the reference exchange rate of its date; it is converted into the \
                         program's currency (and can then be approved) once the rate arrives",
                    ));
                }
                let enrollment_id = row.enrollment_id.clone().ok_or_else(ApiError::internal)?;
                let enrollment = store::read_model::enrollment(&mut tx, &enrollment_id).await?;
                if enrollment.as_ref().is_none_or(|e| e.status != "active") {
                    return Err(ApiError::conflict(
                        "the affiliate's enrollment is no longer active; reject the conversion instead",
                    ));
                }
                let priced = self.price_one(&mut tx, &row, program.commission_version, now).await?;
                row.commission_minor = priced.commission_minor;
                row.commission_version = priced.version;
                row.commission_tier = priced.tier;
                // Releasing a fraud hold without a reason still says it was released.
                let given = non_empty(reason).or_else(|| {
                    row.held_for_review.then(|| {
                        format!(
                            "released after review (held for {})",
                            row.hold_reasons.replace(',', ", ")
                        )
                    })
                });
                row.reason = match (given, priced.reason) {
                    (None, None) => row.reason,
                    (given, explained) => joined(given, explained),
                };
                let trail = Trail {
                    commission: Some(priced.trail),
                    ..Trail::default()
                };
                store::conversions::extend_trail(&mut tx, &row.conversion_id, &trail).await?;
            }
            Verdict::Reject => row.reason = non_empty(reason).or(row.reason),
        }
        let review = Trail {
            review: Some(ReviewTrail {
                decided_at: now,
                verdict: verdict.status().to_owned(),
                reason: non_empty(reason),
                released_holds: row
                    .hold_reasons
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }),
            ..Trail::default()
        };
        store::conversions::extend_trail(&mut tx, &row.conversion_id, &review).await?;
        // Decided: no longer waiting for review (hold_reasons keep why it waited).
        row.held_for_review = false;
        row.status = verdict.status().into();
        row.decided_at = Some(now);
        store::conversions::decide(&mut tx, &row).await?;
        amba_bus::outbox::enqueue(&mut tx, &event(&self.ns, verdict.status(), &row.to_proto(), "pending")).await?;
        tx.commit().await?;
        self.waker.wake();
        Ok((row, true))
    }

    /// The commission of one approval now, under rule `version`, counted into the tier volume.
    async fn price_one(
        &self,
        conn: &mut PgConnection,
        row: &ConversionRow,
        version: i32,
        decided_at: DateTime<Utc>,
    ) -> Result<accrue::Priced, ApiError> {
        let approval = Approval {
            program_id: row.program_id.clone(),
            version,
            enrollment_id: row.enrollment_id.clone().ok_or_else(ApiError::internal)?,
            amount_minor: row.amount_minor,
            currency: row.currency.clone(),
            renewal_since: row
                .renewal
                .then_some(())
                .and(row.customer_first_conversion_at)
                .map(|first| (first, row.occurred_at)),
            decided_at,
        };
        let priced = accrue::price(conn, &self.rules, &[approval]).await.map_err(|e| {
            tracing::error!(error = %e, "pricing an approval failed");
            ApiError::unavailable("the commission rule is not available yet; retry shortly")
        })?;
        priced.into_iter().next().ok_or_else(ApiError::internal)
    }
}

/// What an affiliate lists instead of a program's conversions.
const MY_CONVERSIONS_TOOL: &str = "amba_affiliate_my_conversions_list";

/// Checks that the caller's org owns the program: FORBIDDEN (naming `instead`) for an org
/// enrolled in it, NOT_FOUND for anyone else and for an unknown program.
async fn owned_program(conn: &mut PgConnection, program_id: &str, org_id: &str, instead: &str) -> Result<(), ApiError> {
    let programs = store::read_model::programs(conn, &[program_id.to_owned()]).await?;
    match programs.get(program_id) {
        Some(program) if program.owner_org_id == org_id => Ok(()),
        Some(_) => {
            let enrolled = enrolled(conn, program_id, org_id).await?;
            Err(ApiError::not_owner(
                format!("program {program_id}"),
                enrolled,
                Some(instead),
            ))
        }
        None => Err(ApiError::not_found(format!("program {program_id}"))),
    }
}

/// Whether the org has an enrollment in the program, whatever its status: it learned of the
/// program through it, so an owner-only refusal may say why.
async fn enrolled(conn: &mut PgConnection, program_id: &str, org_id: &str) -> Result<bool, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM enrollments_view WHERE program_id = $1 AND affiliate_org_id = $2)",
    )
    .bind(program_id)
    .bind(org_id)
    .fetch_one(conn)
    .await?)
}

/// What one id of a bulk decision came to.
fn decision_outcome(
    conversion_id: &str,
    decided: Result<(ConversionRow, bool), ApiError>,
) -> pb::ConversionDecisionOutcome {
    match decided {
        Ok((row, changed)) => pb::ConversionDecisionOutcome {
            outcome: if changed {
                row.status.clone()
            } else {
                format!("already {}", row.status)
            },
            conversion_id: row.conversion_id,
            status: row.status,
            commission_minor: row.commission_minor,
            error_code: String::new(),
        },
        Err(err) => pb::ConversionDecisionOutcome {
            conversion_id: conversion_id.to_owned(),
            outcome: match err.code {
                ErrorCode::NotFound => "not found".to_owned(),
                ErrorCode::Forbidden => format!("forbidden: {}", err.message),
                ErrorCode::Conflict => format!("conflict: {}", err.message),
                ErrorCode::InvalidArgument => format!("invalid: {}", err.message),
                _ => format!("not applied, retry: {}", err.message),
            },
            status: String::new(),
            commission_minor: 0,
            error_code: err.code.as_str().to_owned(),
        },
    }
}

/// Most conversions one bulk decision takes, and how many of them are decided at once.
const MAX_DECISIONS: usize = 200;
const DECISIONS_AT_ONCE: usize = 8;
/// Most conversion rows in one page of the export, and its size in bytes.
const EXPORT_PAGE_ROWS: u32 = 5_000;
const EXPORT_PAGE_BYTES: usize = 512 * 1024;
/// The longest sale-time range one export call covers.
const MAX_EXPORT_DAYS: i64 = 366;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    fn status(self) -> &'static str {
        match self {
            Verdict::Approve => "approved",
            Verdict::Reject => "rejected",
        }
    }
}

/// Whom an owner assigns a conversion to.
enum Target {
    Enrollment(EnrollmentId),
    Code(String),
}

/// The enrollment an assignment names, which must belong to the conversion's program. An
/// unknown one and another program's are refused alike, so nothing leaks about other programs.
async fn resolve_target(
    conn: &mut PgConnection,
    target: &Target,
    program_id: &str,
) -> Result<EnrollmentFacts, ApiError> {
    match target {
        Target::Enrollment(enrollment_id) => store::read_model::enrollment(conn, enrollment_id.as_str())
            .await?
            .filter(|e| e.program_id == program_id)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "enrollment {enrollment_id} is not an enrollment of program {program_id} (see amba_affiliate_affiliates_list)"
                ))
            }),
        Target::Code(code) => {
            let mut codes = store::read_model::codes(conn, std::slice::from_ref(code)).await?;
            let row = codes
                .remove(code)
                .filter(|c| c.program_id == program_id)
                .ok_or_else(|| ApiError::invalid(format!("referral code {code:?} is not a code of program {program_id}")))?;
            if row.status == "retired" {
                return Err(ApiError::conflict(
                    "that referral code was retired (rotated); name the affiliate by enrollment_id or its current code",
                ));
            }
            row.enrollment
                .ok_or_else(|| ApiError::conflict("that referral code's enrollment is not known yet; retry shortly"))
        }
    }
}

/// An owner's reason and the rule's explanation, both kept.
fn joined(given: Option<String>, explained: Option<String>) -> Option<String> {
    match (given, explained) {
        (Some(given), Some(explained)) => Some(format!("{given}; {explained}")),
        (given, explained) => given.or(explained),
    }
}

/// `<occurred_at micros>|<conversion_id>` of an export page's last row.
fn export_cursor(key: &str) -> Option<(DateTime<Utc>, String)> {
    let (micros, conversion_id) = key.split_once('|')?;
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    ConversionId::parse(conversion_id).ok().map(|id| (at, id.to_string()))
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
