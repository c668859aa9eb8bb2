//! The request/reply endpoints of `<ns>.rpc.attribution.<method>`.

mod conversions;
mod touchpoints;

use crate::actors::accrue::RuleCache;
use crate::actors::writer::Writers;
use amba_bus::Namespace;
use amba_bus::outbox::RelayWaker;
use amba_bus::rpc::RpcServer;
use amba_core::ApiError;
use amba_proto::methods::attribution as methods;
use amba_proto::v1::Principal;
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
    macro_rules! route {
        ($server:expr, $method:expr, $handler:ident) => {{
            let service = service.clone();
            $server.route($method, move |request| {
                let service = service.clone();
                async move { service.$handler(request).await }
            })
        }};
    }
    let server = RpcServer::new(crate::SERVICE).with_concurrency(4_096);
    let server = route!(server, methods::REPORT, report);
    let server = route!(server, methods::REPORT_BATCH, report_batch);
    let server = route!(server, methods::APPROVE, approve);
    let server = route!(server, methods::REJECT, reject);
    let server = route!(server, methods::CLAWBACK, clawback);
    let server = route!(server, methods::LIST, list);
    route!(server, methods::RECORD_TOUCHPOINT, record_touchpoint)
}

fn caller(principal: Option<Principal>) -> Result<Principal, ApiError> {
    principal
        .filter(|p| !p.org_id.is_empty())
        .ok_or_else(|| ApiError::unauthenticated("this operation needs a personal access token"))
}

fn db_error(err: sqlx::Error) -> ApiError {
    tracing::error!(error = %err, "database error");
    ApiError::internal()
}
