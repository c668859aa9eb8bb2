//! The request/reply endpoints of `<ns>.rpc.enrollment.<method>`.
//!
//! Callers are trusted internal services (the edge) that pass the verified `Principal` of the
//! token; every owner operation checks that principal's org against the program's owner.

mod enrollments;
mod identity;
mod programs;

use amba_bus::Namespace;
use amba_bus::outbox::RelayWaker;
use amba_bus::rpc::RpcServer;
use amba_core::ApiError;
use amba_proto::methods::enrollment as methods;
use amba_proto::v1::Principal;
use sqlx::PgPool;

#[derive(Clone)]
pub struct Enrollment {
    pool: PgPool,
    ns: Namespace,
    waker: RelayWaker,
}

impl Enrollment {
    pub fn new(pool: PgPool, ns: Namespace, waker: RelayWaker) -> Self {
        Enrollment { pool, ns, waker }
    }
}

pub fn server(service: Enrollment) -> RpcServer {
    macro_rules! route {
        ($server:expr, $method:expr, $handler:ident) => {{
            let service = service.clone();
            $server.route($method, move |request| {
                let service = service.clone();
                async move { service.$handler(request).await }
            })
        }};
    }
    let server = RpcServer::new(crate::SERVICE);
    let server = route!(server, methods::SIGNUP, signup);
    let server = route!(server, methods::VERIFY_TOKEN, verify_token);
    let server = route!(server, methods::PROGRAM_CREATE, create_program);
    let server = route!(server, methods::PROGRAM_UPDATE, update_program);
    let server = route!(server, methods::PROGRAM_GET, get_program);
    let server = route!(server, methods::PROGRAM_LIST, list_programs);
    let server = route!(server, methods::INVITE, invite);
    let server = route!(server, methods::APPLY, apply);
    let server = route!(server, methods::APPROVE, approve);
    let server = route!(server, methods::REJECT, reject);
    let server = route!(server, methods::REMOVE, remove);
    let server = route!(server, methods::ACCEPT, accept);
    let server = route!(server, methods::DECLINE, decline);
    let server = route!(server, methods::SET_PARENT, set_parent);
    let server = route!(server, methods::ROTATE_CODE, rotate_code);
    let server = route!(server, methods::LIST_PROGRAM_ENROLLMENTS, list_program_enrollments);
    let server = route!(server, methods::LIST_MY_ENROLLMENTS, list_my_enrollments);
    let server = route!(server, methods::TOKEN_CREATE, create_token);
    let server = route!(server, methods::TOKEN_LIST, list_tokens);
    route!(server, methods::TOKEN_REVOKE, revoke_token)
}

/// The caller's principal; requests without one never reach a handler's logic.
fn caller(principal: Option<Principal>) -> Result<Principal, ApiError> {
    principal
        .filter(|p| !p.org_id.is_empty())
        .ok_or_else(|| ApiError::unauthenticated("this operation needs a personal access token"))
}

fn db_error(err: sqlx::Error) -> ApiError {
    tracing::error!(error = %err, "database error");
    ApiError::internal()
}
