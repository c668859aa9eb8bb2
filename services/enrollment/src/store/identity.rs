use amba_proto::wire::Principal;
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

/// The account of an e-mail address and its first organization (the one its signup created).
pub async fn account_by_email(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.account_id, m.org_id FROM accounts a LEFT JOIN memberships m ON m.account_id = a.account_id \
         WHERE a.email = $1 ORDER BY m.created_at, m.org_id LIMIT 1",
    )
    .bind(email)
    .fetch_optional(conn)
    .await
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

#[derive(Debug, sqlx::FromRow)]
pub struct TokenRow {
    pub token_id: String,
    pub name: String,
    pub hint: String,
    pub account_id: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TokenRow {
    pub fn to_proto(&self) -> amba_proto::wire::Token {
        amba_proto::wire::Token {
            token_id: self.token_id.clone(),
            name: self.name.clone(),
            hint: self.hint.clone(),
            account_id: self.account_id.clone(),
            created_at_micros: self.created_at.timestamp_micros(),
            revoked_at_micros: self.revoked_at.map(|t| t.timestamp_micros()).unwrap_or_default(),
        }
    }
}

pub struct NewToken<'a> {
    pub token_id: &'a str,
    pub org_id: &'a str,
    pub account_id: &'a str,
    pub name: &'a str,
    pub hash: &'a str,
    pub hint: &'a str,
}

pub async fn insert_token(conn: &mut PgConnection, t: &NewToken<'_>) -> Result<TokenRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO tokens (token_id, org_id, account_id, name, token_hash, hint) VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING token_id, name, hint, account_id, created_at, revoked_at",
    )
    .bind(t.token_id)
    .bind(t.org_id)
    .bind(t.account_id)
    .bind(t.name)
    .bind(t.hash)
    .bind(t.hint)
    .fetch_one(conn)
    .await
}

/// One page of an org's tokens after the keyset cursor `after` (token ids are time-ordered).
pub async fn list_tokens(
    conn: &mut PgConnection,
    org_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TokenRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT token_id, name, hint, account_id, created_at, revoked_at FROM tokens \
         WHERE org_id = $1 AND ($2::text IS NULL OR token_id > $2) ORDER BY token_id LIMIT $3",
    )
    .bind(org_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Revokes an org's token (idempotent). None when the org has no such token.
pub async fn revoke_token(
    conn: &mut PgConnection,
    org_id: &str,
    token_id: &str,
) -> Result<Option<(TokenRow, bool)>, sqlx::Error> {
    let revoked: Option<TokenRow> = sqlx::query_as(
        "UPDATE tokens SET revoked_at = now() WHERE org_id = $1 AND token_id = $2 AND revoked_at IS NULL \
         RETURNING token_id, name, hint, account_id, created_at, revoked_at",
    )
    .bind(org_id)
    .bind(token_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = revoked {
        return Ok(Some((row, true)));
    }
    let existing: Option<TokenRow> = sqlx::query_as(
        "SELECT token_id, name, hint, account_id, created_at, revoked_at FROM tokens WHERE org_id = $1 AND token_id = $2",
    )
    .bind(org_id)
    .bind(token_id)
    .fetch_optional(conn)
    .await?;
    Ok(existing.map(|row| (row, false)))
}
