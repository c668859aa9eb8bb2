use amba_proto::v1::Principal;
use sqlx::PgConnection;

pub struct NewSignup<'a> {
    pub account_id: &'a str,
    pub org_id: &'a str,
    pub token_id: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub org_name: &'a str,
    pub token_hash: &'a str,
    pub token_hint: &'a str,
}

/// Account, org, owner membership and first token. Returns false when the e-mail is taken.
pub async fn insert_signup(conn: &mut PgConnection, s: &NewSignup<'_>) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO accounts (account_id, email, name) VALUES ($1, $2, $3) ON CONFLICT (email) DO NOTHING",
    )
    .bind(s.account_id)
    .bind(s.email)
    .bind(s.name)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO orgs (org_id, name) VALUES ($1, $2)")
        .bind(s.org_id)
        .bind(s.org_name)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO memberships (org_id, account_id, role) VALUES ($1, $2, 'owner')")
        .bind(s.org_id)
        .bind(s.account_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO tokens (token_id, org_id, account_id, name, token_hash, hint) VALUES ($1, $2, $3, 'signup', $4, $5)")
        .bind(s.token_id)
        .bind(s.org_id)
        .bind(s.account_id)
        .bind(s.token_hash)
        .bind(s.token_hint)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// The principal behind an unrevoked token hash.
pub async fn principal_by_token_hash(
    conn: &mut PgConnection,
    token_hash: &str,
) -> Result<Option<Principal>, sqlx::Error> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT org_id, account_id, token_id FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(token_hash)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(org_id, account_id, token_id)| Principal {
        org_id,
        account_id,
        token_id,
    }))
}
