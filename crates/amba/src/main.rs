//! `amba`: one binary for every role (and the container image's entry point).
//!
//! ```text
//! amba dev                 every service and the edge in one process (starts local PostgreSQL/NATS if needed)
//! amba serve <service>     one service: enrollment | attribution | commission | payout | notification | edge
//! amba migrate             apply every service's migrations and exit
//! amba infra up            start local PostgreSQL and NATS when nothing answers, then exit
//! amba ledger verify       rebuild commission balances from the entries; non-zero exit on a difference
//! amba streams delete --confirm <namespace>
//!                          delete the namespace's JetStream event streams (load and test namespaces)
//! ```

use amba::{ServiceName, Settings, local, system};
use anyhow::Context;
use std::process::ExitCode;

const USAGE: &str = "usage: amba <command>

commands:
  dev                  run every service and the edge in one process (starts local PostgreSQL and
                       NATS when none answers), apply migrations, print the MCP URL and config
  serve <service>      run one service: enrollment, attribution, commission, payout, notification, edge
  migrate              apply every service's database migrations and exit
  payouts reconcile <program_id> [--repair]
                       compare Stripe's transfers with the program's payout items and the ledger;
                       --repair posts in-flight items whose transfer exists; non-zero exit on a difference
  tick                 publish today's settlement tick: programs with a weekly or monthly payout
                       schedule due this period are paid (once per period, however many ticks)
  infra up             start local PostgreSQL and NATS (JetStream) when none answers, then exit
  infra down           stop the PostgreSQL and NATS that `dev` or `infra up` started (in AMBA_DATA_DIR)
  ledger verify        rebuild every commission balance from the ledger entries and check
                       conservation; exits non-zero on any difference
  dead-letters list [--consumer <name>]
                       the messages consumers gave up on and not replayed yet, every service
  dead-letters replay <consumer> [<event_id>]
                       publish a consumer's dead letters (or one) again; each is applied once
  outbox status        each service's events not yet published, the oldest one's age, and the
                       ones set aside as unpublishable
  streams delete --confirm <namespace>
                       delete AMBA_NAMESPACE's JetStream event streams and the events in them;
                       for load-test and scratch namespaces (services must be stopped first)
  help                 this text

configuration comes from the environment; see README.md (AMBA_DATABASE_URL, AMBA_NATS_URL, ...)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if matches!(args.as_slice(), [] | ["help" | "-h" | "--help"]) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("amba: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("amba: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(&args, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("amba: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(args: &[&str], settings: Settings) -> anyhow::Result<()> {
    match args {
        ["dev"] => dev(settings).await,
        ["serve", service] => {
            let service: ServiceName = service.parse().map_err(anyhow::Error::msg)?;
            serve(settings, &[service], service.as_str()).await
        }
        ["migrate"] => {
            let _telemetry = amba_telemetry::init("amba-migrate", None, settings.log_json)?;
            system::migrate_all(&settings).await?;
            println!("migrations applied");
            Ok(())
        }
        ["ledger", "verify"] => {
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
        ["streams", "delete", "--confirm", confirmed] => {
            anyhow::ensure!(
                *confirmed == settings.namespace.as_str(),
                "--confirm {confirmed:?} does not name AMBA_NAMESPACE {:?}; nothing was deleted",
                settings.namespace.as_str()
            );
            let nats = system::connect_nats(&settings, "amba-streams").await?;
            let js = async_nats::jetstream::new(nats);
            amba_bus::streams::delete_event_streams(&js, &settings.namespace)
                .await
                .map_err(|e| anyhow::anyhow!("deleting streams: {e}"))?;
            println!("event streams of namespace {confirmed} deleted");
            Ok(())
        }
        ["dead-letters", "list", rest @ ..] => {
            let consumer = match rest {
                [] => None,
                ["--consumer", name] => Some(*name),
                _ => anyhow::bail!("usage: amba dead-letters list [--consumer <name>]"),
            };
            let mut count = 0;
            for (schema, pool) in service_stores(&settings).await? {
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
        ["outbox", "status"] => {
            let mut waiting = 0;
            for (_, pool) in service_stores(&settings).await? {
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
        ["dead-letters", "replay", consumer, rest @ ..] if rest.len() <= 1 => {
            let nats = system::connect_nats(&settings, "amba-dead-letters").await?;
            let js = async_nats::jetstream::new(nats.clone());
            let mut replayed = Vec::new();
            for (_, pool) in service_stores(&settings).await? {
                replayed.extend(amba_bus::dead_letters::replay(&pool, &js, consumer, rest.first().copied()).await?);
                pool.close().await;
            }
            nats.flush().await?;
            for event_id in &replayed {
                println!("replayed {event_id}");
            }
            anyhow::ensure!(
                !replayed.is_empty(),
                "no dead letter of consumer {consumer}{} is waiting",
                rest.first()
                    .map(|id| format!(" with event id {id}"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        ["payouts", "reconcile", program_id, rest @ ..] if rest.is_empty() || rest == ["--repair"] => {
            let repair = rest == ["--repair"];
            let nats = system::connect_nats(&settings, "amba-reconcile").await?;
            let bus = amba_bus::Bus::new(nats, settings.namespace.clone());
            let config = system::payout_config(&settings);
            let report =
                amba_payout::reconcile(settings.database_url.expose(), &bus, &config, program_id, repair).await?;
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
        ["tick"] => {
            let nats = system::connect_nats(&settings, "amba-tick").await?;
            let js = async_nats::jetstream::new(nats);
            amba_bus::streams::ensure_event_streams(&js, &settings.namespace, settings.stream_replicas)
                .await
                .map_err(|e| anyhow::anyhow!("declaring streams: {e}"))?;
            let now = chrono::Utc::now();
            let new = amba_payout::publish_tick(&js, &settings.namespace, now)
                .await
                .map_err(|e| anyhow::anyhow!("publishing the tick: {e}"))?;
            println!(
                "settlement tick for {} {}",
                now.format("%Y-%m-%d"),
                if new {
                    "published"
                } else {
                    "was already published today (nothing new)"
                }
            );
            Ok(())
        }
        ["infra", "up"] => {
            infra_up(&settings).await?;
            println!("PostgreSQL and NATS are answering (`amba infra down` stops the ones amba started)");
            Ok(())
        }
        ["infra", "down"] => {
            let stopped = tokio::task::spawn_blocking(local::stop_started).await??;
            if stopped.is_empty() {
                println!(
                    "nothing that amba started is running (in {})",
                    local::data_dir().display()
                );
            } else {
                println!("stopped: {}", stopped.join(", "));
            }
            Ok(())
        }
        _ => anyhow::bail!("unknown command {:?}\n\n{USAGE}", args.join(" ")),
    }
}

async fn infra_up(settings: &Settings) -> anyhow::Result<()> {
    let database_url = settings.database_url.expose().to_owned();
    let nats_url = settings.nats_url.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        local::ensure_postgres(&database_url).context("PostgreSQL")?;
        local::ensure_nats(&nats_url).context("NATS")?;
        Ok(())
    })
    .await??;
    local::ensure_database(settings.database_url.expose())
        .await
        .context("PostgreSQL")?;
    Ok(())
}

async fn dev(mut settings: Settings) -> anyhow::Result<()> {
    infra_up(&settings).await?;
    // Without a Stripe key, a fake Stripe in this process: the whole money path on a laptop.
    let _fake_stripe = match settings.stripe_secret_key {
        Some(_) => None,
        None => Some(system::local_stripe(&mut settings).await?),
    };
    let (running, _telemetry) = start(&settings, &ServiceName::ALL, "amba-dev").await?;
    // The settlement clock: a tick a minute (one per day counts; JetStream dedupes the rest).
    let clock = running.shutdown_token();
    let (clock_settings, ns) = (settings.clone(), settings.namespace.clone());
    tokio::spawn(async move {
        let Ok(nats) = system::connect_nats(&clock_settings, "amba-dev-clock").await else {
            return;
        };
        let js = async_nats::jetstream::new(nats);
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = clock.cancelled() => break,
                _ = every.tick() => {
                    if let Err(err) = amba_payout::publish_tick(&js, &ns, chrono::Utc::now()).await {
                        tracing::warn!(error = %err, "settlement tick not published");
                    }
                }
            }
        }
    });
    if settings.smtp_url.is_none() {
        println!(
            "\nNo AMBA_SMTP_URL: e-mails are written as .eml files to {}",
            system::mail_dir(&settings).display()
        );
    }
    if _fake_stripe.is_some() {
        println!(
            "\nNo AMBA_STRIPE_SECRET_KEY: payouts use a local fake Stripe (onboarding links open a local page \
             that completes onboarding). Real transfers also need ORG_PAYOUTS_LIVE=true."
        );
    }
    let mcp_url = format!("{}/mcp", settings.public_url);
    println!(
        "\nAmba Affiliate is running.\n\n  MCP endpoint: {mcp_url}\n  HTTP:         {}\n  gRPC:         {}\n\n\
         Get a token with the public signup tool, then paste the returned mcp_config into your MCP client:\n\n\
         {{\n  \"mcpServers\": {{\n    \"amba-affiliate\": {{\n      \"type\": \"http\",\n      \"url\": \"{mcp_url}\",\n      \
         \"headers\": {{ \"Authorization\": \"Bearer <token from amba_affiliate_signup>\" }}\n    }}\n  }}\n}}\n\nCtrl-C stops it. A PostgreSQL or NATS it started keeps running for the next start; \
         `amba infra down` stops them.\n",
        running.http_addr().map(|a| a.to_string()).unwrap_or_default(),
        running.grpc_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    run_until_signal(running).await
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

async fn serve(settings: Settings, services: &[ServiceName], name: &str) -> anyhow::Result<()> {
    let (running, _telemetry) = start(&settings, services, &format!("amba-{name}")).await?;
    run_until_signal(running).await
}

/// Starts services with telemetry; dropping the returned guard flushes spans.
async fn start(
    settings: &Settings,
    services: &[ServiceName],
    telemetry_name: &str,
) -> anyhow::Result<(system::Running, amba_telemetry::TelemetryGuard)> {
    let telemetry = amba_telemetry::init(telemetry_name, settings.otlp_endpoint.as_deref(), settings.log_json)?;
    Ok((system::start(settings, services).await?, telemetry))
}

/// SIGTERM or Ctrl-C: stop taking work, finish in-flight requests, flush outboxes, exit.
async fn run_until_signal(running: system::Running) -> anyhow::Result<()> {
    let shutdown = running.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    running
        .wait()
        .await
        .map_err(|failures| anyhow::anyhow!("stopped because a service failed: {failures}"))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
