//! One PostgreSQL role per service (`amba migrate`): `amba_<service>` may use its own schema's
//! tables and sequences and nothing else, so a service's credentials are no key to another
//! service's data (notification cannot write the commission ledger).
//!
//! Roles belong to the server, grants to one database: a role is created once (if missing, and
//! tolerating another `amba migrate` creating it at the same moment, e.g. for another database
//! on the same server), and this database's grants are set every run, after the migrations, so
//! tables added by a release are covered. The role is made a login role only when a password is
//! given (`AMBA_DB_PASSWORD_<SERVICE>`); in production CloudNativePG creates the roles with their
//! passwords (`spec.managed.roles`) and `amba migrate` only grants.
//!
//! A service on its own role does not migrate its schema at start: it cannot (the owner role
//! owns every schema), and waits until `amba migrate` has run (`amba_bus::service::open_store`).

use crate::ServiceName;
use amba_core::secret::Secret;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    #[error("database roles: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "database role {role} does not exist and {user} may not create roles: create it (CloudNativePG: \
         spec.managed.roles of the Cluster), or run `amba migrate` as a role with CREATEROLE"
    )]
    Missing { role: String, user: String },
}

/// The services that own a schema (and so have a role): every one but the stateless edge.
pub fn services() -> impl Iterator<Item = &'static str> {
    ServiceName::ALL
        .into_iter()
        .filter(|s| *s != ServiceName::Edge)
        .map(ServiceName::as_str)
}

/// `amba_<service>`: the service's own login role; its schema is named like the service.
pub fn role_name(service: &str) -> String {
    format!("amba_{service}")
}

/// Makes sure every service's role exists (with a login when `passwords` names one), then grants
/// each its own schema in this database and takes everything else away. Run by the schemas'
/// owner after the migrations.
pub async fn ensure(database_url: &str, passwords: &[(&str, Secret)]) -> Result<(), RolesError> {
    let mut conn = PgConnection::connect(database_url).await?;
    let (user, may_create): (String, bool) =
        sqlx::query_as("SELECT rolname::text, rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await?;
    for service in services() {
        let role = role_name(service);
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
            .bind(&role)
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            if !may_create {
                return Err(RolesError::Missing { role, user });
            }
            // Another `amba migrate` (another database on this server) may create it between the
            // check and the CREATE: that is success too.
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DO $$ BEGIN \
                   IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN \
                     CREATE ROLE \"{role}\" NOLOGIN; \
                   END IF; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
                 END $$"
            )))
            .execute(&mut conn)
            .await?;
            tracing::info!(%role, "database role created");
        }
        if let Some((_, password)) = passwords.iter().find(|(s, _)| *s == service) {
            set_login(&mut conn, &role, password).await?;
        }
    }
    let mut tx = conn.begin().await?;
    // Two `amba migrate` on one database would race on the same ACLs ("tuple concurrently
    // updated"): one at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('amba migrate: grants'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(grants_sql())).execute(&mut *tx).await?;
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

/// `ALTER ROLE … LOGIN PASSWORD …`, quoted by the server (`format` with `%I` and `%L`). Runs
/// again when another `amba migrate` changed the same role at the same moment: PostgreSQL
/// refuses the second of two concurrent changes of one role ("tuple concurrently updated").
/// The password travels in the statement (a server that logs DDL logs it): meant for the dev
/// overlay and tests; production roles get theirs from CloudNativePG.
async fn set_login(conn: &mut PgConnection, role: &str, password: &Secret) -> Result<(), sqlx::Error> {
    let statement: String =
        sqlx::query_scalar("SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)")
            .bind(role)
            .bind(password.expose())
            .fetch_one(&mut *conn)
            .await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sqlx::raw_sql(AssertSqlSafe(statement.clone()))
            .execute(&mut *conn)
            .await
        {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(db))
                if attempt < 5 && db.code().as_deref() == Some("XX000") && db.message().contains("concurrently") =>
            {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// This database's grants: each role uses its schema (DML on its tables, its sequences, and the
/// same for tables later migrations add), reads but never writes its migrations tables, may
/// connect, and has nothing on the other services' schemas; PUBLIC has nothing on any of them.
fn grants_sql() -> String {
    let mut sql = String::new();
    // PostgreSQL before 15 lets everyone create in `public`: not here.
    sql.push_str(
        "DO $$ BEGIN \
           IF EXISTS (SELECT FROM pg_namespace n, aclexplode(n.nspacl) a \
                      WHERE n.nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE' \
                        AND pg_has_role(n.nspowner, 'USAGE')) THEN \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
           END IF; \
         END $$;\n",
    );
    for schema in services() {
        let role = role_name(schema);
        sql.push_str(&format!(
            "REVOKE ALL ON SCHEMA \"{schema}\" FROM PUBLIC;\n\
             DO $$ BEGIN \
               IF NOT has_database_privilege('{role}', current_database(), 'CONNECT') THEN \
                 EXECUTE format('GRANT CONNECT ON DATABASE %I TO \"{role}\"', current_database()); \
               END IF; \
             END $$;\n\
             GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\";\n\
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\";\n\
             REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON \"{schema}\"._migrations, \"{schema}\"._bus_migrations \
               FROM \"{role}\";\n\
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO \"{role}\";\n\
             ALTER DEFAULT PRIVILEGES IN SCHEMA \"{schema}\" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO \"{role}\";\n\
             ALTER DEFAULT PRIVILEGES IN SCHEMA \"{schema}\" GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO \"{role}\";\n"
        ));
        for other in services().filter(|other| *other != schema) {
            sql.push_str(&format!("REVOKE ALL ON SCHEMA \"{other}\" FROM \"{role}\";\n"));
        }
    }
    sql
}
