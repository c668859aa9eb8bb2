//! `amba orgs`: organizations and the operator's per-org live-payout switch.

use amba::Settings;
use anyhow::Context;

/// Every org's name, from enrollment's identity tables.
pub async fn names(settings: &Settings) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let pool = amba_bus::store::connect(settings.database_url.expose(), amba_enrollment::SCHEMA, 1).await?;
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT org_id, name FROM orgs ORDER BY org_id")
        .fetch_all(&pool)
        .await
        .context("reading organizations (has `amba migrate` run?)")?;
    pool.close().await;
    Ok(rows.into_iter().collect())
}

pub fn caps_text(settings: &amba_payout::store::OrgPayouts) -> String {
    let cap = |c: Option<i64>| c.map_or_else(|| "none".to_owned(), |c| c.to_string());
    format!(
        "; caps per run {}, per day {}",
        cap(settings.cap_per_run_minor),
        cap(settings.cap_per_day_minor)
    )
}

/// `amba orgs list`: one line per organization.
pub async fn list(settings: &Settings) -> anyhow::Result<()> {
    let names = names(settings).await?;
    let ids: Vec<String> = names.keys().cloned().collect();
    let views = amba_payout::org_payouts(settings.database_url.expose(), &ids).await?;
    println!("{:<30} {:<24} {:<9} {:<7} changed", "org", "name", "payouts", "funded");
    for view in views {
        let (state, changed) = match &view.settings {
            Some(s) => (
                if s.enabled { "enabled" } else { "disabled" },
                format!("by {} at {}{}", s.changed_by, s.changed_at.to_rfc3339(), caps_text(s)),
            ),
            None => ("off", String::new()),
        };
        println!(
            "{:<30} {:<24} {:<9} {:<7} {changed}",
            view.org_id,
            names.get(&view.org_id).map(String::as_str).unwrap_or_default(),
            state,
            if view.funded { "yes" } else { "no" },
        );
    }
    Ok(())
}

/// `amba orgs payouts enable|disable`: an org's live-payout switch and caps, with who changed it.
pub async fn set_payouts(
    settings: &Settings,
    org_id: &str,
    enabled: bool,
    caps: (Option<i64>, Option<i64>),
    by: Option<String>,
) -> anyhow::Result<()> {
    let names = names(settings).await?;
    anyhow::ensure!(names.contains_key(org_id), "no organization {org_id}");
    let by = by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    let done = amba_payout::set_org_payouts(settings.database_url.expose(), org_id, enabled, caps, &by).await?;
    println!(
        "live payouts of {org_id} ({}) {} by {} at {}{}",
        names.get(org_id).map(String::as_str).unwrap_or_default(),
        if done.enabled { "enabled" } else { "disabled" },
        done.changed_by,
        done.changed_at.to_rfc3339(),
        caps_text(&done)
    );
    Ok(())
}
