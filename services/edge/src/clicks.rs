//! Every click enters here, whatever the surface (`/r/`, `POST /v1/touchpoints`, MCP, gRPC):
//! validated against the documented limits, checked against signed subjects, then recorded by
//! attribution.
//!
//! **Forged clicks.** Recording a touchpoint needs no secret: anyone who learns a visitor's
//! `subject_ref` could record a click on it with their own code, and the latest click wins the
//! conversion. Subjects minted by the edge's affiliate links (`/r/{code}`) are therefore
//! *signed*: `s1.<random>.<mac>`, where the MAC (HMAC-SHA256 with `AMBA_LINK_SECRET`) binds the
//! subject to the code it was issued for. A touchpoint on a signed subject with any other code
//! is refused, so an owner who reports conversions with the `amba_sub` value from the link
//! cannot have that credit taken by a third party. Subjects an app makes up itself (unsigned)
//! keep working, with the risk above.

use crate::EdgeState;
use amba_core::ApiError;
use amba_proto::methods::attribution as methods;
use amba_proto::wire as pb;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of a signed subject.
const SIGNED: &str = "s1.";

/// Mints and checks signed subjects. Every edge replica needs the same key.
#[derive(Clone)]
pub struct SubjectSigner {
    key: Vec<u8>,
}

impl SubjectSigner {
    pub fn new(key: Vec<u8>) -> Self {
        SubjectSigner { key }
    }

    /// A fresh subject bound to `code`.
    pub fn mint(&self, code: &str) -> String {
        let nonce = amba_core::id::time_ordered_suffix();
        format!("{SIGNED}{nonce}.{}", self.mac(code, &nonce))
    }

    /// Whether `subject` is a signed subject issued for `code`.
    pub fn issued_for(&self, code: &str, subject: &str) -> bool {
        let Some((nonce, mac)) = subject.strip_prefix(SIGNED).and_then(|rest| rest.split_once('.')) else {
            return false;
        };
        let Ok(given) = hex::decode(mac) else {
            return false;
        };
        let Ok(mut expected) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return false;
        };
        expected.update(Self::message(code, nonce).as_bytes());
        given.len() == 16 && expected.verify_truncated_left(&given).is_ok()
    }

    /// Refuses a click that reuses a signed subject of another link.
    pub fn check(&self, code: &str, subject: &str) -> Result<(), ApiError> {
        if subject.starts_with(SIGNED) && !self.issued_for(code, subject) {
            return Err(ApiError::invalid(
                "subject_ref is a signed subject issued by another affiliate link (or altered); \
                 record clicks on it only with the code it was issued for",
            ));
        }
        Ok(())
    }

    fn message(code: &str, nonce: &str) -> String {
        format!("amba-subject|{code}|{nonce}")
    }

    fn mac(&self, code: &str, nonce: &str) -> String {
        match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(Self::message(code, nonce).as_bytes());
                hex::encode(&mac.finalize().into_bytes()[..16])
            }
            Err(_) => String::new(), // HMAC takes keys of any length
        }
    }
}

/// Validates and records a click.
pub async fn record(
    state: &EdgeState,
    request: pb::RecordTouchpointRequest,
) -> Result<pb::RecordTouchpointReply, ApiError> {
    let request = amba_proto::validate::touchpoint(&request, chrono::Utc::now())?;
    state.subjects.check(&request.code, &request.subject_ref)?;
    state.rpc.call(methods::RECORD_TOUCHPOINT, &request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_subjects_bind_their_code() {
        let signer = SubjectSigner::new(b"secret".to_vec());
        let subject = signer.mint("CODE_A");
        assert!(subject.starts_with("s1.") && subject.len() <= 80);
        assert!(signer.issued_for("CODE_A", &subject));
        assert!(!signer.issued_for("CODE_B", &subject));
        assert!(signer.check("CODE_A", &subject).is_ok());
        assert!(signer.check("CODE_B", &subject).is_err());
        assert!(signer.check("CODE_B", "app-made-subject").is_ok());
        let mut altered = subject.clone();
        altered.replace_range(4..5, if &subject[4..5] == "0" { "1" } else { "0" });
        assert!(signer.check("CODE_A", &altered).is_err());
        let other_key = SubjectSigner::new(b"other".to_vec());
        assert!(!other_key.issued_for("CODE_A", &subject));
        assert!(signer.check("CODE_A", "s1.nonsense").is_err());
    }
}
