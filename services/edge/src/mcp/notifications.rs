//! Notification tools: which e-mails an org gets, and what was sent to it.

use super::programs::rfc3339;
use super::{McpServer, ToolError, require_principal};
use amba_proto::methods::notification as methods;
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct NotificationsGetArgs {}

/// Each kind of e-mail on (true) or off (false); omitted kinds keep their setting.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct NotificationsUpdateArgs {
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
    /// Every kind of e-mail and whether your organization gets it.
    pub preferences: Vec<PreferenceView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PreferenceView {
    pub kind: String,
    pub enabled: bool,
    /// conversion_approved only: instant | daily | weekly | off.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub frequency: String,
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

fn preferences_view(reply: pb::PreferencesReply) -> PreferencesOutput {
    PreferencesOutput {
        preferences: reply
            .preferences
            .into_iter()
            .map(|p| PreferenceView {
                kind: p.kind,
                enabled: p.enabled,
                frequency: p.frequency,
            })
            .collect(),
    }
}

#[tool_router(router = notification_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_notifications_get",
        description = "Which e-mails your organization gets (to its members' addresses): invited, \
                       enrollment_activated, conversion_approved, clawback, payout_sent, payout_failed, \
                       payout_account_ready. All are on until turned off with amba_affiliate_notifications_update. \
                       conversion_approved also has a frequency: the first commission in a program is \
                       e-mailed at once, later ones as one summary (instant, daily by default, weekly, or off).",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn notifications_get(
        &self,
        Parameters(_args): Parameters<NotificationsGetArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<PreferencesOutput>, ToolError> {
        let request = pb::PreferencesRequest {
            caller: Some(require_principal(&parts)?),
            changes: Vec::new(),
        };
        Ok(Json(preferences_view(
            self.call_service(methods::SERVICE, methods::PREFERENCES, &request)
                .await?,
        )))
    }

    #[tool(
        name = "amba_affiliate_notifications_update",
        description = "Turn kinds of e-mail on (true) or off (false) for your organization, e.g. \
                       {\"conversion_approved\": false}, or how often approved commissions are summed into one e-mail: \
                       {\"conversion_approved_frequency\": \"weekly\"} (instant | daily | weekly | off). Kinds you \
                       omit keep their setting. Returns every setting.",
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
            ("clawback", a.clawback),
            ("payout_sent", a.payout_sent),
            ("payout_failed", a.payout_failed),
            ("payout_account_ready", a.payout_account_ready),
        ]
        .into_iter()
        .filter_map(|(kind, enabled)| {
            enabled.map(|enabled| pb::NotificationPreference {
                kind: kind.to_owned(),
                enabled,
                frequency: String::new(),
            })
        })
        .collect();
        // After the on/off switch, so a frequency given with it is what stays.
        if let Some(frequency) = a.conversion_approved_frequency {
            changes.push(pb::NotificationPreference {
                kind: "conversion_approved".to_owned(),
                enabled: frequency != "off",
                frequency,
            });
        }
        let request = pb::PreferencesRequest {
            caller: Some(require_principal(&parts)?),
            changes,
        };
        Ok(Json(preferences_view(
            self.call_service(methods::SERVICE, methods::PREFERENCES, &request)
                .await?,
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
        let reply: pb::NotificationsListReply = self.call_service(methods::SERVICE, methods::LIST, &request).await?;
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
