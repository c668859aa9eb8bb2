//! Notification tools: which e-mails an org gets, and what was sent to it.

use super::{McpServer, ToolError, require_principal};
use crate::request::rfc3339;
use amba_proto::methods::notification as methods;
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct NotificationsGetArgs {
    /// A program's settings (its own where set, else your organization's); omitted: your
    /// organization's own settings.
    pub program_id: Option<String>,
}

/// Each kind of e-mail on (true) or off (false), and how often summarized kinds come; omitted
/// ones keep their setting.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct NotificationsUpdateArgs {
    /// Apply these settings in this program only (they win over your organization's there);
    /// omitted: your organization's own settings, which apply in every other program.
    pub program_id: Option<String>,
    /// Invitations to a program.
    pub invited: Option<bool>,
    /// An enrollment became active (with your referral code and link).
    pub enrollment_activated: Option<bool>,
    /// A conversion you referred was approved (with its commission).
    pub conversion_approved: Option<bool>,
    /// After your first commission in a program (e-mailed at once), how often later ones come as
    /// one summary: instant (at most every 10 minutes), daily (the default), weekly, or off.
    #[schemars(extend("enum" = ["instant", "daily", "weekly", "off"]))]
    pub conversion_approved_frequency: Option<String>,
    /// A sale you referred was rejected by the program owner, with the reason (in summaries).
    pub conversion_rejected: Option<bool>,
    /// How often rejected sales come as one summary: instant, daily (the default), weekly, or off.
    #[schemars(extend("enum" = ["instant", "daily", "weekly", "off"]))]
    pub conversion_rejected_frequency: Option<String>,
    /// Owners: new applications to a program that approves affiliates by hand (in summaries).
    pub application_received: Option<bool>,
    /// How often new applications come as one summary: instant, daily (the default), weekly, or off.
    #[schemars(extend("enum" = ["instant", "daily", "weekly", "off"]))]
    pub application_received_frequency: Option<String>,
    /// Owners: conversions still waiting for your approval a day after they were reported.
    pub approvals_waiting: Option<bool>,
    /// How often waiting conversions are summarized: instant, daily (the default), weekly, or off.
    #[schemars(extend("enum" = ["instant", "daily", "weekly", "off"]))]
    pub approvals_waiting_frequency: Option<String>,
    /// Owners: a payout run's outcome once every payout is final (paid, failed, charged, refunded).
    pub payout_run_summary: Option<bool>,
    /// How often payout-run outcomes come: instant (the default: within 10 minutes), daily, weekly, or off.
    #[schemars(extend("enum" = ["instant", "daily", "weekly", "off"]))]
    pub payout_run_summary_frequency: Option<String>,
    /// A refund or chargeback reversed commission (with any carried-forward debt).
    pub clawback: Option<bool>,
    /// A payout was sent to you.
    pub payout_sent: Option<bool>,
    /// A payout to you failed.
    pub payout_failed: Option<bool>,
    /// Your payout account finished onboarding.
    pub payout_account_ready: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct MyNotificationsListArgs {
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PreferencesOutput {
    /// The program these settings are for; empty: your organization's own.
    pub program_id: String,
    /// Every kind of e-mail and whether your organization gets it.
    pub preferences: Vec<PreferenceView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PreferenceView {
    pub kind: String,
    pub enabled: bool,
    /// Kinds summed into summaries only: instant | daily | weekly | off.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub frequency: String,
    /// Where the setting comes from: program | organization | default.
    pub scope: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct NotificationView {
    pub notification_id: String,
    pub kind: String,
    pub subject: String,
    /// queued (being sent) | sent | failed (see last_error) | suppressed (the kind is off)
    pub status: String,
    pub last_error: String,
    pub attempts: u32,
    pub created_at: String,
    pub sent_at: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct NotificationsOutput {
    pub notifications: Vec<NotificationView>,
    pub next_cursor: String,
}

fn preferences_view(program_id: String, reply: pb::PreferencesReply) -> PreferencesOutput {
    PreferencesOutput {
        program_id,
        preferences: reply
            .preferences
            .into_iter()
            .map(|p| PreferenceView {
                kind: p.kind,
                enabled: p.enabled,
                frequency: p.frequency,
                scope: p.scope,
            })
            .collect(),
    }
}

#[tool_router(router = notification_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_notifications_get",
        description = "Which e-mails your organization gets (to its members' addresses), for your organization \
                       or in one program (program_id): as an affiliate invited, enrollment_activated, \
                       conversion_approved, conversion_rejected, clawback, payout_sent, payout_failed, \
                       payout_account_ready; as a program owner application_received, approvals_waiting, \
                       payout_run_summary. All are on until turned off with amba_affiliate_notifications_update. \
                       Summarized kinds have a frequency (instant = at most every 10 minutes, daily, weekly, off): \
                       the first commission in a program is e-mailed at once, later ones, rejected sales, \
                       new applications and waiting approvals daily by default, payout-run outcomes instant. \
                       scope says whether a setting is the program's, your organization's, or the default.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn notifications_get(
        &self,
        Parameters(args): Parameters<NotificationsGetArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<PreferencesOutput>, ToolError> {
        let program_id = args.program_id.unwrap_or_default().trim().to_owned();
        let request = pb::PreferencesRequest {
            caller: Some(require_principal(&parts)?),
            changes: Vec::new(),
            program_id: program_id.clone(),
        };
        Ok(Json(preferences_view(
            program_id,
            self.call_service(methods::PREFERENCES, &request).await?,
        )))
    }

    #[tool(
        name = "amba_affiliate_notifications_update",
        description = "Turn kinds of e-mail on (true) or off (false) for your organization, or in one program \
                       with program_id, e.g. {\"conversion_approved\": false}, or how often a summarized kind comes: \
                       {\"conversion_approved_frequency\": \"weekly\", \"program_id\": \"prg_...\"} \
                       (instant | daily | weekly | off). Kinds you omit keep their setting. Returns every setting.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn notifications_update(
        &self,
        Parameters(a): Parameters<NotificationsUpdateArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<PreferencesOutput>, ToolError> {
        let mut changes: Vec<_> = [
            ("invited", a.invited),
            ("enrollment_activated", a.enrollment_activated),
            ("conversion_approved", a.conversion_approved),
            ("conversion_rejected", a.conversion_rejected),
            ("clawback", a.clawback),
            ("payout_sent", a.payout_sent),
            ("payout_failed", a.payout_failed),
            ("payout_account_ready", a.payout_account_ready),
            ("application_received", a.application_received),
            ("approvals_waiting", a.approvals_waiting),
            ("payout_run_summary", a.payout_run_summary),
        ]
        .into_iter()
        .filter_map(|(kind, enabled)| {
            enabled.map(|enabled| pb::NotificationPreference {
                kind: kind.to_owned(),
                enabled,
                ..Default::default()
            })
        })
        .collect();
        // After the on/off switches, so a frequency given with one is what stays.
        for (kind, frequency) in [
            ("conversion_approved", a.conversion_approved_frequency),
            ("conversion_rejected", a.conversion_rejected_frequency),
            ("application_received", a.application_received_frequency),
            ("approvals_waiting", a.approvals_waiting_frequency),
            ("payout_run_summary", a.payout_run_summary_frequency),
        ] {
            if let Some(frequency) = frequency {
                changes.push(pb::NotificationPreference {
                    kind: kind.to_owned(),
                    enabled: frequency != "off",
                    frequency,
                    ..Default::default()
                });
            }
        }
        let program_id = a.program_id.unwrap_or_default().trim().to_owned();
        let request = pb::PreferencesRequest {
            caller: Some(require_principal(&parts)?),
            changes,
            program_id: program_id.clone(),
        };
        Ok(Json(preferences_view(
            program_id,
            self.call_service(methods::PREFERENCES, &request).await?,
        )))
    }

    #[tool(
        name = "amba_affiliate_my_notifications_list",
        description = "The e-mails sent (or being sent) to your organization, newest first: kind, subject, status \
                       (queued, sent, failed with the reason, suppressed when the kind is off) and times.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn my_notifications_list(
        &self,
        Parameters(a): Parameters<MyNotificationsListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<NotificationsOutput>, ToolError> {
        let request = pb::NotificationsListRequest {
            caller: Some(require_principal(&parts)?),
            cursor: a.cursor.unwrap_or_default(),
            limit: a.limit.unwrap_or_default(),
        };
        let reply: pb::NotificationsListReply = self.call_service(methods::LIST, &request).await?;
        Ok(Json(NotificationsOutput {
            notifications: reply
                .notifications
                .into_iter()
                .map(|n| NotificationView {
                    notification_id: n.notification_id,
                    kind: n.kind,
                    subject: n.subject,
                    status: n.status,
                    last_error: n.last_error,
                    attempts: n.attempts,
                    created_at: rfc3339(n.created_at_micros),
                    sent_at: if n.sent_at_micros > 0 {
                        rfc3339(n.sent_at_micros)
                    } else {
                        String::new()
                    },
                })
                .collect(),
            next_cursor: reply.next_cursor,
        }))
    }
}
