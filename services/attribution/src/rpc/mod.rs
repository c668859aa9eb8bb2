//! The request/reply endpoints of `<ns>.rpc.attribution.<method>`.

mod conversions;
mod explain;
mod touchpoints;

use crate::actors::accrue::RuleCache;
use crate::actors::writer::Writers;
use amba_bus::Namespace;
use amba_bus::outbox::RelayWaker;
use amba_bus::rpc::RpcServer;
pub(crate) use amba_bus::rpc::caller;
use amba_proto::methods::attribution as methods;
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Clone)]
pub struct Attribution {
    pool: PgPool,
    ns: Namespace,
    waker: RelayWaker,
    writers: Writers,
    rules: Arc<RuleCache>,
}

impl Attribution {
    pub fn new(pool: PgPool, ns: Namespace, waker: RelayWaker, writers: Writers, rules: Arc<RuleCache>) -> Self {
        Attribution {
            pool,
            ns,
            waker,
            writers,
            rules,
        }
    }
}

pub fn server(service: Attribution) -> RpcServer {
    amba_bus::routes!(RpcServer::new(crate::SERVICE).with_concurrency(4_096), service, {
        methods::REPORT_BATCH => report_batch,
        methods::APPROVE => approve,
        methods::REJECT => reject,
        methods::CLAWBACK => clawback,
        methods::LIST => list,
        methods::ASSIGN => assign,
        methods::DECIDE_MANY => decide_many,
        methods::EXPORT => export,
        methods::RECORD_TOUCHPOINT => record_touchpoint,
        methods::EXPLAIN => explain,
    })
}
