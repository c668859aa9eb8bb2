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

/// A request/reply method: the service that answers it, its name (the last token of
/// `<ns>.rpc.<service>.<method>`) and the types of its request and reply. Callers
/// (`RpcClient::call`) and the service's router (`routes!`) both take it, so a call and its
/// handler cannot disagree on what is sent and what comes back.
pub struct Method<Req, Reply> {
    pub service: &'static str,
    pub name: &'static str,
    types: std::marker::PhantomData<fn(Req) -> Reply>,
}

impl<Req, Reply> Method<Req, Reply> {
    pub const fn new(service: &'static str, name: &'static str) -> Self {
        Method {
            service,
            name,
            types: std::marker::PhantomData,
        }
    }
}

impl<Req, Reply> Clone for Method<Req, Reply> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Req, Reply> Copy for Method<Req, Reply> {}

/// A service's methods (`NAME = "method" (Request => Reply);`, each with its docs), and `ALL`,
/// the table of their names that the NATS grants are checked against (`nats_grants.rs`).
macro_rules! methods {
    ($($(#[$doc:meta])* $name:ident = $method:literal ($request:ident => $reply:ident);)+) => {
        $($(#[$doc])* pub const $name: crate::Method<crate::wire::$request, crate::wire::$reply> =
            crate::Method::new(SERVICE, $method);)+
        /// Every method the service answers, but `ping` (every server answers that).
        pub const ALL: &[&str] = &[$($name.name),+];
        /// Each method with its constant's name: how code names the methods it calls.
        #[cfg(test)]
        pub(crate) const NAMED: &[(&str, &str)] = &[$((stringify!($name), $name.name)),+];
    };
}

/// Every service's request/reply methods. Part of the wire contract, so callers and services
/// share one spelling and one pair of types per method.
pub mod methods {
    pub mod enrollment {
        pub const SERVICE: &str = "enrollment";
        methods! {
            SIGNUP = "signup" (SignupRequest => SignupResponse);
            VERIFY_TOKEN = "verify_token" (VerifyTokenRequest => Principal);
            PROGRAM_CREATE = "program_create" (CreateProgramRequest => ProgramReply);
            PROGRAM_UPDATE = "program_update" (UpdateProgramRequest => ProgramReply);
            PROGRAM_GET = "program_get" (GetProgramRequest => ProgramReply);
            PROGRAM_LIST = "program_list" (ListProgramsRequest => ListProgramsResponse);
            INVITE = "invite" (InviteRequest => EnrollmentReply);
            INVITE_BY_EMAIL = "invite_by_email" (InviteByEmailRequest => InvitationReply);
            CLAIM_INVITATION = "claim_invitation" (ClaimInvitationRequest => EnrollmentReply);
            /// Public: what an invitation token is for (the claim page).
            INVITATION_PREVIEW = "invitation_preview" (InvitationPreviewRequest => InvitationPreview);
            /// Public: an active program's join page.
            PROGRAM_PUBLIC = "program_public" (ProgramPublicRequest => ProgramPublic);
            SET_CODE = "set_code" (EnrollmentActionRequest => EnrollmentReply);
            APPLY = "apply" (ApplyRequest => EnrollmentReply);
            APPROVE = "approve" (EnrollmentActionRequest => EnrollmentReply);
            REJECT = "reject" (EnrollmentActionRequest => EnrollmentReply);
            REMOVE = "remove" (EnrollmentActionRequest => EnrollmentReply);
            ACCEPT = "accept" (EnrollmentActionRequest => EnrollmentReply);
            DECLINE = "decline" (EnrollmentActionRequest => EnrollmentReply);
            SET_PARENT = "set_parent" (SetParentRequest => EnrollmentReply);
            ROTATE_CODE = "rotate_code" (EnrollmentActionRequest => EnrollmentReply);
            LIST_PROGRAM_ENROLLMENTS = "list_program_enrollments" (ListEnrollmentsRequest => ListEnrollmentsResponse);
            LIST_MY_ENROLLMENTS = "list_my_enrollments" (ListEnrollmentsRequest => ListEnrollmentsResponse);
            TOKEN_CREATE = "token_create" (CreateTokenRequest => CreateTokenResponse);
            TOKEN_LIST = "token_list" (ListTokensRequest => ListTokensResponse);
            TOKEN_REVOKE = "token_revoke" (RevokeTokenRequest => TokenReply);
        }
    }

    pub mod attribution {
        pub const SERVICE: &str = "attribution";
        methods! {
            REPORT_BATCH = "report_batch" (ReportBatchRequest => ReportConversionsReply);
            APPROVE = "approve" (DecideConversionRequest => ConversionReply);
            REJECT = "reject" (DecideConversionRequest => ConversionReply);
            CLAWBACK = "clawback" (AuthenticatedClawback => ClawbackReply);
            LIST = "list" (ListConversionsRequest => ListConversionsResponse);
            RECORD_TOUCHPOINT = "record_touchpoint" (RecordTouchpointRequest => RecordTouchpointReply);
            ASSIGN = "assign" (AssignConversionRequest => AssignConversionReply);
            DECIDE_MANY = "decide_many" (DecideConversionsRequest => DecideConversionsReply);
            EXPORT = "export" (ExportConversionsRequest => ExportConversionsReply);
            /// Why a conversion went to whom, as recorded when it was decided.
            EXPLAIN = "explain" (ExplainConversionRequest => ConversionExplanation);
        }
    }

    pub mod commission {
        pub const SERVICE: &str = "commission";
        methods! {
            BALANCE = "balance" (BalanceRequest => BalanceReply);
            MY_STATS = "my_stats" (StatsRequest => StatsReply);
            ANALYTICS = "analytics" (StatsRequest => StatsReply);
            LEADERBOARD = "leaderboard" (StatsRequest => StatsReply);
            CLAWBACK_OUTCOME = "clawback_outcome" (ClawbackOutcomeRequest => ClawbackOutcome);
            RELEASE_HELD = "release_held" (ReleaseHeldRequest => ReleaseHeldReply);
            /// An owner's CSV export of a program's ledger postings.
            COMMISSIONS_EXPORT = "commissions_export" (ExportCommissionsRequest => ExportCommissionsReply);
            PAYABLE_QUOTE = "payable_quote" (PayableQuoteRequest => PayableQuoteReply);
            PAYOUT_RESERVE = "payout_reserve" (ReservePayoutRequest => PayoutItemReply);
            PAYOUT_POST = "payout_post" (PostPayoutRequest => PayoutItemReply);
            PAYOUT_VOID = "payout_void" (VoidPayoutRequest => PayoutItemReply);
            TRANSFER_REVERSAL = "transfer_reversal" (TransferReversalRequest => TransferReversalReply);
            /// A conversion's commissions and the ledger postings that resulted.
            CONVERSION_LEDGER = "conversion_ledger" (ConversionLedgerRequest => ConversionLedgerReply);
        }
    }

    pub mod payout {
        pub const SERVICE: &str = "payout";
        methods! {
            ACCOUNT_CREATE = "account_create" (PayoutAccountCreateRequest => PayoutAccountReply);
            ONBOARDING = "onboarding" (OnboardingRequest => OnboardingReply);
            QUOTE = "quote" (PayoutQuoteRequest => PayoutQuoteReply);
            RUN = "run" (PayoutRunRequest => PayoutRunReply);
            RUNS = "runs" (PayoutRunsRequest => PayoutRunsReply);
            FUNDING_SETUP = "funding_setup" (FundingSetupRequest => FundingSetupReply);
            /// Payout-account readiness of a page of orgs (an owner's affiliates list).
            ACCOUNT_STATUSES = "account_statuses" (AccountStatusesRequest => AccountStatusesReply);
        }
    }

    pub mod notification {
        pub const SERVICE: &str = "notification";
        methods! {
            PREFERENCES = "preferences" (PreferencesRequest => PreferencesReply);
            LIST = "list" (NotificationsListRequest => NotificationsListReply);
            /// One-click unsubscribe: no caller, a signed token (the edge's public POST).
            UNSUBSCRIBE = "unsubscribe" (UnsubscribeRequest => UnsubscribeReply);
            /// The caller's events after a cursor (the feed agents resume from).
            EVENTS_LIST = "events_list" (EventsListRequest => EventsListReply);
            WEBHOOK_CREATE = "webhook_create" (WebhookCreateRequest => WebhookSecretReply);
            WEBHOOK_LIST = "webhook_list" (WebhookListRequest => WebhookListReply);
            WEBHOOK_DELETE = "webhook_delete" (WebhookRequest => WebhookReply);
            WEBHOOK_TEST = "webhook_test" (WebhookRequest => WebhookReply);
            /// A new signing secret; the old one keeps signing for a day beside it.
            WEBHOOK_ROTATE = "webhook_rotate" (WebhookRequest => WebhookSecretReply);
        }
    }
}
