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

/// Request/reply method names: the last token of `<ns>.rpc.<service>.<method>`. Part of the
/// wire contract, so callers and services share one spelling.
pub mod methods {
    pub mod enrollment {
        pub const SERVICE: &str = "enrollment";
        pub const SIGNUP: &str = "signup";
        pub const VERIFY_TOKEN: &str = "verify_token";
        pub const PROGRAM_CREATE: &str = "program_create";
        pub const PROGRAM_UPDATE: &str = "program_update";
        pub const PROGRAM_GET: &str = "program_get";
        pub const PROGRAM_LIST: &str = "program_list";
        pub const INVITE: &str = "invite";
        pub const INVITE_BY_EMAIL: &str = "invite_by_email";
        pub const CLAIM_INVITATION: &str = "claim_invitation";
        /// Public: what an invitation token is for (the claim page).
        pub const INVITATION_PREVIEW: &str = "invitation_preview";
        /// Public: an active program's join page.
        pub const PROGRAM_PUBLIC: &str = "program_public";
        pub const SET_CODE: &str = "set_code";
        pub const APPLY: &str = "apply";
        pub const APPROVE: &str = "approve";
        pub const REJECT: &str = "reject";
        pub const REMOVE: &str = "remove";
        pub const ACCEPT: &str = "accept";
        pub const DECLINE: &str = "decline";
        pub const SET_PARENT: &str = "set_parent";
        pub const ROTATE_CODE: &str = "rotate_code";
        pub const LIST_PROGRAM_ENROLLMENTS: &str = "list_program_enrollments";
        pub const LIST_MY_ENROLLMENTS: &str = "list_my_enrollments";
        pub const TOKEN_CREATE: &str = "token_create";
        pub const TOKEN_LIST: &str = "token_list";
        pub const TOKEN_REVOKE: &str = "token_revoke";
    }

    pub mod attribution {
        pub const SERVICE: &str = "attribution";
        pub const REPORT_BATCH: &str = "report_batch";
        pub const APPROVE: &str = "approve";
        pub const REJECT: &str = "reject";
        pub const CLAWBACK: &str = "clawback";
        pub const LIST: &str = "list";
        pub const RECORD_TOUCHPOINT: &str = "record_touchpoint";
        pub const ASSIGN: &str = "assign";
        pub const DECIDE_MANY: &str = "decide_many";
        pub const EXPORT: &str = "export";
    }

    pub mod commission {
        pub const SERVICE: &str = "commission";
        pub const BALANCE: &str = "balance";
        pub const MY_STATS: &str = "my_stats";
        pub const ANALYTICS: &str = "analytics";
        pub const LEADERBOARD: &str = "leaderboard";
        pub const CLAWBACK_OUTCOME: &str = "clawback_outcome";
        pub const RELEASE_HELD: &str = "release_held";
        pub const PAYABLE_QUOTE: &str = "payable_quote";
        pub const PAYOUT_RESERVE: &str = "payout_reserve";
        pub const PAYOUT_POST: &str = "payout_post";
        pub const PAYOUT_VOID: &str = "payout_void";
        pub const TRANSFER_REVERSAL: &str = "transfer_reversal";
    }

    pub mod payout {
        pub const SERVICE: &str = "payout";
        pub const ACCOUNT_CREATE: &str = "account_create";
        pub const ONBOARDING: &str = "onboarding";
        pub const QUOTE: &str = "quote";
        pub const RUN: &str = "run";
        pub const RUNS: &str = "runs";
        pub const FUNDING_SETUP: &str = "funding_setup";
        /// Payout-account readiness of a page of orgs (an owner's affiliates list).
        pub const ACCOUNT_STATUSES: &str = "account_statuses";
    }

    pub mod notification {
        pub const SERVICE: &str = "notification";
        pub const PREFERENCES: &str = "preferences";
        pub const LIST: &str = "list";
        /// One-click unsubscribe: no caller, a signed token (the edge's public POST).
        pub const UNSUBSCRIBE: &str = "unsubscribe";
    }
}
