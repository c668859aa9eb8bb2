//! Protobuf types of `proto/`, compiled once for every crate: the public API (`v1`) and the
//! internal messages (`internal::v1`).

/// The public API (`proto/amba/affiliate/v1/conversions.proto`): what gRPC clients send and
/// receive, and nothing else.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod v1 {
    tonic::include_proto!("amba.affiliate.v1");
}

/// The services' own messages (`proto/amba/affiliate/internal/v1/`): request/reply envelopes
/// with the authenticated principal, and events. Never exposed to clients.
pub mod internal {
    #[allow(
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    pub mod v1 {
        tonic::include_proto!("amba.affiliate.internal.v1");
    }
}

/// Every message, public and internal, for code inside the system (`use amba_proto::wire as pb`).
pub mod wire {
    pub use crate::internal::v1::*;
    pub use crate::v1::*;
}

pub use prost::Message;

pub mod validate;

#[cfg(test)]
mod nats_grants;

/// A service's method names (`NAME = "method";`, each with its docs), and `ALL`, the table of
/// them that the NATS grants are checked against (`nats_grants.rs`).
macro_rules! methods {
    ($($(#[$doc:meta])* $name:ident = $method:literal;)+) => {
        $($(#[$doc])* pub const $name: &str = $method;)+
        /// Every method the service answers, but `ping` (every server answers that).
        pub const ALL: &[&str] = &[$($name),+];
        /// Each method with its constant's name: how code names the methods it calls.
        #[cfg(test)]
        pub(crate) const NAMED: &[(&str, &str)] = &[$((stringify!($name), $name)),+];
    };
}

/// Request/reply method names: the last token of `<ns>.rpc.<service>.<method>`. Part of the
/// wire contract, so callers and services share one spelling.
pub mod methods {
    pub mod enrollment {
        pub const SERVICE: &str = "enrollment";
        methods! {
            SIGNUP = "signup";
            VERIFY_TOKEN = "verify_token";
            PROGRAM_CREATE = "program_create";
            PROGRAM_UPDATE = "program_update";
            PROGRAM_GET = "program_get";
            PROGRAM_LIST = "program_list";
            INVITE = "invite";
            INVITE_BY_EMAIL = "invite_by_email";
            CLAIM_INVITATION = "claim_invitation";
            /// Public: what an invitation token is for (the claim page).
            INVITATION_PREVIEW = "invitation_preview";
            /// Public: an active program's join page.
            PROGRAM_PUBLIC = "program_public";
            SET_CODE = "set_code";
            APPLY = "apply";
            APPROVE = "approve";
            REJECT = "reject";
            REMOVE = "remove";
            ACCEPT = "accept";
            DECLINE = "decline";
            SET_PARENT = "set_parent";
            ROTATE_CODE = "rotate_code";
            LIST_PROGRAM_ENROLLMENTS = "list_program_enrollments";
            LIST_MY_ENROLLMENTS = "list_my_enrollments";
            TOKEN_CREATE = "token_create";
            TOKEN_LIST = "token_list";
            TOKEN_REVOKE = "token_revoke";
        }
    }

    pub mod attribution {
        pub const SERVICE: &str = "attribution";
        methods! {
            REPORT_BATCH = "report_batch";
            APPROVE = "approve";
            REJECT = "reject";
            CLAWBACK = "clawback";
            LIST = "list";
            RECORD_TOUCHPOINT = "record_touchpoint";
            ASSIGN = "assign";
            DECIDE_MANY = "decide_many";
            EXPORT = "export";
        }
    }

    pub mod commission {
        pub const SERVICE: &str = "commission";
        methods! {
            BALANCE = "balance";
            MY_STATS = "my_stats";
            ANALYTICS = "analytics";
            LEADERBOARD = "leaderboard";
            CLAWBACK_OUTCOME = "clawback_outcome";
            RELEASE_HELD = "release_held";
            /// An owner's CSV export of a program's ledger postings.
            COMMISSIONS_EXPORT = "commissions_export";
            PAYABLE_QUOTE = "payable_quote";
            PAYOUT_RESERVE = "payout_reserve";
            PAYOUT_POST = "payout_post";
            PAYOUT_VOID = "payout_void";
            TRANSFER_REVERSAL = "transfer_reversal";
        }
    }

    pub mod payout {
        pub const SERVICE: &str = "payout";
        methods! {
            ACCOUNT_CREATE = "account_create";
            ONBOARDING = "onboarding";
            QUOTE = "quote";
            RUN = "run";
            RUNS = "runs";
            FUNDING_SETUP = "funding_setup";
            /// Payout-account readiness of a page of orgs (an owner's affiliates list).
            ACCOUNT_STATUSES = "account_statuses";
        }
    }

    pub mod notification {
        pub const SERVICE: &str = "notification";
        methods! {
            PREFERENCES = "preferences";
            LIST = "list";
            /// One-click unsubscribe: no caller, a signed token (the edge's public POST).
            UNSUBSCRIBE = "unsubscribe";
        }
    }
}
