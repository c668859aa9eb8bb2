//! Enrollment: identity (accounts, orgs, personal access tokens) and programs with their
//! versioned commission rules. It answers request/reply on `<ns>.rpc.enrollment.*` and
//! announces every change as `identity.*`, `program.*`, `enrollment.*` and `code.*` events
//! through its outbox.

pub mod domain;
pub mod rpc;
pub mod store;

use amba_bus::service::Service;
use amba_bus::{Bus, RunError};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = amba_proto::methods::enrollment::SERVICE;
pub const SCHEMA: &str = "enrollment";
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Applies this service's migrations (also done by [`run`]).
pub async fn migrate(database_url: &str) -> Result<(), RunError> {
    amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 2)
        .await
        .map(|_| ())
}

/// What enrollment needs to know about the deployment.
#[derive(Debug, Clone, Default)]
pub struct EnrollmentConfig {
    /// The host of `AMBA_PUBLIC_URL`: a program's landing URL may not point back at the platform.
    pub platform_host: Option<String>,
}

/// Serves requests until `shutdown`, then drains them and flushes the outbox.
pub async fn run(
    database_url: &str,
    bus: Bus,
    config: EnrollmentConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let service = Service::open(database_url, SCHEMA, &MIGRATIONS, 16, bus, shutdown).await?;
    let enrollment = rpc::Enrollment::new(service.pool.clone(), service.ns().clone(), service.waker.clone())
        .with_platform_host(config.platform_host);
    service.serve(rpc::server(enrollment)).run().await
}
