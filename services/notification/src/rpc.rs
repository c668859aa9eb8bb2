//! Request/reply: an org's e-mail preferences (with the digest frequency of approvals), the
//! e-mails sent to it, and one-click unsubscribe by a signed token (no caller).

use crate::domain::digest::{DIGEST_KINDS, Frequency, default_frequency};
use crate::domain::templates::{DIGEST, KINDS};
use crate::store;
use amba_bus::rpc::{RpcServer, caller};
use amba_core::ApiError;
use amba_proto::methods::notification as methods;
use amba_proto::wire as pb;
use sqlx::PgPool;

#[derive(Clone)]
pub struct Notification {
    pub pool: PgPool,
    /// Checks one-click unsubscribe tokens (`AMBA_LINK_SECRET`).
    pub link_secret: Option<amba_core::secret::Secret>,
    pub webhooks: crate::domain::webhooks::WebhookConfig,
}

pub fn server(service: Notification) -> RpcServer {
    amba_bus::routes!(RpcServer::new(crate::SERVICE), service, {
        methods::PREFERENCES => preferences,
        methods::LIST => list,
        methods::UNSUBSCRIBE => unsubscribe,
        methods::EVENTS_LIST => events_list,
        methods::WEBHOOK_CREATE => webhook_create,
        methods::WEBHOOK_LIST => webhook_list,
        methods::WEBHOOK_DELETE => webhook_delete,
        methods::WEBHOOK_TEST => webhook_test,
        methods::WEBHOOK_ROTATE => webhook_rotate,
    })
}

impl Notification {
    pub async fn webhook_create(&self, request: pb::WebhookCreateRequest) -> Result<pb::WebhookSecretReply, ApiError> {
        let who = caller(request.caller.clone())?;
        crate::webhooks::create(&self.pool, &self.webhooks, &who, request).await
    }

    pub async fn webhook_list(&self, request: pb::WebhookListRequest) -> Result<pb::WebhookListReply, ApiError> {
        let who = caller(request.caller.clone())?;
        crate::webhooks::list(&self.pool, &who, request).await
    }

    pub async fn webhook_delete(&self, request: pb::WebhookRequest) -> Result<pb::WebhookReply, ApiError> {
        let who = caller(request.caller.clone())?;
        crate::webhooks::delete(&self.pool, &who, request).await
    }

    pub async fn webhook_test(&self, request: pb::WebhookRequest) -> Result<pb::WebhookReply, ApiError> {
        let who = caller(request.caller.clone())?;
        crate::webhooks::test(&self.pool, &who, request).await
    }

    pub async fn webhook_rotate(&self, request: pb::WebhookRequest) -> Result<pb::WebhookSecretReply, ApiError> {
        let who = caller(request.caller.clone())?;
        crate::webhooks::rotate(&self.pool, &who, request).await
    }

    /// The caller's events after a cursor (see [`crate::feed`]).
    pub async fn events_list(&self, request: pb::EventsListRequest) -> Result<pb::EventsListReply, ApiError> {
        let who = caller(request.caller.clone())?;
        crate::feed::list(&self.pool, &who, &request).await
    }

    /// Applies `changes` (if any) in the request's program (or the org's own settings) and returns
    /// every kind with its setting there.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn preferences(&self, request: pb::PreferencesRequest) -> Result<pb::PreferencesReply, ApiError> {
        let who = caller(request.caller)?;
        let program_id = request.program_id.trim();
        let mut tx = self.pool.begin().await?;
        if !program_id.is_empty() && !store::program_exists(&mut tx, program_id).await? {
            return Err(ApiError::not_found(format!("program {program_id:?}")));
        }
        for change in &request.changes {
            if !KINDS.contains(&change.kind.as_str()) {
                return Err(ApiError::invalid(format!(
                    "{:?} is not a kind of e-mail; expected one of: {}",
                    change.kind,
                    KINDS.join(", ")
                )));
            }
            let frequency = match change.frequency.as_str() {
                "" => None,
                name => match Frequency::parse(name) {
                    Some(f) if default_frequency(&change.kind).is_some() => Some(f),
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "{}_frequency: {name:?} is not one of {} (kinds summed into digests only: {})",
                            change.kind,
                            Frequency::NAMES.join(", "),
                            DIGEST_KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                        )));
                    }
                },
            };
            // Off keeps the chosen frequency for when the kind is turned on again.
            let enabled = frequency.map_or(change.enabled, |f| f != Frequency::Off);
            let stored = frequency.filter(|f| *f != Frequency::Off).map(Frequency::name);
            store::set_preference(&mut tx, &who.org_id, &change.kind, program_id, enabled, stored).await?;
        }
        let settings = store::settings(&mut tx, &who.org_id, KINDS, program_id).await?;
        tx.commit().await?;
        Ok(pb::PreferencesReply {
            preferences: KINDS
                .iter()
                .zip(settings)
                .map(|(kind, setting)| {
                    let frequency = match default_frequency(kind) {
                        None => "",
                        Some(_) if !setting.enabled => Frequency::Off.name(),
                        Some(default) => setting
                            .frequency
                            .as_deref()
                            .and_then(Frequency::parse)
                            .unwrap_or(default)
                            .name(),
                    };
                    pb::NotificationPreference {
                        kind: (*kind).to_owned(),
                        enabled: setting.enabled,
                        frequency: frequency.to_owned(),
                        scope: setting.scope.to_owned(),
                    }
                })
                .collect(),
        })
    }

    /// Turns off the kind of e-mail a signed unsubscribe token names (a digest's: every kind
    /// summed into digests), for its org, in every program; again is a no-op. No caller: the
    /// token is the authority (RFC 8058 one-click, no login).
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn unsubscribe(&self, request: pb::UnsubscribeRequest) -> Result<pb::UnsubscribeReply, ApiError> {
        let (org_id, kind) = self
            .link_secret
            .as_ref()
            .and_then(|key| crate::unsubscribe::verify(key.expose().as_bytes(), &request.token))
            .filter(|(_, kind)| kind == DIGEST || KINDS.contains(&kind.as_str()))
            .ok_or_else(|| ApiError::not_found("unsubscribe link (altered or not issued here)"))?;
        let kinds: Vec<&str> = if kind == DIGEST {
            DIGEST_KINDS.iter().map(|(k, _)| *k).collect()
        } else {
            vec![kind.as_str()]
        };
        let mut conn = self.pool.acquire().await?;
        store::turn_off(&mut conn, &org_id, &kinds).await?;
        tracing::info!(%org_id, %kind, "unsubscribed by link");
        Ok(pb::UnsubscribeReply { kind })
    }

    /// The e-mails of the caller's org, newest first.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn list(&self, request: pb::NotificationsListRequest) -> Result<pb::NotificationsListReply, ApiError> {
        let who = caller(request.caller)?;
        let before = amba_core::cursor::decode(&request.cursor)?;
        let limit = amba_core::cursor::page_size(request.limit);
        let mut conn = self.pool.acquire().await?;
        let mut rows = store::page(&mut conn, &who.org_id, before.as_deref(), i64::from(limit) + 1).await?;
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
