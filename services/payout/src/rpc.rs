//! Request/reply endpoints: payout accounts and onboarding (affiliates), the payout quote
//! (affiliates), payout runs and their history (owners).

use crate::domain::plan::{self, Account, Balance, Release};
use crate::domain::schedule;
use crate::domain::status::ItemStatus;
use crate::settle::{Settler, stripe_missing};
use crate::store::{self, ItemRow, RunRow};
use crate::stripe::StripeError;
use amba_bus::rpc::{RpcServer, caller};
use amba_core::id::{PayoutAccountId, PayoutRunId};
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::{commission as ledger, payout as methods};
use amba_proto::wire as pb;
use chrono::Utc;
use sqlx::PgConnection;

#[derive(Clone)]
pub struct Payout {
    pub settler: Settler,
    /// `ORG_PAYOUTS_LIVE`: off ⇒ real runs answer 503 PAYOUTS_NOT_ENABLED.
    pub payouts_live: bool,
}

pub fn server(service: Payout) -> RpcServer {
    amba_bus::routes!(RpcServer::new(crate::SERVICE), service, {
        methods::ACCOUNT_CREATE => account_create,
        methods::ONBOARDING => onboarding,
        methods::QUOTE => quote,
        methods::RUN => run,
        methods::RUNS => runs,
        methods::FUNDING_SETUP => funding_setup,
        methods::ACCOUNT_STATUSES => account_statuses,
    })
}

pub(crate) fn stripe_error(err: StripeError) -> ApiError {
    match err {
        StripeError::Refused { message, .. } => ApiError::invalid(format!("Stripe refused: {message}")),
        StripeError::Unknown(why) => {
            tracing::warn!(%why, "Stripe call failed");
            ApiError::unavailable("Stripe did not answer; retry (the call is idempotent)")
        }
    }
}

fn absolute_url(field: &str, url: &str) -> Result<String, ApiError> {
    let url = url.trim();
    let ok = (url.starts_with("https://") || url.starts_with("http://")) && url.len() > "https://x".len();
    if !ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.len() > 2_048 {
        return Err(ApiError::invalid(format!(
            "{field} must be an absolute http(s) URL such as https://example.com/payouts/done"
        )));
    }
    Ok(url.to_owned())
}

impl Payout {
    fn stripe(&self) -> Result<&crate::stripe::Stripe, ApiError> {
        self.settler.stripe.as_ref().ok_or_else(stripe_missing)
    }

    /// Readiness of a page of orgs' payout accounts in one query (an owner's affiliates list;
    /// the edge passes the org ids of the page enrollment gave it). Needs no Stripe.
    pub async fn account_statuses(
        &self,
        request: pb::AccountStatusesRequest,
    ) -> Result<pb::AccountStatusesReply, ApiError> {
        caller(request.caller)?;
        if request.org_ids.len() > 200 {
            return Err(ApiError::invalid("at most 200 org ids at once"));
        }
        let mut conn = self.settler.pool.acquire().await?;
        let accounts = store::accounts_of_orgs(&mut conn, &request.org_ids).await?;
        Ok(pb::AccountStatusesReply {
            statuses: accounts
                .into_iter()
                .map(|(org, account)| (org, account.to_proto().status))
                .collect(),
        })
    }

    /// One Stripe connected account per affiliate org; calling again returns it.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn account_create(
        &self,
        request: pb::PayoutAccountCreateRequest,
    ) -> Result<pb::PayoutAccountReply, ApiError> {
        let who = caller(request.caller)?;
        let country = match request.country.trim() {
            "" => "US".to_owned(),
            c if c.len() == 2 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => c.to_ascii_uppercase(),
            other => {
                return Err(ApiError::invalid(format!(
                    "country {other:?} is not an ISO 3166-1 alpha-2 code such as US, DE or JP"
                )));
            }
        };
        let stripe = self.stripe()?;
        let mut tx = self.settler.pool.begin().await?;
        let account = store::lock_account(&mut tx, PayoutAccountId::new().as_str(), &who.org_id, &country).await?;
        if account.stripe_account_id.is_some() {
            return Ok(pb::PayoutAccountReply {
                account: Some(account.to_proto()),
                created: false,
            });
        }
        // Keyed by our account id: a retry after a lost answer gets the same Stripe account.
        let created = stripe
            .create_account(
                &account.country,
                &who.org_id,
                &format!("account:{}", account.payout_account_id),
            )
            .await
            .map_err(stripe_error)?;
        let account = store::set_stripe_account(
            &mut tx,
            &account.payout_account_id,
            &created.id,
            created.transfers_active(),
            created.payouts_enabled,
        )
        .await?;
        tx.commit().await?;
        Ok(pb::PayoutAccountReply {
            account: Some(account.to_proto()),
            created: true,
        })
    }

    /// Stripe's hosted onboarding link for the caller's account. The link is a credential: it is
    /// returned, never logged.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn onboarding(&self, request: pb::OnboardingRequest) -> Result<pb::OnboardingReply, ApiError> {
        let who = caller(request.caller)?;
        let return_url = absolute_url("return_url", &request.return_url)?;
        let refresh_url = absolute_url("refresh_url", &request.refresh_url)?;
        let stripe = self.stripe()?;
        let mut conn = self.settler.pool.acquire().await?;
        let account = store::account_of_org(&mut conn, &who.org_id)
            .await?
            .filter(|a| a.stripe_account_id.is_some())
            .ok_or_else(|| {
                ApiError::not_found("payout account (create it first with amba_affiliate_my_payout_create)")
            })?;
        let stripe_account = account.stripe_account_id.clone().unwrap_or_default();
        let key = format!("account_link:{}", amba_core::id::time_ordered_suffix());
        let link = stripe
            .onboarding_link(&stripe_account, &return_url, &refresh_url, &key)
            .await
            .map_err(stripe_error)?;
        Ok(pb::OnboardingReply {
            url: link.url,
            expires_at_micros: link.expires_at.saturating_mul(1_000_000),
            account: Some(account.to_proto()),
        })
    }

    /// What the caller's org would be paid by the next run of each of its programs.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn quote(&self, request: pb::PayoutQuoteRequest) -> Result<pb::PayoutQuoteReply, ApiError> {
        let who = caller(request.caller)?;
        // The ledger answers balances a page at a time; the quote covers every program.
        let mut balances = Vec::new();
        let mut cursor = String::new();
        loop {
            let page: pb::BalanceReply = self
                .settler
                .rpc
                .call(
                    ledger::BALANCE,
                    &pb::BalanceRequest {
                        caller: Some(who.clone()),
                        program_id: request.program_id.trim().to_owned(),
                        cursor,
                        limit: amba_core::cursor::MAX_PAGE,
                    },
                )
                .await?;
            balances.extend(page.balances);
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        let mut conn = self.settler.pool.acquire().await?;
        let account = store::account_of_org(&mut conn, &who.org_id).await?;
        let account_state = account_state(account.as_ref());
        let mut quotes = Vec::new();
        for balance in balances {
            let quote: pb::PayableQuoteReply = self
                .settler
                .rpc
                .call(
                    ledger::PAYABLE_QUOTE,
                    &pb::PayableQuoteRequest {
                        program_id: balance.program_id.clone(),
                        enrollment_id: balance.enrollment_id.clone(),
                    },
                )
                .await?;
            let program = store::program(&mut conn, &balance.program_id).await?;
            let schedule_name = program
                .as_ref()
                .map(|p| p.payout_schedule.clone())
                .unwrap_or_else(|| "manual".into());
            for q in quote.quotes {
                let balance = balance_of(&q);
                let line = plan::plan(
                    std::slice::from_ref(&balance),
                    |_| account_state,
                    quote.payout_threshold_minor,
                    quote.platform_fee_bps,
                )
                .remove(0);
                let outlook = plan::outlook(
                    &line,
                    &balance,
                    &releases_of(&q),
                    quote.payout_threshold_minor,
                    account_state,
                );
                // What the next run would really send: nothing while it is blocked.
                let paid = line.skip.is_none();
                quotes.push(pb::PayoutQuote {
                    program_id: q.program_id.clone(),
                    enrollment_id: q.enrollment_id.clone(),
                    currency: q.currency.clone(),
                    held_minor: q.held_minor,
                    payable_minor: q.payable_minor.max(0),
                    debt_minor: q.debt_minor,
                    gross_minor: if paid { line.gross_minor } else { 0 },
                    fee_minor: if paid { line.fee_minor } else { 0 },
                    net_minor: if paid { line.net_minor } else { 0 },
                    threshold_minor: quote.payout_threshold_minor,
                    payout_schedule: schedule_name.clone(),
                    next_scheduled_at_micros: schedule::next_run(&schedule_name, Utc::now())
                        .map(|t| t.timestamp_micros())
                        .unwrap_or(0),
                    blocked_reason: if paid { String::new() } else { outlook.reason },
                    reason_code: outlook.code.into(),
                    payable_at_micros: micros(outlook.payable_at),
                    next_release_at_micros: micros(outlook.next_release.map(|r| r.at)),
                    next_release_minor: outlook.next_release.map(|r| r.amount_minor).unwrap_or(0),
                    missing_minor: outlook.missing_minor,
                });
            }
        }
        Ok(pb::PayoutQuoteReply {
            quotes,
            account_ready: account_state == Account::Ready,
            payouts_enabled: self.payouts_live,
        })
    }

    /// A payout run of a program (owner). A dry run returns the plan and changes nothing.
    #[tracing::instrument(skip_all, fields(program_id = %request.program_id), err(level = "info"))]
    pub async fn run(&self, request: pb::PayoutRunRequest) -> Result<pb::PayoutRunReply, ApiError> {
        let who = caller(request.caller)?;
        let program_id = request.program_id.trim().to_owned();
        let mut conn = self.settler.pool.acquire().await?;
        let program = owned_program(
            &self.settler.rpc,
            &mut conn,
            &who.org_id,
            &program_id,
            Some(MY_PAYOUT_TOOL),
        )
        .await?;
        if !request.dry_run {
            if !self.payouts_live {
                return Err(ApiError::new(
                    ErrorCode::PayoutsNotEnabled,
                    "payouts are in preview on this platform (ORG_PAYOUTS_LIVE is off): nothing was moved; \
                     a dry run (dry_run: true) shows the exact plan",
                ));
            }
            org_enabled(&mut conn, &who.org_id).await?;
            self.stripe()?;
        }
        let key = amba_core::limits::key("idempotency_key", &request.idempotency_key)?;
        if !request.dry_run
            && let Some(key) = &key
            && let Some(existing) = store::run_by_key(&mut conn, &program_id, key).await?
        {
            drop(conn);
            return self.reply(existing, true).await;
        }
        let run_id = PayoutRunId::new().to_string();
        let planned = self.plan_items(&mut conn, &program, &run_id).await?;
        let total = charge_total(&planned.items);
        let funding = store::funding_of_org(&mut conn, &who.org_id).await?.unwrap_or_default();
        let nothing_to_pay = planned.items.iter().all(|i| i.status == ItemStatus::Skipped);
        // A dry run is the plan; so is a live run that would pay nobody: it stores no (empty)
        // run and charges nothing, and says why each affiliate is not paid and from when.
        if request.dry_run || nothing_to_pay {
            let mut funding = planned_funding(&funding, total);
            if !request.dry_run {
                funding.status = "not_needed".into();
            }
            return Ok(pb::PayoutRunReply {
                run: Some(plan_proto(
                    planned,
                    &program,
                    request.dry_run,
                    nothing_to_pay,
                    key,
                    funding,
                )),
                duplicate: false,
            });
        }
        let items = planned.items;
        check_fundable(&mut conn, &who.org_id, &program.currency, &funding, total).await?;
        let run = RunRow {
            funding: store::RunFunding::new(&who.org_id, &funding, &run_id),
            payout_run_id: run_id,
            program_id: program_id.clone(),
            trigger: "manual".into(),
            period: None,
            currency: program.currency.clone(),
            idempotency_key: key.unwrap_or_else(|| format!("run:{}", amba_core::id::time_ordered_suffix())),
            created_at: Utc::now(),
        };
        drop(conn);
        match self.create(&run, items).await? {
            Some(created) => {
                self.pay(&created).await;
                self.reply(created, false).await
            }
            None => {
                // A concurrent call with the same key won the insert.
                let mut conn = self.settler.pool.acquire().await?;
                let existing = store::run_by_key(&mut conn, &program_id, &run.idempotency_key)
                    .await?
                    .ok_or_else(ApiError::internal)?;
                drop(conn);
                self.reply(existing, true).await
            }
        }
    }

    /// A program's runs, newest first, each with its first items; with `payout_run_id`, that run
    /// alone with one page of its items. A run can have thousands of items: a reply must stay
    /// well under NATS's message limit.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn runs(&self, request: pb::PayoutRunsRequest) -> Result<pb::PayoutRunsReply, ApiError> {
        let who = caller(request.caller)?;
        let mut conn = self.settler.pool.acquire().await?;
        let program_id = request.program_id.trim();
        owned_program(
            &self.settler.rpc,
            &mut conn,
            &who.org_id,
            program_id,
            Some(MY_PAYOUT_TOOL),
        )
        .await?;
        let after = amba_core::cursor::decode(&request.cursor)?;
        let limit = amba_core::cursor::page_size(request.limit);
        let run_id = request.payout_run_id.trim();
        if !run_id.is_empty() {
            let row = store::run(&mut conn, run_id)
                .await?
                .filter(|r| r.program_id == program_id)
                .ok_or_else(|| ApiError::not_found(format!("payout run {run_id}")))?;
            let run = run_with_items(&mut conn, &row, after.as_deref(), limit).await?;
            let next_cursor = run.items_next_cursor.clone();
            return Ok(pb::PayoutRunsReply {
                runs: vec![run],
                next_cursor,
            });
        }
        let mut rows = store::runs_page(&mut conn, program_id, after.as_deref(), i64::from(limit) + 1).await?;
        let next_cursor = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| amba_core::cursor::encode(&r.payout_run_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            runs.push(run_with_items(&mut conn, &row, None, ITEMS_PER_LISTED_RUN).await?);
        }
        Ok(pb::PayoutRunsReply { runs, next_cursor })
    }

    /// The items a run of `program` would have now: one per balance, paid or skipped with why.
    pub async fn plan_items(
        &self,
        conn: &mut PgConnection,
        program: &store::ProgramRow,
        run_id: &str,
    ) -> Result<Plan, ApiError> {
        let quote: pb::PayableQuoteReply = self
            .settler
            .rpc
            .call(
                ledger::PAYABLE_QUOTE,
                &pb::PayableQuoteRequest {
                    program_id: program.program_id.clone(),
                    enrollment_id: String::new(),
                },
            )
            .await?;
        let orgs: Vec<String> = quote.quotes.iter().map(|q| q.affiliate_org_id.clone()).collect();
        let accounts = store::accounts_of_orgs(conn, &orgs).await?;
        let balances: Vec<Balance> = quote.quotes.iter().map(balance_of).collect();
        let threshold = quote.payout_threshold_minor;
        let lines = plan::plan(
            &balances,
            |org| account_state(accounts.get(org)),
            threshold,
            quote.platform_fee_bps,
        );
        let mut planned = Plan {
            items: Vec::new(),
            details: Vec::new(),
            threshold_minor: threshold,
        };
        for ((line, balance), q) in lines.into_iter().zip(&balances).zip(&quote.quotes) {
            // Affiliates with nothing at all (no balance ever) are not listed.
            if line.gross_minor == 0 && line.debt_minor == 0 && balance.held_minor <= 0 {
                continue;
            }
            let account = account_state(accounts.get(&line.affiliate_org_id));
            let outlook = plan::outlook(&line, balance, &releases_of(q), threshold, account);
            // A skipped item takes, charges and sends nothing; its reason says what it holds.
            let paid = line.skip.is_none();
            planned.details.push(ItemPlan {
                reason_code: outlook.code,
                held_minor: balance.held_minor,
                payable_minor: balance.payable_minor,
                payable_at: outlook.payable_at,
            });
            planned.items.push(ItemRow {
                payout_item_id: format!("pit_{}", amba_core::id::time_ordered_suffix()),
                payout_run_id: run_id.to_owned(),
                program_id: program.program_id.clone(),
                stripe_account_id: accounts
                    .get(&line.affiliate_org_id)
                    .and_then(|a| a.stripe_account_id.clone()),
                enrollment_id: line.enrollment_id,
                affiliate_org_id: line.affiliate_org_id,
                currency: quote.currency.clone(),
                gross_minor: if paid { line.gross_minor } else { 0 },
                fee_minor: if paid { line.fee_minor } else { 0 },
                debt_minor: line.debt_minor,
                net_minor: if paid { line.net_minor } else { 0 },
                status: if paid { ItemStatus::Pending } else { ItemStatus::Skipped },
                reason: (!paid).then_some(outlook.reason),
                stripe_transfer_id: None,
                transfer_attempted: false,
                // The run's charge and its transfers share the run's group.
                transfer_group: Some(run_id.to_owned()),
            });
        }
        Ok(planned)
    }

    /// Stores a run and its items (before any money moves); `None` when the key or period was
    /// already taken.
    pub async fn create(&self, run: &RunRow, mut items: Vec<ItemRow>) -> Result<Option<RunRow>, ApiError> {
        let mut tx = self.settler.pool.begin().await?;
        if !store::insert_run(&mut tx, run).await? {
            return Ok(None);
        }
        for item in &mut items {
            item.payout_run_id = run.payout_run_id.clone();
        }
        store::insert_items(&mut tx, &items).await?;
        tx.commit().await?;
        Ok(Some(run.clone()))
    }

    /// Moves a run as far as it goes now (reservations, the owner's charge, transfers); what is
    /// left, the in-flight job finishes.
    pub async fn pay(&self, run: &RunRow) {
        if let Err(err) = self.settler.advance_run(&run.payout_run_id).await {
            tracing::warn!(payout_run_id = %run.payout_run_id, error = %err, "payout run not settled yet; the in-flight job retries");
        }
    }

    /// A hosted Stripe Checkout page (mode=setup) where the program's owner saves the payment
    /// method its payout runs are charged to. Readiness follows Stripe's signed webhooks, never
    /// the redirect. The link is a credential: returned, never logged.
    #[tracing::instrument(skip_all, fields(program_id = %request.program_id), err(level = "info"))]
    pub async fn funding_setup(&self, request: pb::FundingSetupRequest) -> Result<pb::FundingSetupReply, ApiError> {
        let who = caller(request.caller)?;
        let program_id = request.program_id.trim().to_owned();
        let success_url = absolute_url("success_url", &request.success_url)?;
        let cancel_url = absolute_url("cancel_url", &request.cancel_url)?;
        let mut conn = self.settler.pool.acquire().await?;
        let program = owned_program(&self.settler.rpc, &mut conn, &who.org_id, &program_id, None).await?;
        drop(conn);
        let stripe = self.stripe()?;
        let mut tx = self.settler.pool.begin().await?;
        let funding = store::lock_funding(&mut tx, &who.org_id).await?;
        let customer = match funding.stripe_customer_id.clone() {
            Some(customer) => customer,
            None => {
                // Keyed by the org: a retry after a lost answer gets the same Customer.
                let created = stripe
                    .create_customer(&who.org_id, &format!("funding_customer:{}", who.org_id))
                    .await
                    .map_err(stripe_error)?;
                store::set_customer(&mut tx, &who.org_id, &created.id).await?;
                created.id
            }
        };
        tx.commit().await?;
        let key = format!("funding_setup:{}", amba_core::id::time_ordered_suffix());
        let session = stripe
            .setup_session(
                &customer,
                &program.currency,
                &success_url,
                &cancel_url,
                &who.org_id,
                &key,
            )
            .await
            .map_err(stripe_error)?;
        Ok(pb::FundingSetupReply {
            url: session.url.unwrap_or_default(),
            expires_at_micros: session.expires_at.saturating_mul(1_000_000),
            status: if funding.ready() { "ready" } else { "setup_required" }.into(),
            card_brand: funding.card_brand.unwrap_or_default(),
            card_last4: funding.card_last4.unwrap_or_default(),
        })
    }

    /// The run as stored now (its funding moved on since it was created), with its items.
    async fn reply(&self, run: RunRow, duplicate: bool) -> Result<pb::PayoutRunReply, ApiError> {
        let mut conn = self.settler.pool.acquire().await?;
        let run = store::run(&mut conn, &run.payout_run_id).await?.unwrap_or(run);
        Ok(pb::PayoutRunReply {
            run: Some(run_with_items(&mut conn, &run, None, ITEMS_PER_RUN_REPLY).await?),
            duplicate,
        })
    }
}

/// The items a run would have now, with what only a plan shows (stored runs keep the items).
pub struct Plan {
    pub items: Vec<ItemRow>,
    /// One per item, in the same order.
    pub details: Vec<ItemPlan>,
    pub threshold_minor: i64,
}

/// Why an item is (not) paid and from when, as of planning.
pub struct ItemPlan {
    pub reason_code: &'static str,
    pub held_minor: i64,
    /// Signed: negative is debt.
    pub payable_minor: i64,
    pub payable_at: Option<chrono::DateTime<Utc>>,
}

/// A plan as a run that is not stored: a dry run's, or a live run's that would pay nobody.
fn plan_proto(
    planned: Plan,
    program: &store::ProgramRow,
    dry_run: bool,
    nothing_to_pay: bool,
    key: Option<String>,
    funding: pb::PayoutFunding,
) -> pb::PayoutRun {
    let total = charge_total(&planned.items);
    let next_payable = planned.details.iter().filter_map(|d| d.payable_at).min();
    pb::PayoutRun {
        program_id: program.program_id.clone(),
        dry_run,
        trigger: "manual".into(),
        currency: program.currency.clone(),
        idempotency_key: key.unwrap_or_default(),
        // The plan's first items (the totals cover all): a reply stays under NATS's limit.
        items_total: u32::try_from(planned.items.len()).unwrap_or(u32::MAX),
        items: planned
            .items
            .iter()
            .zip(&planned.details)
            .take(ITEMS_PER_RUN_REPLY as usize)
            .map(|(i, d)| {
                let mut item = i.to_proto();
                item.payout_item_id.clear();
                item.status = if i.status == ItemStatus::Skipped {
                    "skipped"
                } else {
                    "planned"
                }
                .into();
                if item.reason.is_empty() {
                    item.reason = "will be paid".into();
                }
                item.reason_code = d.reason_code.into();
                item.held_minor = d.held_minor;
                item.payable_minor = d.payable_minor;
                item.payable_at_micros = micros(d.payable_at);
                item
            })
            .collect(),
        created_at_micros: Utc::now().timestamp_micros(),
        funding: Some(funding),
        funding_required_minor: total,
        outcome: if nothing_to_pay { "nothing_to_pay" } else { "planned" }.into(),
        threshold_minor: planned.threshold_minor,
        next_payable_at_micros: micros(next_payable),
        ..Default::default()
    }
}

fn micros(at: Option<chrono::DateTime<Utc>>) -> i64 {
    at.map(|t| t.timestamp_micros()).unwrap_or(0)
}

fn releases_of(q: &pb::PayableQuote) -> Vec<Release> {
    q.releases
        .iter()
        .filter_map(|r| {
            chrono::DateTime::from_timestamp_micros(r.at_micros).map(|at| Release {
                at,
                amount_minor: r.amount_minor,
            })
        })
        .collect()
}

fn balance_of(q: &pb::PayableQuote) -> Balance {
    Balance {
        enrollment_id: q.enrollment_id.clone(),
        affiliate_org_id: q.affiliate_org_id.clone(),
        held_minor: q.held_minor,
        payable_minor: q.payable_minor,
        debt_minor: q.debt_minor,
    }
}

fn account_state(account: Option<&store::AccountRow>) -> Account {
    match account {
        Some(a) if a.ready() => Account::Ready,
        Some(a) if a.stripe_account_id.is_some() => Account::NotReady,
        _ => Account::Missing,
    }
}

/// Items shown with each run of a page of runs: 200 runs of 10 items stay far below 1 MiB.
const ITEMS_PER_LISTED_RUN: u32 = 10;
/// Items in a run's own reply (and a dry run's); the rest page with amba_affiliate_payouts_list.
const ITEMS_PER_RUN_REPLY: u32 = 200;

/// A run with `limit` of its items after `after`, their total, and where the next ones start.
async fn run_with_items(
    conn: &mut PgConnection,
    row: &RunRow,
    after: Option<&str>,
    limit: u32,
) -> Result<pb::PayoutRun, ApiError> {
    let mut items = store::items_page(conn, &row.payout_run_id, after, i64::from(limit) + 1).await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let total = store::item_count(conn, &row.payout_run_id).await?;
    let mut run = row.to_proto(&items);
    run.items_total = u32::try_from(total).unwrap_or(u32::MAX);
    if more {
        run.items_next_cursor = items
            .last()
            .map(|i| amba_core::cursor::encode(&i.payout_item_id))
            .unwrap_or_default();
    }
    Ok(run)
}

/// The caller's own program. An org enrolled in it is told the tool is the owner's (FORBIDDEN,
/// naming `instead`); to anyone else another org's program is NOT_FOUND, exactly like a missing
/// one. Payout keeps no enrollments: the ledger's read model answers (the caller's balances in
/// the program, one per enrollment whatever its status).
async fn owned_program(
    rpc: &amba_bus::rpc::RpcClient,
    conn: &mut PgConnection,
    org_id: &str,
    program_id: &str,
    instead: Option<&str>,
) -> Result<store::ProgramRow, ApiError> {
    let not_found = || ApiError::not_found(format!("program {program_id}"));
    match store::program(conn, program_id).await? {
        Some(program) if program.owner_org_id == org_id => Ok(program),
        Some(_) => {
            let request = pb::BalanceRequest {
                caller: Some(pb::Principal {
                    org_id: org_id.to_owned(),
                    ..Default::default()
                }),
                program_id: program_id.to_owned(),
                cursor: String::new(),
                limit: 1,
            };
            match rpc.call(ledger::BALANCE, &request).await {
                Ok(mine) => Err(ApiError::not_owner(
                    format!("program {program_id}"),
                    !mine.balances.is_empty(),
                    instead,
                )),
                // Not enrolled; or the ledger did not answer, and a refusal never says more
                // than NOT_FOUND unless it knows.
                Err(err) => {
                    if err.code != ErrorCode::NotFound {
                        tracing::warn!(error = %err, "enrollment lookup for an owner-only refusal failed");
                    }
                    Err(not_found())
                }
            }
        }
        None => Err(not_found()),
    }
}

/// What an affiliate asks instead of an owner's payout runs.
const MY_PAYOUT_TOOL: &str = "amba_affiliate_my_payout_request";

/// The charge of a run: the gross of every item it pays.
pub fn charge_total(items: &[ItemRow]) -> i64 {
    items
        .iter()
        .filter(|i| i.status != ItemStatus::Skipped)
        .map(|i| i.gross_minor)
        .sum()
}

/// A dry run's funding: what would be charged, and whether a payment method is saved.
fn planned_funding(funding: &store::FundingRow, total: i64) -> pb::PayoutFunding {
    pb::PayoutFunding {
        status: if funding.ready() { "ready" } else { "required" }.into(),
        amount_minor: total,
        card_brand: funding.card_brand.clone().unwrap_or_default(),
        card_last4: funding.card_last4.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// The operator's per-org switch (on top of ORG_PAYOUTS_LIVE): 503 PAYOUTS_NOT_ENABLED when off.
pub async fn org_enabled(conn: &mut PgConnection, org_id: &str) -> Result<Option<store::OrgPayouts>, ApiError> {
    match store::org_payouts(conn, org_id).await? {
        Some(settings) if settings.enabled => Ok(Some(settings)),
        _ => Err(ApiError::new(
            ErrorCode::PayoutsNotEnabled,
            "live payouts are not enabled for your organization yet: the platform operator enables them per \
             organization; nothing was moved, and a dry run (dry_run: true) shows the exact plan",
        )),
    }
}

/// A live run needs a saved payment method (unless it charges nothing) and must stay within the
/// org's caps.
pub async fn check_fundable(
    conn: &mut PgConnection,
    org_id: &str,
    currency: &str,
    funding: &store::FundingRow,
    total: i64,
) -> Result<(), ApiError> {
    if total > 0 && !funding.ready() {
        return Err(ApiError::new(
            ErrorCode::FundingRequired,
            format!(
                "this run would charge {total} (minor units of {currency}) and your organization has no saved payment \
                 method: call amba_affiliate_program_funding_setup and complete the page it returns; nothing was moved"
            ),
        )
        .with_details(serde_json::json!({
            "funding_required_minor": total,
            "tool": "amba_affiliate_program_funding_setup",
        })));
    }
    let Some(settings) = store::org_payouts(conn, org_id).await? else {
        return Ok(());
    };
    if let Some(cap) = settings.cap_per_run_minor
        && total > cap
    {
        return Err(ApiError::new(
            ErrorCode::PayoutCapExceeded,
            format!("this run would charge {total}, above your organization's cap of {cap} per run; nothing was moved"),
        )
        .with_details(serde_json::json!({"funding_required_minor": total, "cap_per_run_minor": cap})));
    }
    if let Some(cap) = settings.cap_per_day_minor {
        let today = store::charged_today(conn, org_id, currency).await?;
        if today.saturating_add(total) > cap {
            return Err(ApiError::new(
                ErrorCode::PayoutCapExceeded,
                format!(
                    "this run would charge {total} on top of {today} today, above your organization's cap of {cap} \
                     per day (UTC); nothing was moved"
                ),
            )
            .with_details(serde_json::json!({
                "funding_required_minor": total,
                "charged_today_minor": today,
                "cap_per_day_minor": cap,
            })));
        }
    }
    Ok(())
}
