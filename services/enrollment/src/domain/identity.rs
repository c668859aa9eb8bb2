//! Accounts, orgs and personal access tokens.
//!
//! A PAT is `amba_pat_` + 32 random bytes (base64url). Only its SHA-256 is stored: a database
//! leak reveals no usable token, and a high-entropy secret needs no slow hash.

use amba_core::ApiError;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "amba_pat_";
const MAX_NAME_LEN: usize = 200;

/// A freshly minted token: the secret (shown once) and what is stored.
pub struct NewToken {
    pub secret: String,
    pub hash: String,
    /// The first characters, for telling tokens apart in a list.
    pub hint: String,
}

pub fn mint_token() -> NewToken {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_token(&secret);
    let hint = secret.chars().take(TOKEN_PREFIX.len() + 4).collect();
    NewToken { secret, hash, hint }
}

/// Prefix of an e-mailed invitation's claim token.
pub const INVITATION_PREFIX: &str = "amba_inv_";
/// How long an e-mailed invitation can be claimed.
pub const INVITATION_TTL_DAYS: i64 = 14;

/// A claim token for an e-mailed invitation: (secret for the e-mail, hash to store).
pub fn mint_invitation_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!(
        "{INVITATION_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_token(&secret);
    (secret, hash)
}

/// Whether `token` has the shape of a claim token (cheap check before hashing and a lookup).
pub fn looks_like_invitation_token(token: &str) -> bool {
    token.strip_prefix(INVITATION_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A plausible e-mail address, normalised to lower case. Deliverability is not checked here.
pub fn normalize_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
                && !domain.contains('@')
        });
    if valid {
        Ok(email)
    } else {
        Err(ApiError::invalid(format!("{email:?} is not a valid e-mail address")))
    }
}

/// A display name (org, program): trimmed, 1 to 200 characters, no control characters.
pub fn normalize_name(field: &str, name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to {MAX_NAME_LEN} printable characters"
        )));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_hashed() {
        let a = mint_token();
        let b = mint_token();
        assert!(a.secret.starts_with(TOKEN_PREFIX));
        assert_eq!(a.secret.len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, hash_token(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(&a.secret));
        assert!(a.secret.starts_with(&a.hint));
    }

    #[test]
    fn invitation_tokens_are_recognised() {
        let (secret, hash) = mint_invitation_token();
        assert!(looks_like_invitation_token(&secret));
        assert_eq!(hash, hash_token(&secret));
        assert!(!looks_like_invitation_token("amba_inv_short"));
        assert!(!looks_like_invitation_token(&secret.replace("amba_inv_", "amba_pat_")));
    }

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").ok(),
            Some("ann@example.com".to_owned())
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "ann@@example.com",
            "ann@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(normalize_name("org_name", "  Acme  ").ok(), Some("Acme".to_owned()));
        assert!(normalize_name("org_name", "   ").is_err());
        assert!(normalize_name("org_name", &"x".repeat(201)).is_err());
        assert!(normalize_name("org_name", "a\u{0}b").is_err());
    }
}
