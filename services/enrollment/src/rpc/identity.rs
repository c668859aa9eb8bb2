use super::{Enrollment, db_error};
use crate::domain::identity::{hash_token, mint_token, normalize_email, normalize_name};
use crate::store;
use amba_core::ApiError;
use amba_core::id::{AccountId, OrgId, TokenId};
use amba_proto::v1::{Principal, SignupRequest, SignupResponse, VerifyTokenRequest};

impl Enrollment {
    /// Account + org + first token in one transaction. The token secret leaves only in the reply.
    #[tracing::instrument(skip_all, err)]
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

        let mut tx = self.pool.begin().await.map_err(db_error)?;
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
        if !store::identity::insert_signup(&mut tx, &signup)
            .await
            .map_err(db_error)?
        {
            return Err(ApiError::conflict(format!(
                "an account with e-mail {email} already exists"
            )));
        }
        tx.commit().await.map_err(db_error)?;
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
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        store::identity::principal_by_token_hash(&mut conn, &hash_token(&request.token))
            .await
            .map_err(db_error)?
            .ok_or_else(invalid)
    }
}
