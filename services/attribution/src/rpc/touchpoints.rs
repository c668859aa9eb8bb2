use super::Attribution;
use crate::store::{self, touchpoints::NewTouchpoint};
use amba_bus::events::{OutboxEvent, new_meta};
use amba_core::ApiError;
use amba_core::id::TouchpointId;
use amba_proto::wire as pb;
use chrono::{DateTime, Duration, Utc};

/// The same (code, subject) clicking again within this window is one touchpoint.
const DEDUPE_WINDOW: Duration = Duration::minutes(30);

impl Attribution {
    /// A click: public (no token), so it validates everything and reveals little. Without a
    /// `program_id` the code's program is used (affiliate links).
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn record_touchpoint(
        &self,
        r: pb::RecordTouchpointRequest,
    ) -> Result<pb::RecordTouchpointReply, ApiError> {
        let now = Utc::now();
        let r = amba_proto::validate::touchpoint(&r, now)?;
        let (code, subject_ref) = (r.code.as_str(), r.subject_ref.as_str());
        let occurred_at = DateTime::from_timestamp_micros(r.occurred_at_micros).unwrap_or(now);
        let landing_url = Some(r.landing_url.as_str()).filter(|u| !u.is_empty());

        let mut tx = self.pool.begin().await?;
        let codes = store::read_model::codes(&mut tx, &[code.to_owned()]).await?;
        let unknown = || ApiError::not_found("referral code");
        let code_row = codes.get(code).ok_or_else(unknown)?;
        if !r.program_id.is_empty() && r.program_id != code_row.program_id {
            return Err(unknown());
        }
        if code_row.status != "active" {
            return Err(ApiError::conflict("that referral code was retired"));
        }
        let enrollment = code_row
            .enrollment
            .as_ref()
            .filter(|e| e.status == "active")
            .ok_or_else(|| ApiError::conflict("that affiliate is not active in the program"))?;
        let programs = store::read_model::programs(&mut tx, std::slice::from_ref(&code_row.program_id)).await?;
        let program = programs.get(&code_row.program_id).ok_or_else(unknown)?;
        if program.status != "active" {
            return Err(ApiError::conflict(format!("the program is {}", program.status)));
        }
        let reply = |touchpoint_id: String, duplicate| pb::RecordTouchpointReply {
            touchpoint_id,
            duplicate,
            program_id: program.program_id.clone(),
            enrollment_id: enrollment.enrollment_id.clone(),
            landing_url: program.landing_url.clone().unwrap_or_default(),
        };
        if let Some(existing) =
            store::touchpoints::recent(&mut tx, code, subject_ref, occurred_at - DEDUPE_WINDOW).await?
        {
            return Ok(reply(existing, true));
        }
        let touchpoint_id = TouchpointId::new().to_string();
        let client_ip = Some(r.client_ip.as_str()).filter(|s| !s.is_empty());
        let user_agent = r.user_agent.as_str();
        store::touchpoints::insert(
            &mut tx,
            &NewTouchpoint {
                touchpoint_id: &touchpoint_id,
                program_id: &program.program_id,
                enrollment_id: &enrollment.enrollment_id,
                code,
                subject_ref,
                occurred_at,
                landing_url,
                client_ip,
                user_agent: Some(user_agent).filter(|s| !s.is_empty()),
            },
        )
        .await?;
        let meta = new_meta();
        let event = pb::TouchpointRecorded {
            meta: Some(meta.clone()),
            touchpoint_id: touchpoint_id.clone(),
            program_id: program.program_id.clone(),
            enrollment_id: enrollment.enrollment_id.clone(),
            code: code.to_owned(),
            subject_ref: subject_ref.to_owned(),
            occurred_at_micros: occurred_at.timestamp_micros(),
        };
        amba_bus::outbox::enqueue(
            &mut tx,
            &OutboxEvent::new(self.ns.event("touchpoint", "recorded"), &meta, &event),
        )
        .await?;
        tx.commit().await?;
        self.waker.wake();
        Ok(reply(touchpoint_id, false))
    }
}
