//! One-click unsubscribe (RFC 8058): a token naming (org, kind of e-mail), HMAC-SHA256-signed
//! with `AMBA_LINK_SECRET`. It never expires, so the link in an old e-mail keeps working; only
//! this service signs and checks it (the edge forwards the token), so only it needs the key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], org_id: &str, kind: &str) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    // A purpose prefix: the same key signs affiliate-link subjects, which must never pass as this.
    mac.update(b"unsubscribe\n");
    mac.update(org_id.as_bytes());
    mac.update(b"\n");
    mac.update(kind.as_bytes());
    Some(mac)
}

/// `<org_id>.<kind>.<hex mac>` (ids and kinds hold no dots).
pub fn sign(key: &[u8], org_id: &str, kind: &str) -> Option<String> {
    let mac = mac(key, org_id, kind)?;
    Some(format!("{org_id}.{kind}.{}", hex::encode(mac.finalize().into_bytes())))
}

/// (org_id, kind) of a token this key signed; `None` for anything else. Constant-time check.
pub fn verify(key: &[u8], token: &str) -> Option<(String, String)> {
    let (signed, given) = token.rsplit_once('.')?;
    let (org_id, kind) = signed.split_once('.')?;
    let given = hex::decode(given).ok()?;
    mac(key, org_id, kind)?.verify_slice(&given).ok()?;
    Some((org_id.to_owned(), kind.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_what_they_were_signed_for() {
        let key = b"0123456789abcdef0123456789abcdef";
        let token = sign(key, "org_1", "payout_sent").unwrap_or_default();
        assert_eq!(verify(key, &token), Some(("org_1".into(), "payout_sent".into())));
        let forged = token.replace("org_1", "org_2");
        assert_eq!(verify(key, &forged), None);
        assert_eq!(verify(b"another key of thirty-two chars!", &token), None);
        assert_eq!(verify(key, "org_1.payout_sent.zz"), None);
        assert_eq!(verify(key, "nonsense"), None);
    }
}
