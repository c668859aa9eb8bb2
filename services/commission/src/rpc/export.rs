//! An owner's accounting export of a program's ledger: a page of its postings booked in
//! `[from, to)` as CSV (see `domain::export` for the columns).

use super::Commission;
use crate::domain::export::{self, Movement};
use crate::store;
use amba_bus::rpc::caller;
use amba_core::id::ProgramId;
use amba_core::{ApiError, cursor};
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};

/// Most rows in one page, and a page's size in bytes (far below NATS's message limit).
const PAGE_ROWS: u32 = 5_000;
const PAGE_BYTES: usize = 512 * 1024;
/// The longest booking-time range one call covers.
const MAX_DAYS: i64 = 366;
/// What an affiliate reads instead: its own balances.
const MY_BALANCE_TOOL: &str = "amba_affiliate_my_balance_get";

impl Commission {
    #[tracing::instrument(skip_all, fields(program_id = %request.program_id), err(level = "info"))]
    pub async fn commissions_export(
        &self,
        request: pb::ExportCommissionsRequest,
    ) -> Result<pb::ExportCommissionsReply, ApiError> {
        let caller = caller(request.caller)?;
        let program_id = ProgramId::parse(request.program_id.trim())?;
        let (from, to) = amba_core::csv::export_range(request.from_micros, request.to_micros, MAX_DAYS)?;
        let after = match cursor::decode(&request.cursor)? {
            None => None,
            Some(key) => Some(page_key(&key).ok_or_else(|| ApiError::invalid("cursor is not one this server issued"))?),
        };
        let page_rows = match request.limit {
            0 => PAGE_ROWS,
            n => n.min(PAGE_ROWS),
        };
        let program = self
            .owned_program(&caller, program_id.as_str(), Some(MY_BALANCE_TOOL))
            .await?;
        let mut conn = self.pool.acquire().await?;
        let rows = store::export::movements(
            &mut conn,
            &program.program_id,
            from,
            to,
            after,
            i64::from(page_rows) + 1,
        )
        .await?;
        let mut csv = export::header();
        let mut count: u32 = 0;
        let mut last: Option<&Movement> = None;
        for row in &rows {
            let line = row.line();
            // A page stays far below NATS's message limit however long the reasons are.
            if count == page_rows || (count > 0 && csv.len() + line.len() > PAGE_BYTES) {
                break;
            }
            csv.push_str(&line);
            count += 1;
            last = Some(row);
        }
        let next_cursor = match last {
            Some(last) if (count as usize) < rows.len() => {
                cursor::encode(&format!("{}|{}", last.posted_at.timestamp_micros(), last.journal_id))
            }
            _ => String::new(),
        };
        Ok(pb::ExportCommissionsReply {
            csv,
            rows: count,
            next_cursor,
        })
    }
}

/// A cursor's key: `<booking time in µs>|<journal id>`.
fn page_key(key: &str) -> Option<(DateTime<Utc>, i64)> {
    let (micros, id) = key.split_once('|')?;
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    Some((at, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_keys_round_trip_and_refuse_others() {
        let at = DateTime::from_timestamp_micros(1_767_607_200_123_456).unwrap_or_default();
        assert_eq!(page_key("1767607200123456|42"), Some((at, 42)));
        for bad in ["", "1767607200123456", "x|42", "1767607200123456|x", "|"] {
            assert_eq!(page_key(bad), None, "{bad}");
        }
    }
}
