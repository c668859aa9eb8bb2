//! Request/reply: an org's e-mail preferences (with the digest frequency of approvals), the
//! e-mails sent to it, and one-click unsubscribe by a signed token (no caller).

use crate::domain::digest::Frequency;
use crate::domain::templates::KINDS;
use crate::store;
use amba_bus::rpc::{RpcServer, caller, db_error};
use amba_core::ApiError;
use amba_proto::methods::notification as methods;
use amba_proto::wire as pb;
use sqlx::PgPool;

#[derive(Clone)]
pub struct Notification {
    pub pool: PgPool,
    /// Checks one-click unsubscribe tokens (`AMBA_LINK_SECRET`).
    pub link_secret: Option<amba_core::secret::Secret>,
}

pub fn server(service: Notification) -> RpcServer {
    amba_bus::routes!(RpcServer::new(crate::SERVICE), service, {
        methods::PREFERENCES => preferences,
        methods::LIST => list,
        methods::UNSUBSCRIBE => unsubscribe,
    })
}

impl Notification {
    /// Applies `changes` (if any) and returns every kind with its setting.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn preferences(&self, request: pb::PreferencesRequest) -> Result<pb::PreferencesReply, ApiError> {
        let who = caller(request.caller)?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        for change in &request.changes {
            if !KINDS.contains(&change.kind.as_str()) {
                return Err(ApiError::invalid(format!(
                    "{:?} is not a kind of e-mail; expected one of: {}",
                    change.kind,
                    KINDS.join(", ")
                )));
            }
            if change.frequency.is_empty() {
                store::set_preference(&mut tx, &who.org_id, &change.kind, change.enabled)
                    .await
                    .map_err(db_error)?;
                continue;
            }
            let frequency = match Frequency::parse(&change.frequency) {
                Some(f) if change.kind == "conversion_approved" => f,
                _ => {
                    return Err(ApiError::invalid(format!(
                        "conversion_approved_frequency: {:?} is not one of {} (conversion_approved only)",
                        change.frequency,
                        Frequency::NAMES.join(", ")
                    )));
                }
            };
            let stored = (frequency != Frequency::Off).then(|| frequency.name());
            store::set_frequency(&mut tx, &who.org_id, stored)
                .await
                .map_err(db_error)?;
        }
        let stored = store::preferences(&mut tx, &who.org_id).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(pb::PreferencesReply {
            preferences: KINDS
                .iter()
                .map(|kind| {
                    let (enabled, frequency) = stored
                        .iter()
                        .find(|(k, _, _)| k == kind)
                        .map_or((true, None), |(_, on, f)| (*on, f.as_deref()));
                    let frequency = match (*kind, enabled, frequency) {
                        ("conversion_approved", false, _) => Frequency::Off.name(),
                        ("conversion_approved", true, f) => f.unwrap_or(Frequency::Daily.name()),
                        _ => "",
                    };
                    pb::NotificationPreference {
                        kind: (*kind).to_owned(),
                        enabled,
                        frequency: frequency.to_owned(),
                    }
                })
                .collect(),
        })
    }

    /// Turns off the kind of e-mail a signed unsubscribe token names, for its org; again is a
    /// no-op. No caller: the token is the authority (RFC 8058 one-click, no login).
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn unsubscribe(&self, request: pb::UnsubscribeRequest) -> Result<pb::UnsubscribeReply, ApiError> {
        let (org_id, kind) = self
            .link_secret
            .as_ref()
            .and_then(|key| crate::unsubscribe::verify(key.expose().as_bytes(), &request.token))
            .filter(|(_, kind)| KINDS.contains(&kind.as_str()))
            .ok_or_else(|| ApiError::not_found("unsubscribe link (altered or not issued here)"))?;
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        if kind == "conversion_approved" {
            // Off, keeping the chosen frequency for when it is turned on again.
            store::set_frequency(&mut conn, &org_id, None).await
        } else {
            store::set_preference(&mut conn, &org_id, &kind, false).await
        }
        .map_err(db_error)?;
        tracing::info!(%org_id, %kind, "unsubscribed by link");
        Ok(pb::UnsubscribeReply { kind })
    }

    /// The e-mails of the caller's org, newest first.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn list(&self, request: pb::NotificationsListRequest) -> Result<pb::NotificationsListReply, ApiError> {
        let who = caller(request.caller)?;
        let before = amba_core::cursor::decode(&request.cursor)?;
        let limit = amba_core::cursor::page_size(request.limit);
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let mut rows = store::page(&mut conn, &who.org_id, before.as_deref(), i64::from(limit) + 1)
            .await
            .map_err(db_error)?;
        let next_cursor = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| amba_core::cursor::encode(&r.email_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::NotificationsListReply {
            notifications: rows
                .into_iter()
                .map(|r| pb::Notification {
                    notification_id: r.email_id,
                    kind: r.template,
                    subject: r.subject,
                    status: r.status,
                    last_error: r.last_error.unwrap_or_default(),
                    created_at_micros: r.created_at.timestamp_micros(),
                    sent_at_micros: r.sent_at.map(|t| t.timestamp_micros()).unwrap_or(0),
                    attempts: u32::try_from(r.attempts).unwrap_or(0),
                })
                .collect(),
            next_cursor,
        })
    }
}
