//! Every subject, stream and consumer name, built here and nowhere else.
//!
//! A namespace prefix comes first so tenants and tests sharing one NATS server never see each
//! other's traffic: `<ns>.rpc.<service>.<method>`, `<ns>.evt.<domain>.<type>`. Stream and
//! consumer names cannot contain dots, so they use `_` and upper case: `<NS>_EVT_ENROLLMENT`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid namespace {0:?}: use 1-32 characters of a-z, 0-9, '-' or '_', starting with a letter")]
pub struct NamespaceError(String);

/// The subject/stream prefix (`AMBA_NAMESPACE`, default `amba`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    pub fn new(prefix: &str) -> Result<Self, NamespaceError> {
        let valid = (1..=32).contains(&prefix.len())
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if valid {
            Ok(Namespace(prefix.to_owned()))
        } else {
            Err(NamespaceError(prefix.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<ns>.rpc.<service>.<method>`
    pub fn rpc(&self, service: &str, method: &str) -> String {
        format!("{}.rpc.{service}.{method}", self.0)
    }

    /// `<ns>.rpc.<service>.*`: what a service's responders subscribe to.
    pub fn rpc_wildcard(&self, service: &str) -> String {
        format!("{}.rpc.{service}.*", self.0)
    }

    /// The queue group a service's replicas share, so each request is answered once.
    pub fn rpc_queue(&self, service: &str) -> String {
        format!("{}.{service}", self.0)
    }

    /// `<ns>.evt.<domain>.<type>`
    pub fn event(&self, domain: &str, kind: &str) -> String {
        format!("{}.evt.{domain}.{kind}", self.0)
    }

    /// `<ns>.evt.<domain>.>`: every event of a domain.
    pub fn event_domain(&self, domain: &str) -> String {
        format!("{}.evt.{domain}.>", self.0)
    }

    /// An event subject's domain and type, read back: `<ns>.evt.conversion.approved` →
    /// `("conversion", "approved")`. A type may hold dots (Stripe's `account.updated`); a
    /// namespace never does. `None` for any other subject.
    pub fn parse_event(subject: &str) -> Option<(&str, &str)> {
        let (_namespace, rest) = subject.split_once('.')?;
        rest.strip_prefix("evt.")?.split_once('.')
    }

    /// `<NS>_<NAME>` for streams: `events_stream("enrollment")` is `AMBA_EVT_ENROLLMENT`.
    pub fn events_stream(&self, owner: &str) -> String {
        self.upper(&format!("evt_{owner}"))
    }

    /// A durable consumer's name: `<NS>_<SERVICE>_<PURPOSE>`.
    pub fn consumer(&self, service: &str, purpose: &str) -> String {
        self.upper(&format!("{service}_{purpose}"))
    }

    fn upper(&self, name: &str) -> String {
        format!("{}_{}", self.0, name)
            .replace(['-', '.'], "_")
            .to_ascii_uppercase()
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() -> Result<(), NamespaceError> {
        let ns = Namespace::new("amba")?;
        assert_eq!(ns.rpc("enrollment", "signup"), "amba.rpc.enrollment.signup");
        assert_eq!(ns.rpc_wildcard("enrollment"), "amba.rpc.enrollment.*");
        assert_eq!(ns.event("program", "created"), "amba.evt.program.created");
        assert_eq!(ns.event_domain("program"), "amba.evt.program.>");
        assert_eq!(ns.events_stream("enrollment"), "AMBA_EVT_ENROLLMENT");
        assert_eq!(
            Namespace::new("t-1a")?.consumer("commission", "programs"),
            "T_1A_COMMISSION_PROGRAMS"
        );
        Ok(())
    }

    #[test]
    fn event_subjects_read_back() -> Result<(), NamespaceError> {
        let ns = Namespace::new("t-1a")?;
        let subject = ns.event("conversion", "approved");
        assert_eq!(Namespace::parse_event(&subject), Some(("conversion", "approved")));
        let stripe = ns.event("stripe", "account.updated");
        assert_eq!(Namespace::parse_event(&stripe), Some(("stripe", "account.updated")));
        for other in [
            ns.rpc("payout", "run"),
            "amba.evt".to_owned(),
            "amba.evt.x".to_owned(),
            String::new(),
        ] {
            assert_eq!(Namespace::parse_event(&other), None, "{other}");
        }
        Ok(())
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["", "Amba", "a.b", "a b", "1abc", "a>", "a*", &"x".repeat(33)] {
            assert!(Namespace::new(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
