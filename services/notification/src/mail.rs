//! Where e-mails go: an SMTP server (lettre, pooled; `smtp://` upgrades with STARTTLS when the
//! server offers it, `smtps://` is TLS from the start; user and password from the URL), or
//! `.eml` files in a folder (`amba dev` without `AMBA_SMTP_URL`).

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone)]
pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>),
}

/// How a send ended when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server refused for good (5xx) or the message cannot be built: do not retry.
    #[error("permanent: {0}")]
    Permanent(String),
    /// 4xx, connection refused, timeout: retry later.
    #[error("transient: {0}")]
    Transient(String),
}

impl Transport {
    /// From `smtp://[user:pass@]host[:port]` (port 25) or `smtps://…` (port 465). Call inside
    /// the Tokio runtime: the connection pool starts its upkeep task.
    pub fn smtp(url: &str) -> Result<Transport, String> {
        let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
        let (auth, address) = match rest.trim_end_matches('/').rsplit_once('@') {
            Some((auth, address)) => (Some(auth), address),
            None => (None, rest.trim_end_matches('/')),
        };
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().map_err(|_| "bad port")?)),
            None => (address, None),
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let params = TlsParameters::new(host.to_owned()).map_err(|e| e.to_string())?;
        let (tls, default_port) = match scheme {
            "smtp" => (Tls::Opportunistic(params), 25),
            "smtps" => (Tls::Wrapper(params), 465),
            other => return Err(format!("unsupported scheme {other}")),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port.unwrap_or(default_port))
            .tls(tls)
            .timeout(Some(Duration::from_secs(15)));
        if let Some((user, password)) = auth.and_then(|a| a.split_once(':')) {
            builder = builder.credentials(Credentials::new(decode(user), decode(password)));
        }
        Ok(Transport::Smtp(builder.build()))
    }

    pub fn files(dir: PathBuf) -> std::io::Result<Transport> {
        std::fs::create_dir_all(&dir)?;
        Ok(Transport::Files(AsyncFileTransport::new(dir)))
    }

    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        match self {
            Transport::Smtp(smtp) => smtp.send(message).await.map(drop).map_err(|e| {
                if e.is_permanent() {
                    SendError::Permanent(e.to_string())
                } else {
                    SendError::Transient(e.to_string())
                }
            }),
            Transport::Files(files) => files
                .send(message)
                .await
                .map(drop)
                .map_err(|e| SendError::Transient(e.to_string())),
        }
    }
}

/// `%40` → `@` in URL user/password parts.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `List-Unsubscribe: <url>`: where the preference tool is explained.
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.trim_matches(['<', '>']).to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// What every message carries besides its text.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: Mailbox,
    /// The public URL's host: the right side of Message-IDs.
    pub host: String,
    /// `List-Unsubscribe` target.
    pub preferences_url: String,
}

/// The message for one e-mail row: From, To, Subject, Date, Message-ID, List-Unsubscribe, and a
/// plain-text body.
pub fn build(
    envelope: &Envelope,
    email_id: &str,
    to: &[String],
    subject: &str,
    body: &str,
) -> Result<(Message, String), SendError> {
    let message_id = format!("<{email_id}@{}>", envelope.host);
    let mut builder = Message::builder()
        .from(envelope.from.clone())
        .subject(subject)
        .date_now()
        .message_id(Some(message_id.clone()))
        .header(ListUnsubscribe(envelope.preferences_url.clone()))
        .header(ContentType::TEXT_PLAIN);
    for address in to {
        let mailbox: Mailbox = address
            .parse()
            .map_err(|e| SendError::Permanent(format!("recipient {address:?}: {e}")))?;
        builder = builder.to(mailbox);
    }
    let message = builder
        .body(body.to_owned())
        .map_err(|e| SendError::Permanent(format!("message: {e}")))?;
    Ok((message, message_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn smtp_urls() {
        assert!(Transport::smtp("smtp://127.0.0.1:2525").is_ok());
        assert!(Transport::smtp("smtps://user:p%40ss@mail.example.com").is_ok());
        assert!(Transport::smtp("http://mail.example.com").is_err());
        assert!(Transport::smtp("smtp://:25").is_err());
        assert_eq!(decode("p%40ss"), "p@ss");
    }

    #[test]
    fn messages_carry_the_expected_headers() -> Result<(), SendError> {
        let envelope = Envelope {
            from: "Amba Affiliate <no-reply@amba.example>"
                .parse()
                .map_err(|_| SendError::Permanent("from".into()))?,
            host: "amba.example".into(),
            preferences_url: "https://amba.example/notifications".into(),
        };
        let (message, id) = build(&envelope, "eml_1", &["ann@aff.example".into()], "Hi", "Body")?;
        let text = String::from_utf8_lossy(&message.formatted()).into_owned();
        assert_eq!(id, "<eml_1@amba.example>");
        for header in [
            "From: \"Amba Affiliate\" <no-reply@amba.example>",
            "To: ann@aff.example",
            "Subject: Hi",
            "Message-ID: <eml_1@amba.example>",
            "List-Unsubscribe: <https://amba.example/notifications>",
            "Date: ",
            "Content-Type: text/plain",
        ] {
            assert!(text.contains(header), "{header} in {text}");
        }
        assert!(build(&envelope, "eml_2", &["not an address".into()], "Hi", "x").is_err());
        Ok(())
    }
}
