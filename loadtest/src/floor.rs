//! The raw floor: the same rows inserted by plain batched `INSERT ... SELECT unnest(...)` on one
//! connection into a table shaped like `attribution.conversions` (same columns, same unique
//! index), in the same database, in the same run.

use sqlx::Connection;
use std::time::Instant;

pub struct Floor {
    pub rows: u64,
    pub rows_per_second: f64,
}

pub async fn measure(database_url: &str, rows: u64) -> anyhow::Result<Floor> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    sqlx::query("DROP TABLE IF EXISTS public.loadtest_floor")
        .execute(&mut conn)
        .await?;
    sqlx::query("CREATE TABLE public.loadtest_floor (LIKE attribution.conversions INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)")
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    let mut done = 0u64;
    while done < rows {
        let n = (rows - done).min(1_000);
        let ids: Vec<String> = (done..done + n).map(|i| format!("cnv_{i:032x}")).collect();
        let text = |v: &str| vec![v.to_owned(); n as usize];
        let externals: Vec<String> = (done..done + n).map(|i| format!("floor-{i}")).collect();
        let amounts: Vec<i64> = (done..done + n).map(|i| 1_000 + (i % 9_000) as i64).collect();
        let now = vec![chrono_now(); n as usize];
        sqlx::query(
            "INSERT INTO public.loadtest_floor (conversion_id, program_id, project_id, external_id, amount_minor, currency, status, \
             attribution, enrollment_id, affiliate_org_id, code, occurred_at, recorded_at, decided_at, commission_minor, \
             commission_version, fingerprint) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[], \
             $9::text[], $10::text[], $11::text[], $12::timestamptz[], $12::timestamptz[], $12::timestamptz[], $5::bigint[], \
             $13::int[], $4::text[])",
        )
        .bind(&ids)
        .bind(text("prg_0000000000000000000000000000load"))
        .bind(text("floor"))
        .bind(&externals)
        .bind(&amounts)
        .bind(text("USD"))
        .bind(text("approved"))
        .bind(text("code"))
        .bind(text("enr_0000000000000000000000000000load"))
        .bind(text("org_0000000000000000000000000000load"))
        .bind(text("abcdefghjkmn"))
        .bind(&now)
        .bind(vec![1i32; n as usize])
        .execute(&mut conn)
        .await?;
        done += n;
    }
    let elapsed = started.elapsed();
    sqlx::query("DROP TABLE public.loadtest_floor")
        .execute(&mut conn)
        .await?;
    Ok(Floor {
        rows: done,
        rows_per_second: done as f64 / elapsed.as_secs_f64().max(1e-9),
    })
}

fn chrono_now() -> sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc> {
    sqlx::types::chrono::Utc::now()
}
