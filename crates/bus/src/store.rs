//! A service's database: a pool pinned to its own schema, and its migrations.
//!
//! Each service owns one Postgres schema. Its pool sets `search_path` to that schema, so its SQL
//! names tables unqualified and can never read another service's tables by accident. Migrations
//! are tracked per schema (`<schema>._migrations`, and `<schema>._bus_migrations` for the
//! messaging tables every service shares the shape of).

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

static BUS_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Opens a pool whose connections all use `schema` (created by [`migrate`]).
pub async fn connect(database_url: &str, schema: &'static str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(database_url)?
        // Plans are made per execution: a cached generic plan made while a table was small
        // (fresh database, or autovacuum off so no statistics) would keep scanning it whole
        // after it has grown. Planning these short statements costs far less than that risk.
        .options([("search_path", schema), ("plan_cache_mode", "force_custom_plan")])
        .application_name(&format!("amba-{schema}"));
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// Creates the schema if needed and applies the messaging tables and the service's migrations.
pub async fn migrate(
    pool: &PgPool,
    schema: &'static str,
    service_migrations: &Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    for (migrator, table) in [
        (&BUS_MIGRATIONS, "_bus_migrations"),
        (service_migrations, "_migrations"),
    ] {
        let mut migrator = Migrator {
            migrations: migrator.migrations.clone(),
            ..Migrator::DEFAULT
        };
        migrator.create_schema(schema);
        migrator.dangerous_set_table_name(format!("{schema}.{table}"));
        migrator.run(pool).await?;
    }
    Ok(())
}
