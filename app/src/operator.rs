//! The operator's commands of `amba` (`migrate`, `ledger verify`, `dead-letters`, `outbox`,
//! `streams delete`, `payouts reconcile`, `tick`): each does one job and exits, printing what it
//! did; a problem found is a non-zero exit.

use amba::{ServiceName, Settings, system};

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let _telemetry = amba_telemetry::init("amba-migrate", None, settings.log_json)?;
    // JetStream first: a service that finds its schema migrated finds its consumers too.
    system::declare_jetstream(settings).await?;
    println!("JetStream streams and consumers declared");
    system::migrate_all(settings).await?;
    println!("migrations applied");
    Ok(())
}

pub async fn ledger_verify(settings: &Settings) -> anyhow::Result<()> {
    let report = amba_commission::verify_database(settings.database_url.expose()).await?;
    for problem in &report.problems {
        eprintln!("ledger: {problem}");
    }
    println!(
        "ledger: {} postings, {} entries, {} accounts checked; {} problem(s)",
        report.journals,
        report.entries,
        report.accounts,
        report.problems.len()
    );
    anyhow::ensure!(report.is_ok(), "the ledger does not verify");
    Ok(())
}

pub async fn streams_delete(settings: &Settings, confirmed: String) -> anyhow::Result<()> {
    anyhow::ensure!(
        confirmed == settings.namespace.as_str(),
        "--confirm {confirmed:?} does not name AMBA_NAMESPACE {:?}; nothing was deleted",
        settings.namespace.as_str()
    );
    let nats = system::connect_nats(settings, "amba-streams").await?;
    let js = async_nats::jetstream::new(nats);
    amba_bus::streams::delete_event_streams(&js, &settings.namespace)
        .await
        .map_err(|e| anyhow::anyhow!("deleting streams: {e}"))?;
    println!("event streams of namespace {confirmed} deleted");
    Ok(())
}

pub async fn dead_letters_list(settings: &Settings, consumer: Option<String>) -> anyhow::Result<()> {
    let consumer = consumer.as_deref();
    let mut count = 0;
    for (schema, pool) in service_stores(settings).await? {
        for letter in amba_bus::dead_letters::list(&pool, consumer).await? {
            count += 1;
            println!(
                "{schema}\t{}\t{}\t{}\t{} deliveries\t{}\t{}",
                letter.consumer,
                letter.event_id,
                letter.subject,
                letter.deliveries,
                letter.recorded_at.to_rfc3339(),
                letter.error
            );
        }
        pool.close().await;
    }
    eprintln!("{count} dead letter(s) waiting");
    Ok(())
}

pub async fn outbox_status(settings: &Settings) -> anyhow::Result<()> {
    let mut waiting = 0;
    for (_, pool) in service_stores(settings).await? {
        let status = amba_bus::outbox::status(&pool).await?;
        waiting += status.pending;
        println!(
            "{}\t{} pending\toldest {}\t{} rejected",
            status.schema,
            status.pending,
            status
                .oldest_age_seconds
                .map(|s| format!("{s:.1}s ago"))
                .unwrap_or_else(|| "-".to_owned()),
            status.rejected
        );
        pool.close().await;
    }
    eprintln!("{waiting} event(s) waiting to be published");
    Ok(())
}

pub async fn dead_letters_replay(
    settings: &Settings,
    consumer: String,
    event_id: Option<String>,
) -> anyhow::Result<()> {
    let nats = system::connect_nats(settings, "amba-dead-letters").await?;
    let js = async_nats::jetstream::new(nats.clone());
    let mut replayed = Vec::new();
    for (_, pool) in service_stores(settings).await? {
        replayed.extend(amba_bus::dead_letters::replay(&pool, &js, &consumer, event_id.as_deref()).await?);
        pool.close().await;
    }
    nats.flush().await?;
    for event_id in &replayed {
        println!("replayed {event_id}");
    }
    anyhow::ensure!(
        !replayed.is_empty(),
        "no dead letter of consumer {consumer}{} is waiting",
        event_id.map(|id| format!(" with event id {id}")).unwrap_or_default()
    );
    Ok(())
}

pub async fn payouts_reconcile(settings: &Settings, program_id: String, repair: bool) -> anyhow::Result<()> {
    let nats = system::connect_nats(settings, "amba-reconcile").await?;
    let bus = amba_bus::Bus::new(nats, settings.namespace.clone());
    let config = system::payout_config(settings);
    let report = amba_payout::reconcile(settings.database_url.expose(), &bus, &config, &program_id, repair).await?;
    for line in &report.repaired {
        println!("repaired: {line}");
    }
    for problem in &report.problems {
        eprintln!("difference: {problem}");
    }
    println!(
        "payouts of {program_id}: {} item(s) compared with Stripe; {} difference(s), {} repaired",
        report.items,
        report.problems.len(),
        report.repaired.len()
    );
    anyhow::ensure!(report.problems.is_empty(), "Stripe and the ledger differ");
    Ok(())
}

pub async fn tick(settings: &Settings) -> anyhow::Result<()> {
    let nats = system::connect_nats(settings, "amba-tick").await?;
    let js = async_nats::jetstream::new(nats);
    // Only the stream it publishes to, and only if missing or different (its NATS user
    // may only look it up).
    amba_bus::streams::ensure_streams(&js, &settings.namespace, &["edge"], settings.stream_replicas)
        .await
        .map_err(|e| anyhow::anyhow!("declaring the edge stream: {e}"))?;
    let now = chrono::Utc::now();
    let new = amba_payout::publish_tick(&js, &settings.namespace, now)
        .await
        .map_err(|e| anyhow::anyhow!("publishing the tick: {e}"))?;
    if new {
        println!(
            "settlement tick {} published: the payout service now creates the run of every scheduled \
             program that is due this period, has no run for it yet, and whose owner is enabled and funded \
             (amba_affiliate_payouts_list shows them)",
            now.to_rfc3339()
        );
    } else {
        println!(
            "settlement tick {} was already published (nothing new)",
            now.to_rfc3339()
        );
    }
    Ok(())
}

/// A connection to each service's schema (each holds its consumers' dead letters).
async fn service_stores(settings: &Settings) -> anyhow::Result<Vec<(&'static str, sqlx::PgPool)>> {
    let mut stores = Vec::new();
    for service in ServiceName::ALL.into_iter().filter(|s| *s != ServiceName::Edge) {
        let schema = service.as_str();
        stores.push((
            schema,
            amba_bus::store::connect(settings.database_url.expose(), schema, 1).await?,
        ));
    }
    Ok(stores)
}
