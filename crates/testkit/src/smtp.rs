//! A real SMTP server on a loopback port, for tests: it speaks the protocol over TCP (greeting,
//! EHLO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT), keeps what it accepted, and
//! answers the end of each message from a script (e.g. 451 then 250, or always 550), so a test
//! sees what a mail server would do to the system's real SMTP client.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and body), lines joined with `\n`.
    pub data: String,
}

impl ReceivedMail {
    /// A header's value (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        let mut lines = self.data.lines().take_while(|l| !l.is_empty()).peekable();
        while let Some(line) = lines.next() {
            if line.to_ascii_lowercase().starts_with(&prefix) {
                let mut value = line[prefix.len()..].trim().to_owned();
                while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                    value.push(' ');
                    value.push_str(next.trim());
                    lines.next();
                }
                return Some(value);
            }
        }
        None
    }

    /// The body after the headers, with quoted-printable soft breaks undone.
    pub fn body(&self) -> String {
        let body = self.data.split_once("\n\n").map(|(_, b)| b).unwrap_or_default();
        body.replace("=\n", "").replace("=3D", "=")
    }
}

#[derive(Default)]
struct State {
    accepted: Vec<ReceivedMail>,
    /// Replies for the end of the next messages, in order; then `default_reply`.
    script: Vec<u16>,
    default_reply: u16,
    attempts: usize,
}

#[derive(Clone)]
pub struct SmtpSink {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl SmtpSink {
    /// Accepts every message (250).
    pub async fn start() -> std::io::Result<SmtpSink> {
        SmtpSink::scripted(Vec::new(), 250).await
    }

    /// Answers the end of the first messages with `script`, then `then` for every other.
    pub async fn scripted(script: Vec<u16>, then: u16) -> std::io::Result<SmtpSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State {
            script,
            default_reply: then,
            ..Default::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = session(socket, state).await;
                });
            }
        });
        Ok(SmtpSink { port, state })
    }

    /// `smtp://127.0.0.1:<port>` for `AMBA_SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Messages answered 250.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.state.lock().map(|s| s.accepted.clone()).unwrap_or_default()
    }

    /// Every end of message seen, accepted or not.
    pub fn attempts(&self) -> usize {
        self.state.lock().map(|s| s.attempts).unwrap_or_default()
    }
}

async fn session(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8".into()
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            "250 OK".into()
        } else if upper.starts_with("RSET") {
            (from, to) = (String::new(), Vec::new());
            "250 OK".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&line[10..]);
            "250 OK".into()
        } else if upper.starts_with("RCPT TO:") {
            to.push(address(&line[8..]));
            "250 OK".into()
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = Vec::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push(line.strip_prefix('.').map(str::to_owned).unwrap_or(line));
            }
            let code = match state.lock() {
                Ok(mut s) => {
                    s.attempts += 1;
                    let code = if s.script.is_empty() {
                        s.default_reply
                    } else {
                        s.script.remove(0)
                    };
                    if code == 250 {
                        s.accepted.push(ReceivedMail {
                            from: from.clone(),
                            to: to.clone(),
                            data: data.join("\n"),
                        });
                    }
                    code
                }
                Err(_) => 451,
            };
            (from, to) = (String::new(), Vec::new());
            match code {
                250 => "250 OK queued".into(),
                451 => "451 4.3.0 try again later".into(),
                other => format!("{other} 5.7.1 rejected"),
            }
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 command not implemented".into()
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
    Ok(())
}

fn address(text: &str) -> String {
    let text = text.trim();
    let inner = text
        .strip_prefix('<')
        .and_then(|t| t.split_once('>'))
        .map(|(a, _)| a)
        .unwrap_or(text);
    inner.to_owned()
}
