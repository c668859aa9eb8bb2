//! The sponsor tree of multi-level programs: an owner places an affiliate under a sponsor, within
//! the depth bound and without cycles.

use super::enrollments::{optional_id, owned_enrollment, reply};
use super::{Enrollment, caller};
use crate::domain::enrollment::{EnrollmentStatus, MAX_DEPTH, place_under};
use crate::store::enrollments as store;
use amba_core::ApiError;
use amba_core::id::EnrollmentId;
use amba_proto::wire as pb;
use sqlx::PgConnection;

impl Enrollment {
    /// Owner places an affiliate under a sponsor (or detaches it); its downline moves with it.
    #[tracing::instrument(skip_all, fields(enrollment_id = %request.enrollment_id), err(level = "info"))]
    pub async fn set_parent(&self, request: pb::SetParentRequest) -> Result<pb::EnrollmentReply, ApiError> {
        let owner = caller(request.caller)?;
        let enrollment_id = EnrollmentId::parse(&request.enrollment_id)?;
        let parent = optional_id(&request.parent_enrollment_id)?;
        let mut tx = self.pool.begin().await?;
        let row = store::get(&mut tx, enrollment_id.as_str(), true).await?;
        let row = owned_enrollment(row, &owner.org_id, &enrollment_id, |_| None)?;
        if !matches!(row.status.as_str(), "pending" | "active") {
            return Err(ApiError::conflict(format!(
                "an enrollment that is {} cannot be moved",
                row.status
            )));
        }
        if row.parent_enrollment_id == parent {
            return Ok(reply(&row, true));
        }
        let height = store::subtree_height(&mut tx, enrollment_id.as_str()).await?;
        let depth = match &parent {
            Some(parent) => {
                self.sponsor_depth(&mut tx, &row.program_id, parent, enrollment_id.as_str(), height)
                    .await?
            }
            None if height > MAX_DEPTH => return Err(ApiError::conflict("this downline is too deep to stand alone")),
            None => 1,
        };
        store::set_parent(&mut tx, enrollment_id.as_str(), parent.as_deref(), depth).await?;
        let row = self
            .announce_enrollment(&mut tx, enrollment_id.as_str(), "moved", &row.status)
            .await?;
        tx.commit().await?;
        self.waker.wake();
        Ok(reply(&row, false))
    }

    /// Depth of a new child of `parent`: the sponsor must be active in the same program, and the
    /// tree must stay acyclic and within the depth bound.
    pub(super) async fn sponsor_depth(
        &self,
        conn: &mut PgConnection,
        program_id: &str,
        parent: &str,
        child: &str,
        child_height: i32,
    ) -> Result<i32, ApiError> {
        let sponsor = store::get(conn, parent, false).await?;
        let sponsor = sponsor.filter(|s| s.program_id == program_id).ok_or_else(|| {
            ApiError::invalid(format!(
                "parent_enrollment_id {parent} is not an enrollment of this program"
            ))
        })?;
        if sponsor.status != EnrollmentStatus::Active.as_str() {
            return Err(ApiError::conflict(format!(
                "the sponsor enrollment is {}; only active affiliates can sponsor",
                sponsor.status
            )));
        }
        let chain = store::chain_up(conn, parent).await?;
        place_under(child, &chain, child_height)
    }
}
