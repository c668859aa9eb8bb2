//! Signed webhook delivery, as Stripe does it: `Stripe-Signature: t=<unix>,v1=<hex>` where the hex
//! is HMAC-SHA256(secret, "<t>.<raw body>"); at-least-once, retried with backoff.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Attempts per delivery: 100 ms, then doubling (about 25 s in all), enough for a receiver that is
/// restarting, short enough that a test process is not kept busy for long.
const ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The `Stripe-Signature` header value for `body` signed at `t`.
pub(crate) fn signature(secret: &str, body: &str, t: i64) -> String {
    // HMAC accepts keys of any length, so this never takes the `Err` branch.
    let v1 = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map(|mut mac| {
            mac.update(format!("{t}.{body}").as_bytes());
            hex::encode(mac.finalize().into_bytes())
        })
        .unwrap_or_default();
    format!("t={t},v1={v1}")
}

/// One POST of `body` to `url`; the receiver's status code.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    signature: Option<&str>,
) -> Result<u16, reqwest::Error> {
    let mut request = http
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(
            http::header::USER_AGENT,
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    Ok(request.send().await?.status().as_u16())
}

/// Delivers until the receiver answers 2xx or the attempts run out. Each attempt is signed afresh
/// (a new `t`), as Stripe's retries are. Failures are only logged: they never fail an API call.
pub(crate) async fn deliver(http: reqwest::Client, secret: String, url: String, event_id: String, body: String) {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let signature = signature(&secret, &body, crate::now());
        match post(&http, &url, &body, Some(&signature)).await {
            Ok(status) if (200..300).contains(&status) => return,
            Ok(status) => tracing::debug!(%event_id, attempt, status, "webhook receiver refused the event"),
            Err(err) => tracing::debug!(%event_id, attempt, error = %err, "webhook receiver unreachable"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::warn!(%event_id, %url, "stripe fake gave up delivering a webhook after {ATTEMPTS} attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_stripes_documented_scheme() {
        // Vector computed outside Rust: python3 hmac.new(b"whsec_test", b"1700000000.{}", sha256).
        assert_eq!(
            signature("whsec_test", "{}", 1_700_000_000),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }
}
