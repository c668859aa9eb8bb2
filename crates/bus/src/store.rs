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

/// Whether the pool's role may apply `schema`'s migrations: it has the privileges of the
/// schema's owner (a superuser, or the owner `amba migrate` runs as), or the schema does not
/// exist yet and it may create it. A service's own login role (`amba_<service>`) may not: its
/// schema is migrated by `amba migrate`, and the service only checks that it was.
pub async fn may_migrate(pool: &PgPool, schema: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CASE WHEN n.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE') \
                     ELSE pg_has_role(n.nspowner, 'USAGE') END \
         FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = $1",
    )
    .bind(schema)
    .fetch_one(pool)
    .await
}

/// What a role that may not migrate finds in its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Every migration this binary has is applied, unchanged.
    Current,
    /// Not there yet (no schema, a migration not applied, or no grants yet): `amba migrate`
    /// has not run for this release. Why, in words.
    Behind(String),
}

/// Compares `schema`'s applied migrations with the messaging tables' and the service's, without
/// changing anything. A schema ahead of this binary, a changed migration or a failed one is an
/// error, as it is for [`migrate`].
pub async fn schema_state(
    pool: &PgPool,
    schema: &'static str,
    service_migrations: &Migrator,
) -> Result<SchemaState, sqlx::migrate::MigrateError> {
    use sqlx::migrate::{Migrate as _, MigrateError};
    let mut conn = pool.acquire().await?;
    for (migrator, table) in [
        (&BUS_MIGRATIONS, "_bus_migrations"),
        (service_migrations, "_migrations"),
    ] {
        let table = format!("{schema}.{table}");
        let applied = match conn.dirty_version(&table).await {
            Ok(Some(version)) => return Err(MigrateError::Dirty(version)),
            Ok(None) => conn.list_applied_migrations(&table).await,
            Err(err) => Err(err),
        };
        let applied = match applied {
            Ok(applied) => applied,
            Err(MigrateError::Execute(sqlx::Error::Database(db)))
                if matches!(db.code().as_deref(), Some("42P01" | "3F000" | "42501")) =>
            {
                // Undefined table or schema, or no privilege yet: `amba migrate` has not run
                // here (or this role is not the schema's service).
                return Ok(SchemaState::Behind(format!("{table}: {}", db.message())));
            }
            Err(err) => return Err(err),
        };
        let known: std::collections::HashMap<i64, &[u8]> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| (m.version, m.checksum.as_ref()))
            .collect();
        for migration in &applied {
            match known.get(&migration.version) {
                None => return Err(MigrateError::VersionMissing(migration.version)),
                Some(checksum) if *checksum != migration.checksum.as_ref() => {
                    return Err(MigrateError::VersionMismatch(migration.version));
                }
                Some(_) => {}
            }
        }
        let applied: std::collections::HashSet<i64> = applied.iter().map(|m| m.version).collect();
        if let Some(pending) = migrator
            .iter()
            .find(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        {
            return Ok(SchemaState::Behind(format!(
                "{table}: migration {} ({}) is not applied",
                pending.version, pending.description
            )));
        }
    }
    Ok(SchemaState::Current)
}
