//! `amba`: one binary for every role (and the container image's entry point).
//!
//! ```text
//! amba dev                 every service and the edge in one process (starts local PostgreSQL/NATS if needed)
//! amba serve <service>     one service: enrollment | attribution | commission | payout | notification | edge
//! amba migrate             declare JetStream streams and consumers, apply every service's migrations,
//!                          grant each service's role its schema, exit
//! amba infra up            start local PostgreSQL and NATS when nothing answers, then exit
//! amba ledger verify       rebuild commission balances from the entries; non-zero exit on a difference
//! amba streams delete --confirm <namespace>
//!                          delete the namespace's JetStream event streams (load and test namespaces)
//! ```
//!
//! `amba --help` and `amba <command> --help` describe every command. Exit status: 0 done, 1 the
//! command failed, 2 a bad command line or configuration.

mod operator;
mod orgs;

use amba::{ServiceName, Settings, local, system};
use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use std::process::ExitCode;

/// Large batch buffers are grown and freed all the time under load: glibc malloc spent a quarter
/// of the process's CPU consolidating and splitting them and kept the memory after a load run;
/// mimalloc gives it back (docs/performance.md, issue 27).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Amba Affiliate: one binary for every role.
#[derive(Debug, Parser)]
#[command(
    name = "amba",
    version,
    after_help = "Configuration comes from the environment and the KEY=VALUE file named by AMBA_CONFIG_FILE \
                  (the environment wins; a flag wins over both); see README.md for every variable.\n\
                  Exit status: 0 done, 1 the command failed, 2 a bad command line or configuration."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOptions,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The most used settings as flags; each also reads its variable, and the rest of the
/// configuration comes from the environment only.
#[derive(Debug, Args)]
#[command(next_help_heading = "Configuration (each flag also reads its variable)")]
struct GlobalOptions {
    /// PostgreSQL URL [default: postgres://postgres@127.0.0.1:5432/amba]; prefer the variable, a
    /// flag's password shows in the process list
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "AMBA_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// NATS server URLs, comma-separated [default: nats://127.0.0.1:4222]; may hold credentials
    #[arg(
        long,
        global = true,
        value_name = "URLS",
        env = "AMBA_NATS_URL",
        hide_env_values = true
    )]
    nats_url: Option<String>,
    /// Prefix of every stream, consumer and subject [default: amba]
    #[arg(long, global = true, value_name = "NAME", env = "AMBA_NAMESPACE")]
    namespace: Option<String>,
    /// Where to serve /livez, /readyz and Prometheus /metrics [default: nowhere]
    #[arg(long, global = true, value_name = "ADDR", env = "AMBA_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// A KEY=VALUE file of further settings (the environment wins over it)
    #[arg(long, global = true, value_name = "PATH", env = "AMBA_CONFIG_FILE")]
    config_file: Option<std::path::PathBuf>,
}

impl GlobalOptions {
    /// (clap id, flag, variable, value) of every setting given by flag or variable.
    fn settings(&self) -> [(&'static str, &'static str, &'static str, Option<&String>); 4] {
        [
            (
                "database_url",
                "--database-url",
                "AMBA_DATABASE_URL",
                self.database_url.as_ref(),
            ),
            ("nats_url", "--nats-url", "AMBA_NATS_URL", self.nats_url.as_ref()),
            ("namespace", "--namespace", "AMBA_NAMESPACE", self.namespace.as_ref()),
            (
                "metrics_addr",
                "--metrics-addr",
                "AMBA_METRICS_ADDR",
                self.metrics_addr.as_ref(),
            ),
        ]
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service and the edge in one process
    ///
    /// Starts local PostgreSQL and NATS when none answers, applies migrations, prints the MCP URL
    /// and config. Without AMBA_STRIPE_SECRET_KEY payouts use a local fake Stripe; without
    /// AMBA_SMTP_URL e-mails are written as .eml files.
    Dev,
    /// Run one service
    Serve {
        /// The service to run
        #[arg(value_parser = service_parser())]
        service: ServiceName,
    },
    /// Apply every service's database migrations, grant each service's role its own schema, exit
    ///
    /// Run with the schemas' owner's database URL. Each service's role amba_<service> is created
    /// when missing (a login role with AMBA_DB_PASSWORD_<SERVICE> when set) and may then use its
    /// own schema only; a service started on its role does not migrate, it waits for this.
    /// First declares the JetStream streams and every service's durable consumers (with
    /// AMBA_NATS_CREDS, as a NATS user that may: deploy/nats/accounts.conf's `migrate`).
    Migrate,
    /// Compare Stripe's transfers with a program's payout items (`payouts reconcile`)
    #[command(subcommand)]
    Payouts(PayoutsCommand),
    /// Organizations and their live payouts (`orgs list`, `orgs payouts enable|disable`)
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Publish a settlement tick
    ///
    /// Every tick settles each program with a weekly or monthly payout schedule that is due this
    /// period and not settled yet (once per program and period, however many ticks).
    Tick,
    /// Start or stop local PostgreSQL and NATS (`infra up`, `infra down`)
    #[command(subcommand)]
    Infra(InfraCommand),
    /// Check the commission ledger against its entries (`ledger verify`)
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// List or replay the messages consumers gave up on (`dead-letters list`, `dead-letters replay`)
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Each service's events not yet published (`outbox status`)
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Delete a load-test or scratch namespace's event streams (`streams delete`)
    #[command(subcommand)]
    Streams(StreamsCommand),
}

#[derive(Debug, Subcommand)]
enum PayoutsCommand {
    /// Compare Stripe's transfers with the program's payout items and the ledger
    ///
    /// Exits non-zero on a difference.
    Reconcile {
        /// The program whose payouts to compare
        program_id: String,
        /// Post in-flight items whose transfer exists at Stripe
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Debug, Subcommand)]
enum OrgsCommand {
    /// Every organization: whether live payouts are enabled (by whom, when), its caps, and
    /// whether a payment method is saved for its payout runs
    List,
    /// Enable or disable live payouts of one organization (on top of ORG_PAYOUTS_LIVE)
    #[command(subcommand)]
    Payouts(OrgPayoutsCommand),
}

#[derive(Debug, Subcommand)]
enum OrgPayoutsCommand {
    /// Let the organization's payout runs charge it and transfer to its affiliates
    Enable {
        /// The organization (`org_…`)
        org_id: String,
        /// Refuse a run that would charge more than this (minor units of the run's currency)
        #[arg(long, value_name = "MINOR")]
        cap_per_run: Option<i64>,
        /// Refuse a run that would take the day's charges (UTC) above this (minor units)
        #[arg(long, value_name = "MINOR")]
        cap_per_day: Option<i64>,
        /// Who decided, recorded with the change [default: $USER]
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
    /// Stop the organization's live payout runs (they answer PAYOUTS_NOT_ENABLED)
    Disable {
        /// The organization (`org_…`)
        org_id: String,
        /// Who decided, recorded with the change [default: $USER]
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum InfraCommand {
    /// Start local PostgreSQL and NATS (JetStream) when none answers, then exit
    Up,
    /// Stop the PostgreSQL and NATS that `dev` or `infra up` started (in AMBA_DATA_DIR)
    Down,
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Rebuild every commission balance from the ledger entries and check conservation
    ///
    /// Exits non-zero on any difference.
    Verify,
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// The messages consumers gave up on and not replayed yet, every service
    List {
        /// Only this consumer's dead letters
        #[arg(long, value_name = "NAME")]
        consumer: Option<String>,
    },
    /// Publish a consumer's dead letters (or one) again; each is applied once
    Replay {
        /// The consumer whose dead letters to publish again
        consumer: String,
        /// Only this event (default: every dead letter of the consumer)
        event_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Each service's events not yet published, the oldest one's age, and the ones set aside as
    /// unpublishable
    Status,
}

#[derive(Debug, Subcommand)]
enum StreamsCommand {
    /// Delete AMBA_NAMESPACE's JetStream event streams and the events in them
    ///
    /// For load-test and scratch namespaces (services must be stopped first).
    Delete {
        /// The namespace again (must equal AMBA_NAMESPACE), or nothing is deleted
        #[arg(long, value_name = "NAMESPACE")]
        confirm: String,
    },
}

/// The service names `amba::ServiceName` knows, parsed by its `FromStr`.
fn service_parser() -> impl clap::builder::TypedValueParser<Value = ServiceName> {
    PossibleValuesParser::new(ServiceName::ALL.map(ServiceName::as_str)).try_map(|name| name.parse::<ServiceName>())
}

fn main() -> ExitCode {
    // Both of rustls's crypto providers are linked (lettre uses aws-lc-rs, async-nats ring), so
    // rustls cannot pick one by itself and TLS to NATS would panic: choose one for the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut definition = Cli::command();
    let matches = definition.clone().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.format(&mut definition).exit(),
    };
    let Some(command) = cli.command else {
        // `amba` alone: the overview, as `amba --help` prints it.
        let _ = definition.print_help();
        return ExitCode::SUCCESS;
    };
    let settings = match settings(&cli.global, &matches) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("amba: {message}");
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
    match runtime.block_on(dispatch(command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("amba: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// [`Settings::from_env_with`] the global flags: the `AMBA_CONFIG_FILE` file, then the
/// environment, then the flags (clap has already read each flag's variable when the flag is
/// absent). A bad value given as a flag is reported under the flag's name.
fn settings(global: &GlobalOptions, matches: &clap::ArgMatches) -> Result<Settings, String> {
    let mut overrides: Vec<(&str, String)> = global
        .settings()
        .into_iter()
        .filter_map(|(_, _, variable, value)| Some((variable, value?.clone())))
        .collect();
    if let Some(path) = &global.config_file {
        overrides.push(("AMBA_CONFIG_FILE", path.to_string_lossy().into_owned()));
    }
    Settings::from_env_with(&overrides).map_err(|err| {
        let from_flag = global.settings().into_iter().find(|(id, _, variable, _)| {
            *variable == err.variable && matches.value_source(id) == Some(ValueSource::CommandLine)
        });
        match from_flag {
            Some((_, flag, variable, _)) => format!("invalid configuration: {flag} ({variable}): {}", err.problem),
            None => err.to_string(),
        }
    })
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Dev => dev(settings).await,
        Command::Serve { service } => serve(settings, &[service], service.as_str()).await,
        Command::Migrate => operator::migrate(&settings).await,
        Command::Ledger(LedgerCommand::Verify) => operator::ledger_verify(&settings).await,
        Command::Streams(StreamsCommand::Delete { confirm: confirmed }) => {
            operator::streams_delete(&settings, confirmed).await
        }
        Command::DeadLetters(DeadLettersCommand::List { consumer }) => {
            operator::dead_letters_list(&settings, consumer).await
        }
        Command::Outbox(OutboxCommand::Status) => operator::outbox_status(&settings).await,
        Command::DeadLetters(DeadLettersCommand::Replay { consumer, event_id }) => {
            operator::dead_letters_replay(&settings, consumer, event_id).await
        }
        Command::Payouts(PayoutsCommand::Reconcile { program_id, repair }) => {
            operator::payouts_reconcile(&settings, program_id, repair).await
        }
        Command::Orgs(OrgsCommand::List) => orgs::list(&settings).await,
        Command::Orgs(OrgsCommand::Payouts(change)) => {
            let (org_id, enabled, caps, by) = match change {
                OrgPayoutsCommand::Enable {
                    org_id,
                    cap_per_run,
                    cap_per_day,
                    by,
                } => (org_id, true, (cap_per_run, cap_per_day), by),
                OrgPayoutsCommand::Disable { org_id, by } => (org_id, false, (None, None), by),
            };
            orgs::set_payouts(&settings, &org_id, enabled, caps, by).await
        }
        Command::Tick => operator::tick(&settings).await,
        Command::Infra(InfraCommand::Up) => {
            infra_up(&settings).await?;
            println!("PostgreSQL and NATS are answering (`amba infra down` stops the ones amba started)");
            Ok(())
        }
        Command::Infra(InfraCommand::Down) => {
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
    // The settlement clock: a tick a minute (each settles what is due and not settled yet).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_takes_exactly_the_service_names() {
        for service in ServiceName::ALL {
            let cli = Cli::try_parse_from(["amba", "serve", service.as_str()]);
            assert!(
                matches!(cli, Ok(Cli { command: Some(Command::Serve { service: s }), .. }) if s == service),
                "{service}"
            );
        }
        assert!(Cli::try_parse_from(["amba", "serve", "nosuch"]).is_err());
    }
}
