//! Request/reply: an org's e-mail preferences and the e-mails sent to it.

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
}

pub fn server(service: Notification) -> RpcServer {
    amba_bus::routes!(RpcServer::new(crate::SERVICE), service, {
        methods::PREFERENCES => preferences,
        methods::LIST => list,
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
            store::set_preference(&mut tx, &who.org_id, &change.kind, change.enabled)
                .await
                .map_err(db_error)?;
        }
        let stored = store::preferences(&mut tx, &who.org_id).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(pb::PreferencesReply {
            preferences: KINDS
                .iter()
                .map(|kind| pb::NotificationPreference {
                    kind: (*kind).to_owned(),
                    enabled: stored.iter().find(|(k, _)| k == kind).is_none_or(|(_, on)| *on),
                })
                .collect(),
        })
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
