use super::Enrollment;
use crate::domain::identity::{hash_token, mint_token, normalize_email, normalize_name};
use crate::store;
use amba_core::id::{AccountId, OrgId, TokenId};
use amba_core::{ApiError, cursor};
use amba_proto::wire::{self as pb, Principal, SignupRequest, SignupResponse, VerifyTokenRequest};

impl Enrollment {
    /// Account + org + first token in one transaction. The token secret leaves only in the reply.
    ///
    /// An address that already has an account gets the same kind of answer (no error, no other
    /// status, one transaction and commit like a new account's), only without the new account's
    /// fields; the account is e-mailed instead (`identity.existing_account_signup`). So signup
    /// cannot be used to learn whether an address is registered.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn signup(&self, request: SignupRequest) -> Result<SignupResponse, ApiError> {
        let email = normalize_email(&request.email)?;
        let org_name = normalize_name("org_name", &request.org_name)?;
        let name = if request.name.trim().is_empty() {
            String::new()
        } else {
            normalize_name("name", &request.name)?
        };
        let token = mint_token();
        let (account_id, org_id, token_id) = (AccountId::new(), OrgId::new(), TokenId::new());

        let mut tx = self.pool.begin().await?;
        let signup = store::identity::NewSignup {
            account_id: account_id.as_str(),
            org_id: org_id.as_str(),
            token_id: token_id.as_str(),
            email: &email,
            name: &name,
            org_name: &org_name,
            token_hash: &token.hash,
            token_hint: &token.hint,
        };
        if !store::identity::insert_signup(&mut tx, &signup).await? {
            let existing = store::identity::account_by_email(&mut tx, &email).await?;
            if let Some((account_id, org_id)) = existing {
                let meta = amba_bus::events::new_meta();
                let event = pb::ExistingAccountSignup {
                    meta: Some(meta.clone()),
                    account_id: account_id.clone(),
                    email: email.clone(),
                    org_id: org_id.unwrap_or_default(),
                };
                let subject = self.ns.event("identity", "existing_account_signup");
                let outbox = amba_bus::events::OutboxEvent::new(subject, &meta, &event);
                amba_bus::outbox::enqueue(&mut tx, &outbox).await?;
                tracing::info!(%account_id, "signup with an existing account's address: the account is e-mailed");
            }
            tx.commit().await?;
            self.waker.wake();
            return Ok(SignupResponse::default());
        }
        tx.commit().await?;
        tracing::info!(%account_id, %org_id, "signed up");
        Ok(SignupResponse {
            account_id: account_id.into(),
            org_id: org_id.into(),
            token: token.secret,
            token_id: token_id.into(),
        })
    }

    /// The principal behind a token; unknown and revoked tokens are UNAUTHENTICATED.
    pub async fn verify_token(&self, request: VerifyTokenRequest) -> Result<Principal, ApiError> {
        let invalid = || ApiError::unauthenticated("the access token is invalid or has been revoked");
        if request.token.is_empty() || request.token.len() > 256 {
            return Err(invalid());
        }
        let mut conn = self.pool.acquire().await?;
        store::identity::principal_by_token_hash(&mut conn, &hash_token(&request.token))
            .await?
            .ok_or_else(invalid)
    }
}

impl Enrollment {
    /// A new PAT for the caller's org; the secret is returned once.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn create_token(&self, request: pb::CreateTokenRequest) -> Result<pb::CreateTokenResponse, ApiError> {
        let me = super::caller(request.caller)?;
        let name = normalize_name(
            "name",
            if request.name.trim().is_empty() {
                "token"
            } else {
                &request.name
            },
        )?;
        if name.chars().count() > 100 {
            return Err(ApiError::invalid("name must be at most 100 characters"));
        }
        let minted = mint_token();
        let token_id = TokenId::new();
        let mut conn = self.pool.acquire().await?;
        let new = store::identity::NewToken {
            token_id: token_id.as_str(),
            org_id: &me.org_id,
            account_id: &me.account_id,
            name: &name,
            hash: &minted.hash,
            hint: &minted.hint,
        };
        let row = store::identity::insert_token(&mut conn, &new).await?;
        Ok(pb::CreateTokenResponse {
            token: Some(row.to_proto()),
            secret: minted.secret,
        })
    }

    /// The org's tokens, revoked ones included, oldest first, keyset-paginated; never their secrets.
    pub async fn list_tokens(&self, request: pb::ListTokensRequest) -> Result<pb::ListTokensResponse, ApiError> {
        let me = super::caller(request.caller)?;
        let after = cursor::decode(&request.cursor)?;
        let limit = cursor::page_size(request.limit);
        let mut conn = self.pool.acquire().await?;
        let mut rows =
            store::identity::list_tokens(&mut conn, &me.org_id, after.as_deref(), i64::from(limit) + 1).await?;
        let next_cursor = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| cursor::encode(&r.token_id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListTokensResponse {
            tokens: rows.iter().map(store::identity::TokenRow::to_proto).collect(),
            next_cursor,
        })
    }

    /// Revokes one of the org's tokens (revoking again is a no-op) and tells every edge.
    #[tracing::instrument(skip_all, fields(token_id = %request.token_id), err(level = "info"))]
    pub async fn revoke_token(&self, request: pb::RevokeTokenRequest) -> Result<pb::TokenReply, ApiError> {
        let me = super::caller(request.caller)?;
        let token_id = TokenId::parse(&request.token_id)?;
        let mut tx = self.pool.begin().await?;
        let (row, newly) = store::identity::revoke_token(&mut tx, &me.org_id, token_id.as_str())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("token {token_id}")))?;
        if newly {
            let meta = amba_bus::events::new_meta();
            let event = pb::TokenRevoked {
                meta: Some(meta.clone()),
                token_id: row.token_id.clone(),
                org_id: me.org_id.clone(),
            };
            let outbox = amba_bus::events::OutboxEvent::new(self.ns.event("identity", "token_revoked"), &meta, &event);
            amba_bus::outbox::enqueue(&mut tx, &outbox).await?;
        }
        tx.commit().await?;
        self.waker.wake();
        Ok(pb::TokenReply {
            token: Some(row.to_proto()),
        })
    }
}
