//! The request/reply endpoints of `<ns>.rpc.commission.<method>`.
//!
//! Affiliate reads (balance, my stats) are scoped by the caller's org: they take no org id.
//! Owner reads (analytics, leaderboard, ledger export, clawback outcome) and the owner's early
//! release of held commission check the program's owner: an org enrolled in the program gets
//! FORBIDDEN, anyone else NOT_FOUND. The payout-facing methods (quote, reserve, post, void,
//! transfer reversal) are for trusted internal callers and are idempotent per payout item /
//! reversal id.

mod explain;
mod export;
mod payouts;
mod reads;
mod release;

use crate::domain::ledger::LedgerError;
use amba_bus::rpc::RpcServer;
use amba_core::ApiError;
use amba_proto::methods::commission as methods;
use sqlx::PgPool;

#[derive(Clone)]
pub struct Commission {
    pool: PgPool,
}

impl Commission {
    pub fn new(pool: PgPool) -> Self {
        Commission { pool }
    }
}

pub fn server(service: Commission) -> RpcServer {
    amba_bus::routes!(RpcServer::new(crate::SERVICE), service, {
        methods::BALANCE => balance,
        methods::MY_STATS => my_stats,
        methods::ANALYTICS => analytics,
        methods::LEADERBOARD => leaderboard,
        methods::CLAWBACK_OUTCOME => clawback_outcome,
        methods::RELEASE_HELD => release_held,
        methods::COMMISSIONS_EXPORT => commissions_export,
        methods::CONVERSION_LEDGER => conversion_ledger,
        methods::PAYABLE_QUOTE => payable_quote,
        methods::PAYOUT_RESERVE => reserve,
        methods::PAYOUT_POST => post,
        methods::PAYOUT_VOID => void,
        methods::TRANSFER_REVERSAL => transfer_reversal,
    })
}

fn ledger_error(err: LedgerError) -> ApiError {
    match err {
        LedgerError::InsufficientPayable { available, requested } => {
            ApiError::conflict(err.to_string()).with_details(serde_json::json!({
                "available_minor": available, "requested_minor": requested
            }))
        }
        LedgerError::ExceedsReturnable { .. } | LedgerError::ExceedsSale { .. } => ApiError::conflict(err.to_string()),
        LedgerError::NonPositive | LedgerError::BadFee { .. } | LedgerError::Overflow => {
            ApiError::invalid(err.to_string())
        }
    }
}
