//! Prefixed, time-ordered identifiers: `prg_0196f3c2...`.
//!
//! The suffix is a UUIDv7 in lower-case hex, so ids sort by creation time as plain strings
//! (keyset pagination and event ordering rely on that) and the prefix tells the kind at a glance.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not {} {kind} id: expected `{prefix}_` followed by 32 hex digits, as returned by the tool that made it",
    article(kind)
)]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub value: String,
}

/// "an" before a vowel sound's letter, else "a" ("an enrollment", "a program").
fn article(noun: &str) -> &'static str {
    match noun.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// A fresh time-ordered suffix (UUIDv7, 32 lower-case hex digits).
pub fn time_ordered_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// When an id of any kind was made, in Unix milliseconds (the UUIDv7's first 48 bits).
pub fn created_at_millis(id: &str) -> Option<u64> {
    let suffix = id.rsplit('_').next()?;
    if suffix.len() != 32 {
        return None;
    }
    u64::from_str_radix(suffix.get(..12)?, 16).ok()
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $noun:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn new() -> Self {
                Self(format!("{}_{}", $prefix, time_ordered_suffix()))
            }

            pub fn parse(value: &str) -> Result<Self, IdError> {
                let valid = value
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
                if valid {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(IdError { kind: $noun, prefix: $prefix, value: value.chars().take(60).collect() })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

define_id!(/// A person's account.
    AccountId, "acc", "account");
define_id!(/// An organization: program owners and affiliates are both orgs.
    OrgId, "org", "organization");
define_id!(/// A personal access token (its id, never its secret).
    TokenId, "tok", "token");
define_id!(/// An affiliate program.
    ProgramId, "prg", "program");
define_id!(/// An affiliate's enrollment in a program.
    EnrollmentId, "enr", "enrollment");
define_id!(/// A recorded click or visit.
    TouchpointId, "tch", "touchpoint");
define_id!(/// A reported conversion.
    ConversionId, "cnv", "conversion");
define_id!(/// An event; also its `Nats-Msg-Id` and inbox key.
    EventId, "evt", "event");
define_id!(/// A payout run.
    PayoutRunId, "run", "payout run");
define_id!(/// A Stripe payout account.
    PayoutAccountId, "pac", "payout account");
define_id!(/// An invitation e-mailed to an address (claimed with its token).
    InvitationId, "inv", "invitation");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_tell_when_they_were_made() {
        let before = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let id = EventId::new();
        let after = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let made = created_at_millis(id.as_str()).unwrap_or_default();
        assert!((before..=after).contains(&made), "{before} <= {made} <= {after}");
        assert_eq!(created_at_millis("evt_short"), None);
        assert_eq!(created_at_millis("evt_zz0000000000000000000000000000"), None);
    }

    #[test]
    fn ids_carry_their_prefix_and_parse_back() {
        let id = ProgramId::new();
        assert!(id.as_str().starts_with("prg_"));
        assert_eq!(id.as_str().len(), 4 + 32);
        assert_eq!(ProgramId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn wrong_prefix_or_shape_is_refused() {
        let program = ProgramId::new();
        assert!(OrgId::parse(program.as_str()).is_err());
        assert!(ProgramId::parse("prg_").is_err());
        assert!(ProgramId::parse("prg_XYZ").is_err());
        assert!(ProgramId::parse(&program.as_str().to_uppercase()).is_err());
        assert!(ProgramId::parse("").is_err());
        assert!(serde_json::from_str::<ProgramId>("\"nope\"").is_err());
    }

    #[test]
    fn messages_use_the_right_article() {
        let enrollment = EnrollmentId::parse("x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(enrollment.starts_with("\"x\" is not an enrollment id"), "{enrollment}");
        let program = ProgramId::parse("x").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(program.starts_with("\"x\" is not a program id"), "{program}");
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let ids: Vec<EventId> = (0..200).map(|_| EventId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
}
