//! Explain: the decision trail a conversion's decisions recorded, to its program's owner in
//! full and to the affiliate credited with it without any other affiliate's identity.

use super::{Attribution, caller};
use crate::domain::trail::ReadWith;
use crate::store;
use amba_core::ApiError;
use amba_core::id::ConversionId;
use amba_proto::wire as pb;

impl Attribution {
    pub async fn explain(&self, request: pb::ExplainConversionRequest) -> Result<pb::ConversionExplanation, ApiError> {
        let who = caller(request.caller)?;
        let conversion_id = ConversionId::parse(request.conversion_id.trim())?;
        let mut conn = self.pool.acquire().await?;
        // Anyone but the owner and the credited affiliate is told it does not exist.
        let not_found = || ApiError::not_found(format!("conversion {conversion_id}"));
        let row = store::conversions::get(&mut conn, conversion_id.as_str(), false)
            .await?
            .ok_or_else(not_found)?;
        let programs = store::read_model::programs(&mut conn, std::slice::from_ref(&row.program_id)).await?;
        let owner = programs
            .get(&row.program_id)
            .is_some_and(|p| p.owner_org_id == who.org_id);
        let affiliate = row.affiliate_org_id.as_deref() == Some(who.org_id.as_str());
        if !owner && !affiliate {
            return Err(not_found());
        }
        let trail = store::conversions::trail(&mut conn, conversion_id.as_str()).await?;
        let trail = match (trail, owner, &row.enrollment_id) {
            (Some(trail), true, _) => Some(trail),
            (Some(trail), false, Some(enrollment_id)) => Some(trail.for_affiliate(enrollment_id)),
            _ => None,
        };
        let trail_json = match trail {
            Some(trail) => {
                // The rule of the version it was priced under (versions never change).
                let rule = match &trail.commission {
                    Some(c) => store::read_model::rule(&mut conn, &row.program_id, c.rule_version).await?,
                    None => None,
                };
                let with = ReadWith {
                    recorded_at: row.recorded_at,
                    decided_at: row.decided_at,
                    rule: rule.as_ref(),
                };
                trail.render(with).to_string()
            }
            None => String::new(),
        };
        Ok(pb::ConversionExplanation {
            conversion: Some(row.to_proto()),
            trail_json,
            owner_view: owner,
        })
    }
}
