//! `amba_affiliate_events_list` and the resource template `amba://programs/{id}/events`: the
//! caller's events in order, resumable from a cursor (the notification service's feed).

use super::{McpServer, ToolError, require_principal};
use crate::request::rfc3339;
use amba_core::ApiError;
use amba_proto::methods::notification as methods;
use amba_proto::wire as pb;
use rmcp::ErrorData;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{ReadResourceResult, ResourceContents, ResourceTemplate};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const EVENTS_TEMPLATE: &str = "amba://programs/{program_id}/events";

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct EventsListArgs {
    /// One program's events (yours, or one you are enrolled in); omitted: all of yours.
    pub program_id: Option<String>,
    /// Only these types, e.g. ["conversion.approved", "payout.sent"].
    #[schemars(extend("items" = {"enum": [
        "enrollment.invited", "enrollment.applied", "enrollment.activated", "enrollment.rejected",
        "enrollment.declined", "enrollment.removed", "enrollment.moved", "conversion.recorded",
        "conversion.held", "conversion.approved", "conversion.rejected", "conversion.clawed_back",
        "commission.clawed_back", "payout.sent", "payout.failed"]}))]
    pub types: Option<Vec<String>>,
    /// `next_cursor` of the previous call: resumes right after it (none skipped, none repeated,
    /// across restarts). Omitted: from the oldest event kept (30 days at least).
    pub cursor: Option<String>,
    /// 1-200, default 50.
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EventView {
    /// Stable: the same event always has this id (use it to deduplicate).
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: String,
    pub program_id: String,
    /// The event's public fields (an affiliate sees only its own events, and a hold without the
    /// detector's details).
    pub payload: serde_json::Value,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EventsListOutput {
    pub events: Vec<EventView>,
    /// Pass as `cursor` to get what came after (also when `events` is empty: poll with it).
    pub next_cursor: String,
}

#[tool_router(router = event_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_events_list",
        description = "What happened, in order, resumable: enrollment changes, conversions recorded, held, approved \
                       (commission decided and booked), rejected and clawed back, commission clawbacks, payouts sent or \
                       failed. Owners see their programs' events, affiliates only their own. Keep next_cursor and pass \
                       it as cursor to get only what is new. Also readable as the resource amba://programs/{id}/events.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn events_list(
        &self,
        Parameters(a): Parameters<EventsListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EventsListOutput>, ToolError> {
        let request = pb::EventsListRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id.unwrap_or_default(),
            types: a.types.unwrap_or_default(),
            cursor: a.cursor.unwrap_or_default(),
            limit: a.limit.unwrap_or_default(),
        };
        let reply = self.call_service(methods::EVENTS_LIST, &request).await?;
        Ok(Json(output(reply)))
    }
}

fn output(reply: pb::EventsListReply) -> EventsListOutput {
    EventsListOutput {
        events: reply
            .events
            .into_iter()
            .map(|e| EventView {
                payload: serde_json::from_str(&e.payload_json).unwrap_or(serde_json::Value::Null),
                event_id: e.event_id,
                kind: e.r#type,
                occurred_at: rfc3339(e.occurred_at_micros),
                program_id: e.program_id,
            })
            .collect(),
        next_cursor: reply.next_cursor,
    }
}

pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(EVENTS_TEMPLATE, "program events")
            .with_title("A program's events")
            .with_description(
                "The same as amba_affiliate_events_list {program_id}: up to 200 events as JSON {events, next_cursor}; \
                 add ?cursor=<next_cursor> to resume after them.",
            )
            .with_mime_type("application/json"),
    ]
}

/// `amba://programs/<id>/events[?cursor=<c>]`: the program and the cursor, if the URI is one.
pub fn parse_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("amba://programs/")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let program_id = path.strip_suffix("/events")?;
    if program_id.is_empty() || program_id.contains('/') {
        return None;
    }
    let cursor = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("cursor="))
        .unwrap_or_default();
    Some((program_id.to_owned(), cursor.to_owned()))
}

impl McpServer {
    /// Reads the events resource as `caller`.
    pub(super) async fn read_events(
        &self,
        uri: &str,
        program_id: String,
        cursor: String,
        caller: Option<pb::Principal>,
    ) -> Result<ReadResourceResult, ErrorData> {
        let Some(caller) = caller else {
            return Err(ErrorData::invalid_request(
                "this resource needs a personal access token",
                None,
            ));
        };
        let request = pb::EventsListRequest {
            caller: Some(caller),
            program_id,
            types: Vec::new(),
            cursor,
            limit: 200,
        };
        let reply = self
            .state
            .rpc
            .call(methods::EVENTS_LIST, &request)
            .await
            .map_err(|e: ApiError| {
                let body = e.to_body();
                match e.code {
                    amba_core::ErrorCode::NotFound => ErrorData::resource_not_found(e.message, Some(body)),
                    _ => ErrorData::invalid_request(e.message, Some(body)),
                }
            })?;
        let text = serde_json::to_string(&output(reply)).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, uri).with_mime_type("application/json"),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_uris() {
        assert_eq!(
            parse_uri("amba://programs/prg_1/events"),
            Some(("prg_1".to_owned(), String::new()))
        );
        assert_eq!(
            parse_uri("amba://programs/prg_1/events?cursor=MTI"),
            Some(("prg_1".to_owned(), "MTI".to_owned()))
        );
        assert_eq!(parse_uri("amba://programs//events"), None);
        assert_eq!(parse_uri("amba://programs/a/b/events"), None);
        assert_eq!(parse_uri("amba://guide"), None);
    }
}
