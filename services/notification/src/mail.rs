//! Where e-mails go: an SMTP server (lettre, pooled; `smtp://` upgrades with STARTTLS when the
//! server offers it, `smtps://` is TLS from the start; user and password from the URL), or
//! `.eml` files in a folder (`amba dev` without `AMBA_SMTP_URL`). Every message is
//! multipart/alternative: the plain text, and an HTML rendering of it (minijinja, auto-escaped:
//! program names and reasons are other people's text).

use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message, MultiPart};
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
        let started = std::time::Instant::now();
        let sent = self.deliver(message).await;
        amba_telemetry::metrics::histogram!("amba_mail_send_seconds").record(started.elapsed().as_secs_f64());
        sent
    }

    async fn deliver(&self, message: Message) -> Result<(), SendError> {
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

/// `List-Unsubscribe: <url>`: the one-click URL, or where the preference tool is explained.
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

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058): a POST to the URL is enough.
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

/// What every message carries besides its text.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: Mailbox,
    /// The public URL's host: the right side of Message-IDs.
    pub host: String,
    /// `List-Unsubscribe` target when a message has no one-click link.
    pub preferences_url: String,
    /// `AMBA_PUBLIC_URL`: one-click links are `<public_url>/unsubscribe/<token>`.
    pub public_url: String,
}

/// The message for one e-mail row: From, To, Subject, Date, Message-ID, List-Unsubscribe (with
/// `unsubscribe`, a signed token, the one-click URL and List-Unsubscribe-Post), and a plain-text
/// body.
pub fn build(
    envelope: &Envelope,
    email_id: &str,
    to: &[String],
    subject: &str,
    body: &str,
    unsubscribe: Option<&str>,
) -> Result<(Message, String), SendError> {
    let message_id = format!("<{email_id}@{}>", envelope.host);
    let mut builder = Message::builder()
        .from(envelope.from.clone())
        .subject(subject)
        .date_now()
        .message_id(Some(message_id.clone()));
    builder = match unsubscribe {
        Some(token) => builder
            .header(ListUnsubscribe(format!("{}/unsubscribe/{token}", envelope.public_url)))
            .header(ListUnsubscribePost),
        None => builder.header(ListUnsubscribe(envelope.preferences_url.clone())),
    };
    for address in to {
        let mailbox: Mailbox = address
            .parse()
            .map_err(|e| SendError::Permanent(format!("recipient {address:?}: {e}")))?;
        builder = builder.to(mailbox);
    }
    let message = builder
        .multipart(MultiPart::alternative_plain_html(body.to_owned(), html(subject, body)?))
        .map_err(|e| SendError::Permanent(format!("message: {e}")))?;
    Ok((message, message_id))
}

/// The HTML part: the subject as a heading, the text's paragraphs (blank-line separated) with
/// their line breaks. The `.html` name turns on minijinja's HTML auto-escaping.
pub fn html(subject: &str, body: &str) -> Result<String, SendError> {
    let mut env = minijinja::Environment::new();
    env.add_template("email.html", include_str!("../templates/email.html"))
        .map_err(|e| SendError::Permanent(format!("template: {e}")))?;
    let paragraphs: Vec<Vec<&str>> = body
        .split("\n\n")
        .map(|p| p.trim_matches('\n').lines().collect::<Vec<_>>())
        .filter(|lines| !lines.is_empty())
        .collect();
    env.get_template("email.html")
        .and_then(|t| t.render(minijinja::context! { subject, paragraphs }))
        .map_err(|e| SendError::Permanent(format!("template: {e}")))
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
            public_url: "https://amba.example".into(),
        };
        let (message, id) = build(&envelope, "eml_1", &["ann@aff.example".into()], "Hi", "Body", None)?;
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
        assert!(!text.contains("List-Unsubscribe-Post"));
        assert!(text.contains("multipart/alternative") && text.contains("Content-Type: text/html"));
        let page = html("<script>alert(1)</script> & co", "Hello,\n\n\"<b>x</b>\"\nline two\n")?;
        assert!(!page.contains("<script>") && !page.contains("<b>"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; co"),
            "{page}"
        );
        assert!(
            page.contains("<p>&quot;&lt;b&gt;x&lt;&#x2f;b&gt;&quot;<br>line two</p>"),
            "{page}"
        );
        assert!(build(&envelope, "eml_2", &["not an address".into()], "Hi", "x", None).is_err());
        let (message, _) = build(
            &envelope,
            "eml_3",
            &["ann@aff.example".into()],
            "Hi",
            "x",
            Some("org_1.k.ab"),
        )?;
        let text = String::from_utf8_lossy(&message.formatted()).into_owned();
        assert!(
            text.contains("List-Unsubscribe: <https://amba.example/unsubscribe/org_1.k.ab>"),
            "{text}"
        );
        assert!(
            text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
            "{text}"
        );
        Ok(())
    }
}
