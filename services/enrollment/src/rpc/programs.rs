use super::{Enrollment, caller};
use crate::domain::program::{AttributionModel, AttributionPrecedence, ProgramSettings, ProgramStatus, SettingsInput};
use crate::store::{self, programs::ProgramRow};
use amba_bus::events::{OutboxEvent, new_meta};
use amba_core::id::ProgramId;
use amba_core::{ApiError, ErrorCode, cursor};
use amba_proto::wire as pb;
use amba_rules::FraudChecks;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

impl Enrollment {
    /// Creates a draft program with commission version 1. With an idempotency key, a retry with
    /// the same settings returns the first program; different settings are IDEMPOTENCY_MISMATCH.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn create_program(&self, request: pb::CreateProgramRequest) -> Result<pb::ProgramReply, ApiError> {
        let owner = caller(request.caller)?;
        let input = settings_input(request.settings.unwrap_or_default())?;
        let settings = ProgramSettings::create(input)?;
        self.landing_allowed(settings.landing_url.as_deref())?;
        let fingerprint = fingerprint(&settings);
        let key = non_empty(&request.idempotency_key);
        if key.is_some_and(|k| k.len() > 200) {
            return Err(ApiError::invalid("idempotency_key must be at most 200 characters"));
        }

        let mut tx = self.pool.begin().await?;
        let program_id = ProgramId::new();
        let new = store::programs::NewProgram {
            program_id: program_id.as_str(),
            owner_org_id: &owner.org_id,
            settings: &settings,
            idempotency_key: key,
            request_fingerprint: &fingerprint,
        };
        if !store::programs::insert(&mut tx, &new).await? {
            // The key was used before: replay the original outcome, or refuse a different request.
            let key = key.unwrap_or_default();
            let existing = store::programs::get_by_idempotency_key(&mut tx, &owner.org_id, key).await?;
            let existing = existing.ok_or_else(ApiError::internal)?;
            if existing.request_fingerprint.as_deref() != Some(fingerprint.as_str()) {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyMismatch,
                    format!("idempotency_key {key:?} was already used for a program with different settings"),
                ));
            }
            return Ok(pb::ProgramReply {
                program: Some(existing.to_proto()),
                commission_history: vec![],
                duplicate: true,
            });
        }
        let row = store::programs::get(&mut tx, program_id.as_str(), false)
            .await?
            .ok_or_else(ApiError::internal)?;
        self.announce_program(&mut tx, "created", &row, true).await?;
        tx.commit().await?;
        self.waker.wake();
        tracing::info!(%program_id, owner = %owner.org_id, "program created");
        Ok(pb::ProgramReply {
            program: Some(row.to_proto()),
            commission_history: vec![],
            duplicate: false,
        })
    }

    /// Changes settings and/or status. A different commission rule becomes a new version; an
    /// update that changes nothing writes nothing.
    #[tracing::instrument(skip_all, fields(program_id = %request.program_id), err(level = "info"))]
    pub async fn update_program(&self, request: pb::UpdateProgramRequest) -> Result<pb::ProgramReply, ApiError> {
        let owner = caller(request.caller)?;
        let program_id = ProgramId::parse(&request.program_id)?;
        let raw = request.settings.unwrap_or_default();
        let requested_status = raw.status.as_deref().map(str::parse::<ProgramStatus>).transpose()?;
        let input = settings_input(raw)?;
        // Only a landing URL given now is judged: one stored before the rule blocks no other change
        // (the edge refuses to redirect to it anyway).
        let landing_given = input.landing_url.is_some();

        let mut tx = self.pool.begin().await?;
        let row = owned_program(&mut tx, program_id.as_str(), &owner.org_id, true).await?;
        let status = row.status()?;
        if status == ProgramStatus::Archived {
            return Err(ApiError::conflict("an archived program cannot be changed"));
        }
        let current = row.settings()?;
        let next_status = match requested_status {
            Some(next) => status.transition_to(next)?,
            None => status,
        };
        let next = current.apply(input, status)?;
        if landing_given {
            self.landing_allowed(next.landing_url.as_deref())?;
        }
        let commission_changed = next.commission != current.commission;
        if next == current && next_status == status {
            return Ok(pb::ProgramReply {
                program: Some(row.to_proto()),
                commission_history: vec![],
                duplicate: false,
            });
        }
        let version = if commission_changed {
            let version = row.commission_version + 1;
            store::programs::insert_rule(&mut tx, program_id.as_str(), version, &next.commission).await?;
            version
        } else {
            row.commission_version
        };
        let versions = store::programs::Versions {
            commission: version,
            attribution: row.attribution_version + i32::from(current.attribution_changed(&next)),
        };
        store::programs::update(&mut tx, program_id.as_str(), &next, next_status, versions).await?;
        let updated = store::programs::get(&mut tx, program_id.as_str(), false)
            .await?
            .ok_or_else(ApiError::internal)?;
        self.announce_program(&mut tx, "updated", &updated, commission_changed)
            .await?;
        tx.commit().await?;
        self.waker.wake();
        tracing::info!(status = %next_status, commission_version = version, "program updated");
        Ok(pb::ProgramReply {
            program: Some(updated.to_proto()),
            commission_history: vec![],
            duplicate: false,
        })
    }

    /// The program with every commission version; `commission_version` shows a past rule.
    pub async fn get_program(&self, request: pb::GetProgramRequest) -> Result<pb::ProgramReply, ApiError> {
        let owner = caller(request.caller)?;
        let program_id = ProgramId::parse(&request.program_id)?;
        let mut conn = self.pool.acquire().await?;
        let mut row = owned_program(&mut conn, program_id.as_str(), &owner.org_id, false).await?;
        if let Some(version) = request.commission_version {
            let version =
                i32::try_from(version).map_err(|_| ApiError::invalid("commission_version is out of range"))?;
            row = store::programs::get_with_version(&mut conn, program_id.as_str(), version)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("commission version {version} of program {program_id}")))?;
        }
        let history = store::programs::rule_history(&mut conn, program_id.as_str()).await?;
        Ok(pb::ProgramReply {
            program: Some(row.to_proto()),
            commission_history: history,
            duplicate: false,
        })
    }

    /// The caller's own programs, oldest first, keyset-paginated.
    pub async fn list_programs(&self, request: pb::ListProgramsRequest) -> Result<pb::ListProgramsResponse, ApiError> {
        let owner = caller(request.caller)?;
        let after = cursor::decode(&request.cursor)?;
        let limit = cursor::page_size(request.limit);
        let mut conn = self.pool.acquire().await?;
        let rows = store::programs::list(&mut conn, &owner.org_id, after.as_deref(), limit + 1).await?;
        let more = rows.len() > limit as usize;
        let programs: Vec<pb::Program> = rows.iter().take(limit as usize).map(ProgramRow::to_proto).collect();
        let next_cursor = match programs.last() {
            Some(last) if more => cursor::encode(&last.program_id),
            _ => String::new(),
        };
        Ok(pb::ListProgramsResponse { programs, next_cursor })
    }

    /// A landing URL may not send visitors back to the platform itself (its shape is the domain's).
    fn landing_allowed(&self, landing_url: Option<&str>) -> Result<(), ApiError> {
        match (landing_url, self.platform_host.as_deref()) {
            (Some(url), Some(host)) => amba_core::landing::check(url, Some(host)).map(drop),
            _ => Ok(()),
        }
    }

    async fn announce_program(
        &self,
        conn: &mut PgConnection,
        kind: &str,
        row: &ProgramRow,
        commission_changed: bool,
    ) -> Result<(), ApiError> {
        let meta = new_meta();
        let event = pb::ProgramChanged {
            meta: Some(meta.clone()),
            program: Some(row.to_proto()),
            commission_changed,
        };
        let outbox = OutboxEvent::new(self.ns.event("program", kind), &meta, &event);
        Ok(amba_bus::outbox::enqueue(conn, &outbox).await?)
    }
}

/// A program the caller's org owns. An org with an enrollment in it (any status: it knows the
/// program) is told the tool is the owner's (FORBIDDEN); to anyone else another org's program is
/// not found, so ids cannot be probed for existence.
pub(super) async fn owned_program(
    conn: &mut PgConnection,
    program_id: &str,
    org_id: &str,
    lock: bool,
) -> Result<ProgramRow, ApiError> {
    match store::programs::get(conn, program_id, lock).await? {
        Some(row) if row.owner_org_id == org_id => Ok(row),
        Some(_) => {
            let enrolled = store::enrollments::get_by_program_and_org(conn, program_id, org_id)
                .await?
                .is_some();
            Err(ApiError::not_owner(format!("program {program_id}"), enrolled, None))
        }
        None => Err(ApiError::not_found(format!("program {program_id}"))),
    }
}

fn settings_input(s: pb::ProgramSettings) -> Result<SettingsInput, ApiError> {
    let json = |field: &str, text: Option<String>| -> Result<Option<serde_json::Value>, ApiError> {
        text.map(|t| serde_json::from_str(&t).map_err(|e| ApiError::invalid(format!("{field} is not valid JSON ({e}); send a JSON object, e.g. {{\"schema\":1,\"type\":\"percentage\",\"bps\":2000}} (20 %) or {{\"schema\":1,\"type\":\"flat\",\"amount_minor\":1500}}"))))
            .transpose()
    };
    Ok(SettingsInput {
        name: s.name,
        currency: s.currency,
        commission: json("commission", s.commission_json)?,
        approval_mode: s.approval_mode,
        affiliate_approval: s.affiliate_approval,
        attribution_window_days: s.attribution_window_days,
        attribution_model: s.attribution_model,
        attribution_precedence: s.attribution_precedence,
        fraud_checks: json("fraud_checks", s.fraud_checks_json)?,
        hold_days: s.hold_days,
        payout_threshold_minor: s.payout_threshold_minor,
        payout_schedule: s.payout_schedule,
        platform_fee_bps: s.platform_fee_bps,
        multi_level: json("multi_level", s.multi_level_json)?,
        landing_url: s.landing_url,
    })
}

/// A stable digest of validated settings: equal settings, equal fingerprint.
fn fingerprint(s: &ProgramSettings) -> String {
    let mut canonical = serde_json::json!({
        "name": s.name,
        "currency": s.currency.code(),
        "commission": s.commission.to_json(),
        "approval_mode": s.approval_mode.as_str(),
        "affiliate_approval": s.affiliate_approval.as_str(),
        "attribution_window_days": s.attribution_window_days,
        "hold_days": s.hold_days,
        "payout_threshold_minor": s.payout_threshold_minor,
        "payout_schedule": s.payout_schedule.as_str(),
        "platform_fee_bps": s.platform_fee_bps,
        "multi_level": s.multi_level.to_json(),
        "landing_url": s.landing_url,
    });
    // Added later: only a policy other than the default takes part, so fingerprints stored
    // before it existed still match their retries.
    let default_policy = s.attribution_model == AttributionModel::LastTouch
        && s.attribution_precedence == AttributionPrecedence::CodeWins;
    if !default_policy {
        canonical["attribution_model"] = s.attribution_model.as_str().into();
        canonical["attribution_precedence"] = s.attribution_precedence.as_str().into();
    }
    if s.fraud_checks != FraudChecks::default() {
        canonical["fraud_checks"] = s.fraud_checks.to_json();
    }
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}
