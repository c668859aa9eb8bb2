use amba_proto::wire as pb;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnrollmentRow {
    pub enrollment_id: String,
    pub program_id: String,
    pub program_name: String,
    pub program_owner_org_id: String,
    pub program_status: String,
    pub affiliate_org_id: String,
    pub affiliate_org_name: String,
    pub status: String,
    pub origin: String,
    pub parent_enrollment_id: Option<String>,
    pub depth: i32,
    pub idempotency_key: Option<String>,
    pub reason: Option<String>,
    pub code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl EnrollmentRow {
    pub fn to_proto(&self) -> pb::Enrollment {
        pb::Enrollment {
            enrollment_id: self.enrollment_id.clone(),
            program_id: self.program_id.clone(),
            program_name: self.program_name.clone(),
            affiliate_org_id: self.affiliate_org_id.clone(),
            affiliate_org_name: self.affiliate_org_name.clone(),
            status: self.status.clone(),
            origin: self.origin.clone(),
            parent_enrollment_id: self.parent_enrollment_id.clone().unwrap_or_default(),
            depth: u32::try_from(self.depth).unwrap_or_default(),
            code: self.code.clone().unwrap_or_default(),
            reason: self.reason.clone().unwrap_or_default(),
            created_at_micros: self.created_at.timestamp_micros(),
            updated_at_micros: self.updated_at.timestamp_micros(),
            version: u64::try_from(self.version).unwrap_or_default(),
        }
    }
}

/// The enrollment with its program, org and active code; `$tail` adds the filter.
macro_rules! select_enrollment {
    ($tail:literal) => {
        concat!(
            "SELECT e.enrollment_id, e.program_id, p.name AS program_name, p.owner_org_id AS program_owner_org_id, \
             p.status AS program_status, e.affiliate_org_id, o.name AS affiliate_org_name, e.status, e.origin, \
             e.parent_enrollment_id, e.depth, e.idempotency_key, e.reason, e.created_at, e.updated_at, e.version, \
             (SELECT c.code FROM referral_codes c WHERE c.enrollment_id = e.enrollment_id AND c.status = 'active') AS code \
             FROM enrollments e JOIN programs p ON p.program_id = e.program_id JOIN orgs o ON o.org_id = e.affiliate_org_id ",
            $tail
        )
    };
}

pub async fn get(
    conn: &mut PgConnection,
    enrollment_id: &str,
    lock: bool,
) -> Result<Option<EnrollmentRow>, sqlx::Error> {
    if lock {
        super::fault_pause_before_row_lock().await;
    }
    let query = if lock {
        sqlx::query_as(select_enrollment!("WHERE e.enrollment_id = $1 FOR UPDATE OF e"))
    } else {
        sqlx::query_as(select_enrollment!("WHERE e.enrollment_id = $1"))
    };
    query.bind(enrollment_id).fetch_optional(conn).await
}

pub async fn get_by_program_and_org(
    conn: &mut PgConnection,
    program_id: &str,
    org_id: &str,
) -> Result<Option<EnrollmentRow>, sqlx::Error> {
    sqlx::query_as(select_enrollment!(
        "WHERE e.program_id = $1 AND e.affiliate_org_id = $2"
    ))
    .bind(program_id)
    .bind(org_id)
    .fetch_optional(conn)
    .await
}

pub struct NewEnrollment<'a> {
    pub enrollment_id: &'a str,
    pub program_id: &'a str,
    pub affiliate_org_id: &'a str,
    pub status: &'a str,
    pub origin: &'a str,
    pub parent_enrollment_id: Option<&'a str>,
    pub depth: i32,
    pub idempotency_key: Option<&'a str>,
}

/// Returns false when the org already has an enrollment in the program.
pub async fn insert(conn: &mut PgConnection, e: &NewEnrollment<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO enrollments (enrollment_id, program_id, affiliate_org_id, status, origin, parent_enrollment_id, depth, idempotency_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (program_id, affiliate_org_id) DO NOTHING",
    )
    .bind(e.enrollment_id)
    .bind(e.program_id)
    .bind(e.affiliate_org_id)
    .bind(e.status)
    .bind(e.origin)
    .bind(e.parent_enrollment_id)
    .bind(e.depth)
    .bind(e.idempotency_key)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_status(
    conn: &mut PgConnection,
    enrollment_id: &str,
    status: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE enrollments SET status = $2, reason = COALESCE($3, reason), updated_at = now(), version = version + 1 \
         WHERE enrollment_id = $1",
    )
    .bind(enrollment_id)
    .bind(status)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves an enrollment (and its whole downline) under `parent`, the enrollment at `depth`.
pub async fn set_parent(
    conn: &mut PgConnection,
    enrollment_id: &str,
    parent: Option<&str>,
    depth: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE enrollments SET parent_enrollment_id = $2, updated_at = now(), version = version + 1 \
         WHERE enrollment_id = $1",
    )
    .bind(enrollment_id)
    .bind(parent)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "WITH RECURSIVE sub(id, below) AS ( \
           SELECT enrollment_id, 0 FROM enrollments WHERE enrollment_id = $1 \
           UNION ALL SELECT e.enrollment_id, sub.below + 1 FROM enrollments e JOIN sub ON e.parent_enrollment_id = sub.id) \
         UPDATE enrollments SET depth = $2 + sub.below, version = version + 1 FROM sub \
         WHERE enrollments.enrollment_id = sub.id",
    )
    .bind(enrollment_id)
    .bind(depth)
    .execute(conn)
    .await?;
    Ok(())
}

/// `enrollment_id` and its sponsors up to the root, nearest first.
pub async fn chain_up(conn: &mut PgConnection, enrollment_id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE up(id, parent, level) AS ( \
           SELECT enrollment_id, parent_enrollment_id, 0 FROM enrollments WHERE enrollment_id = $1 \
           UNION ALL SELECT e.enrollment_id, e.parent_enrollment_id, up.level + 1 FROM enrollments e JOIN up ON e.enrollment_id = up.parent \
           WHERE up.level < 64) \
         SELECT id FROM up ORDER BY level",
    )
    .bind(enrollment_id)
    .fetch_all(conn)
    .await
}

/// Levels in the subtree rooted at `enrollment_id` (1 for a leaf).
pub async fn subtree_height(conn: &mut PgConnection, enrollment_id: &str) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE sub(id, level) AS ( \
           SELECT enrollment_id, 1 FROM enrollments WHERE enrollment_id = $1 \
           UNION ALL SELECT e.enrollment_id, sub.level + 1 FROM enrollments e JOIN sub ON e.parent_enrollment_id = sub.id \
           WHERE sub.level < 64) \
         SELECT COALESCE(max(level), 1) FROM sub",
    )
    .bind(enrollment_id)
    .fetch_one(conn)
    .await
}

pub async fn list_by_program(
    conn: &mut PgConnection,
    program_id: &str,
    status: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<EnrollmentRow>, sqlx::Error> {
    sqlx::query_as(select_enrollment!(
        "WHERE e.program_id = $1 AND ($2::text IS NULL OR e.status = $2) AND ($3::text IS NULL OR e.enrollment_id > $3) \
         ORDER BY e.enrollment_id LIMIT $4"
    ))
    .bind(program_id)
    .bind(status)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await
}

pub struct OrgFilter<'a> {
    pub org_id: &'a str,
    pub program_id: Option<&'a str>,
    pub status: Option<&'a str>,
    pub invites_only: bool,
}

pub async fn list_by_org(
    conn: &mut PgConnection,
    f: &OrgFilter<'_>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<EnrollmentRow>, sqlx::Error> {
    sqlx::query_as(select_enrollment!(
        "WHERE e.affiliate_org_id = $1 AND ($2::text IS NULL OR e.program_id = $2) AND ($3::text IS NULL OR e.status = $3) \
         AND (NOT $4 OR (e.origin = 'invite' AND e.status = 'pending')) AND ($5::text IS NULL OR e.enrollment_id > $5) \
         ORDER BY e.enrollment_id LIMIT $6"
    ))
    .bind(f.org_id)
    .bind(f.program_id)
    .bind(f.status)
    .bind(f.invites_only)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await
}

/// Inserts an active code; false on the (astronomically unlikely) collision with any code ever issued.
pub async fn insert_code(
    conn: &mut PgConnection,
    code: &str,
    enrollment_id: &str,
    program_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO referral_codes (code, enrollment_id, program_id, status) VALUES ($1, $2, $3, 'active') ON CONFLICT (code) DO NOTHING",
    )
    .bind(code)
    .bind(enrollment_id)
    .bind(program_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The enrollment a code was ever issued to (active or retired). Every stored code is lower
/// case (generated ones by their alphabet, vanity ones normalised), so this is case-insensitive
/// for a lower-case `code`.
pub async fn code_holder(conn: &mut PgConnection, code: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT enrollment_id FROM referral_codes WHERE code = $1")
        .bind(code)
        .fetch_optional(conn)
        .await
}

/// Retires the enrollment's active code, returning it.
pub async fn retire_active_code(conn: &mut PgConnection, enrollment_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE referral_codes SET status = 'retired', retired_at = now() WHERE enrollment_id = $1 AND status = 'active' RETURNING code",
    )
    .bind(enrollment_id)
    .fetch_optional(conn)
    .await
}

pub async fn org_name(conn: &mut PgConnection, org_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM orgs WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(conn)
        .await
}

/// E-mail addresses of an org's members.
pub async fn org_emails(conn: &mut PgConnection, org_id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT a.email FROM memberships m JOIN accounts a ON a.account_id = m.account_id WHERE m.org_id = $1 ORDER BY a.email",
    )
    .bind(org_id)
    .fetch_all(conn)
    .await
}
