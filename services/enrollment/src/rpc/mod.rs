//! The request/reply endpoints of `<ns>.rpc.enrollment.<method>`.
//!
//! Callers are trusted internal services (the edge) that pass the verified `Principal` of the
//! token; every owner operation checks that principal's org against the program's owner.

mod codes;
mod enrollments;
mod identity;
mod invitations;
mod programs;
mod sponsors;

use amba_bus::Namespace;
use amba_bus::outbox::RelayWaker;
use amba_bus::rpc::RpcServer;
pub(crate) use amba_bus::rpc::caller;
use amba_proto::methods::enrollment as methods;
use sqlx::PgPool;

#[derive(Clone)]
pub struct Enrollment {
    pool: PgPool,
    ns: Namespace,
    waker: RelayWaker,
    /// The platform's own host (of `AMBA_PUBLIC_URL`), which landing URLs may not name.
    platform_host: Option<String>,
}

impl Enrollment {
    pub fn new(pool: PgPool, ns: Namespace, waker: RelayWaker) -> Self {
        Enrollment {
            pool,
            ns,
            waker,
            platform_host: None,
        }
    }

    pub fn with_platform_host(mut self, host: Option<String>) -> Self {
        self.platform_host = host;
        self
    }
}

pub fn server(service: Enrollment) -> RpcServer {
    amba_bus::routes!(RpcServer::new(crate::SERVICE), service, {
        methods::SIGNUP => signup,
        methods::VERIFY_TOKEN => verify_token,
        methods::PROGRAM_CREATE => create_program,
        methods::PROGRAM_UPDATE => update_program,
        methods::PROGRAM_GET => get_program,
        methods::PROGRAM_LIST => list_programs,
        methods::INVITE => invite,
        methods::INVITE_BY_EMAIL => invite_by_email,
        methods::CLAIM_INVITATION => claim_invitation,
        methods::INVITATION_PREVIEW => invitation_preview,
        methods::PROGRAM_PUBLIC => program_public,
        methods::SET_CODE => set_code,
        methods::APPLY => apply,
        methods::APPROVE => approve,
        methods::REJECT => reject,
        methods::REMOVE => remove,
        methods::ACCEPT => accept,
        methods::DECLINE => decline,
        methods::SET_PARENT => set_parent,
        methods::ROTATE_CODE => rotate_code,
        methods::LIST_PROGRAM_ENROLLMENTS => list_program_enrollments,
        methods::LIST_MY_ENROLLMENTS => list_my_enrollments,
        methods::TOKEN_CREATE => create_token,
        methods::TOKEN_LIST => list_tokens,
        methods::TOKEN_REVOKE => revoke_token,
    })
}
