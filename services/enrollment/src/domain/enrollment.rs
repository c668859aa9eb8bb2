//! Enrollment life cycle, referral codes and the sponsor tree.
//!
//! ```text
//! invite (owner)      ─┐                 ┌─ accept (affiliate, invites) ─┐
//! apply (affiliate)   ─┴─> pending ──────┼─ approve (owner) ─────────────┴─> active
//!                                        ├─ reject (owner) ─> rejected
//!                                        └─ decline (affiliate, invites) ─> declined
//! pending | active ── remove (owner) ──> removed
//! ```
//! Applications to a program whose `affiliate_approval` is `auto` start active.

use amba_core::ApiError;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Deepest place in a sponsor tree (1 = no sponsor): five levels of upline above the deepest.
pub const MAX_DEPTH: i32 = 6;
/// Referral code length over a 31-letter alphabet: about 2^59 codes, not guessable.
const CODE_LEN: usize = 12;
/// Lower-case letters and digits without look-alikes (0/o, 1/l/i): safe in URLs and when read aloud.
const CODE_ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentStatus {
    Pending,
    Active,
    Rejected,
    Declined,
    Removed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Invite,
    Application,
}

/// What someone asks to do with an enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Approve,
    Reject,
    Accept,
    Decline,
    Remove,
}

impl EnrollmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentStatus::Pending => "pending",
            EnrollmentStatus::Active => "active",
            EnrollmentStatus::Rejected => "rejected",
            EnrollmentStatus::Declined => "declined",
            EnrollmentStatus::Removed => "removed",
        }
    }
}

impl FromStr for EnrollmentStatus {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, ApiError> {
        match s {
            "pending" => Ok(EnrollmentStatus::Pending),
            "active" => Ok(EnrollmentStatus::Active),
            "rejected" => Ok(EnrollmentStatus::Rejected),
            "declined" => Ok(EnrollmentStatus::Declined),
            "removed" => Ok(EnrollmentStatus::Removed),
            other => Err(ApiError::invalid(format!(
                "invalid enrollment status {other:?}; expected pending, active, rejected, declined or removed"
            ))),
        }
    }
}

impl fmt::Display for EnrollmentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Invite => "invite",
            Origin::Application => "application",
        }
    }
}

impl FromStr for Origin {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, ApiError> {
        match s {
            "invite" => Ok(Origin::Invite),
            "application" => Ok(Origin::Application),
            other => Err(ApiError::invalid(format!("invalid origin {other:?}"))),
        }
    }
}

impl Action {
    /// The event type announcing the change (`enrollment.<type>`).
    pub fn event_type(self) -> &'static str {
        match self {
            Action::Approve | Action::Accept => "activated",
            Action::Reject => "rejected",
            Action::Decline => "declined",
            Action::Remove => "removed",
        }
    }

    /// The status after the action, or CONFLICT explaining why it cannot happen.
    pub fn apply(self, status: EnrollmentStatus, origin: Origin) -> Result<EnrollmentStatus, ApiError> {
        use EnrollmentStatus::*;
        let next = match (self, status, origin) {
            (Action::Approve, Pending, _) => Active,
            (Action::Reject, Pending, _) => Rejected,
            (Action::Accept, Pending, Origin::Invite) => Active,
            (Action::Decline, Pending, Origin::Invite) => Declined,
            (Action::Remove, Pending | Active, _) => Removed,
            (Action::Accept | Action::Decline, Pending, Origin::Application) => {
                return Err(ApiError::conflict(
                    "this enrollment is your own application; the program owner decides on it",
                ));
            }
            (_, status, _) => {
                return Err(ApiError::conflict(format!(
                    "cannot {} an enrollment that is {status}",
                    self.verb()
                )));
            }
        };
        Ok(next)
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Reject => "reject",
            Action::Accept => "accept",
            Action::Decline => "decline",
            Action::Remove => "remove",
        }
    }
}

/// A fresh referral code from the operating system's CSPRNG.
pub fn generate_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
        .collect()
}

/// Whether `code` could be one of ours (cheap check before a lookup).
pub fn looks_like_code(code: &str) -> bool {
    code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b))
}

/// Shortest and longest vanity code.
pub const VANITY_MIN: usize = 3;
pub const VANITY_MAX: usize = 32;
/// Words a vanity code may not be: the platform's own paths and words that would mislead.
const RESERVED_CODES: &[&str] = &[
    "admin",
    "amba",
    "api",
    "app",
    "claim",
    "funding",
    "help",
    "join",
    "login",
    "mcp",
    "notifications",
    "null",
    "official",
    "r",
    "root",
    "signup",
    "staff",
    "stripe",
    "support",
    "undefined",
    "unsubscribe",
    "webhooks",
    "www",
];

/// A vanity referral code chosen by an affiliate or its program owner, normalised to lower case
/// (codes are matched exactly, so `Ann-Blog` and `ann-blog` must be one code): 3-32 letters,
/// digits, `_` or `-`, starting with a letter or digit, not a reserved word.
pub fn vanity_code(text: &str) -> Result<String, ApiError> {
    let code = text.trim().to_ascii_lowercase();
    let shape = (VANITY_MIN..=VANITY_MAX).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && code.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !shape {
        let shown: String = text.chars().take(40).collect();
        return Err(ApiError::invalid(format!(
            "code {shown:?} is not a valid referral code: use {VANITY_MIN} to {VANITY_MAX} letters, digits, `_`              or `-`, starting with a letter or digit, e.g. \"ann-blog\""
        ))
        .with_details(serde_json::json!({"argument": "code"})));
    }
    if RESERVED_CODES.contains(&code.as_str()) {
        return Err(ApiError::invalid(format!("code {code:?} is reserved; choose another"))
            .with_details(serde_json::json!({"argument": "code"})));
    }
    Ok(code)
}

/// Checks placing `enrollment_id` (whose subtree is `subtree_height` levels tall, 1 for a leaf)
/// under a sponsor whose ancestors, starting with the sponsor itself, are `sponsor_chain`.
/// Returns the enrollment's new depth.
pub fn place_under(enrollment_id: &str, sponsor_chain: &[String], subtree_height: i32) -> Result<i32, ApiError> {
    if sponsor_chain.iter().any(|id| id == enrollment_id) {
        return Err(ApiError::conflict(
            "that sponsor is this affiliate or one of its downline: the tree would have a cycle",
        ));
    }
    let depth = i32::try_from(sponsor_chain.len()).unwrap_or(i32::MAX).saturating_add(1);
    if depth.saturating_add(subtree_height - 1) > MAX_DEPTH {
        return Err(ApiError::conflict(format!(
            "sponsor trees are at most {MAX_DEPTH} levels deep"
        )));
    }
    Ok(depth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use EnrollmentStatus::*;

    #[test]
    fn life_cycle() {
        let ok = |a: Action, s, o| a.apply(s, o).ok();
        assert_eq!(ok(Action::Approve, Pending, Origin::Application), Some(Active));
        assert_eq!(ok(Action::Approve, Pending, Origin::Invite), Some(Active));
        assert_eq!(ok(Action::Accept, Pending, Origin::Invite), Some(Active));
        assert_eq!(ok(Action::Decline, Pending, Origin::Invite), Some(Declined));
        assert_eq!(ok(Action::Reject, Pending, Origin::Invite), Some(Rejected));
        assert_eq!(ok(Action::Remove, Active, Origin::Invite), Some(Removed));
        assert_eq!(ok(Action::Remove, Pending, Origin::Application), Some(Removed));
        // Everything else is a conflict.
        for (action, status, origin) in [
            (Action::Approve, Active, Origin::Invite),
            (Action::Accept, Rejected, Origin::Invite),
            (Action::Accept, Active, Origin::Invite),
            (Action::Accept, Pending, Origin::Application),
            (Action::Decline, Active, Origin::Invite),
            (Action::Reject, Removed, Origin::Invite),
            (Action::Remove, Removed, Origin::Invite),
            (Action::Remove, Declined, Origin::Invite),
        ] {
            let err = action.apply(status, origin).err();
            assert_eq!(
                err.map(|e| e.code),
                Some(amba_core::ErrorCode::Conflict),
                "{action:?} {status} {origin:?}"
            );
        }
    }

    #[test]
    fn codes_are_url_safe_unique_and_recognisable() {
        let codes: std::collections::HashSet<String> = (0..2_000).map(|_| generate_code()).collect();
        assert_eq!(codes.len(), 2_000);
        assert!(codes.iter().all(|c| looks_like_code(c)));
        assert!(!looks_like_code("short"));
        assert!(!looks_like_code("ABCDEFGHJKMN"));
        assert!(!looks_like_code("abc/../x?=12"));
    }

    #[test]
    fn vanity_codes_are_normalised_and_bounded() {
        assert_eq!(vanity_code(" Ann-Blog ").ok(), Some("ann-blog".to_owned()));
        assert_eq!(vanity_code("a_1").ok(), Some("a_1".to_owned()));
        assert_eq!(vanity_code(&"x".repeat(32)).ok().map(|c| c.len()), Some(32));
        for bad in [
            "ab", "", "-ann", "ann blog", "ann/../x", "ännä", "ann?x=1", "JOIN", "admin",
        ] {
            assert!(vanity_code(bad).is_err(), "{bad:?}");
        }
        assert!(vanity_code(&"x".repeat(33)).is_err());
    }

    #[test]
    fn tree_placement() {
        let chain = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(place_under("e", &[], 1).ok(), Some(1));
        assert_eq!(place_under("e", &chain(&["p"]), 1).ok(), Some(2));
        // A cycle: moving e under its own descendant d (whose chain reaches e).
        assert!(place_under("e", &chain(&["d", "c", "e", "root"]), 1).is_err());
        assert!(place_under("e", &chain(&["e"]), 1).is_err());
        // Depth bound, including the subtree moved along.
        let five = chain(&["a", "b", "c", "d", "f"]);
        assert_eq!(place_under("e", &five, 1).ok(), Some(MAX_DEPTH));
        assert!(place_under("e", &five, 2).is_err());
        assert!(place_under("e", &chain(&["a", "b", "c", "d", "f", "g"]), 1).is_err());
    }
}
