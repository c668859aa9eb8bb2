//! Payout tools: an affiliate's payout account and onboarding, what it is owed, and the owner's
//! payout runs. Money moves only through the payout service (Stripe Connect) and the ledger.

use super::{McpServer, ToolError, require_principal};
use crate::request::{rfc3339, rfc3339_or_null};
use amba_proto::methods::payout as methods;
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct PayoutCreateArgs {
    /// Where the affiliate's bank account is: ISO 3166-1 alpha-2 code, e.g. US, DE, JP. Default US.
    pub country: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct OnboardingArgs {
    /// Where Stripe sends the affiliate after finishing onboarding, e.g. https://example.com/payouts/done.
    pub return_url: String,
    /// Where Stripe sends the affiliate when the link expired or was used, to ask for a new one,
    /// e.g. https://example.com/payouts/retry.
    pub refresh_url: String,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct PayoutRequestArgs {
    /// One program (`prg_…`); default every program you are enrolled in.
    pub program_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PayoutRunArgs {
    pub program_id: String,
    /// true: return the exact plan (who would get what, who not and why) and move nothing.
    /// Works whether or not payouts are enabled on the platform. Default false.
    pub dry_run: Option<bool>,
    /// Any string unique to this run: repeating the call with the same key returns the same run
    /// instead of paying twice.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FundingSetupArgs {
    /// The program (`prg_…`) whose payouts the payment method pays for; it is saved for your
    /// organization and used by all its programs.
    pub program_id: String,
    /// Where Stripe sends you after saving the payment method, e.g. https://example.com/billing/done.
    /// Default: this server's /funding/done page.
    pub success_url: Option<String>,
    /// Where Stripe sends you if you cancel, e.g. https://example.com/billing. Default: this
    /// server's /funding/cancelled page.
    pub cancel_url: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FundingSetupOutput {
    /// Stripe's hosted Checkout page (setup mode) to save a card for payouts: open it in a browser.
    /// A credential: share it with nobody else.
    pub url: String,
    pub expires_at: String,
    /// `ready`: a payment method is saved (runs are charged to it; saving another replaces it);
    /// `setup_required`: nothing saved yet — live runs answer FUNDING_REQUIRED until Stripe
    /// confirms the setup (seconds after the page is completed).
    pub status: String,
    /// The saved card, when ready, e.g. visa / 4242.
    pub card_brand: String,
    pub card_last4: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FundingView {
    /// Live run: reserving | charging | succeeded | failed | not_needed | unfunded (runs made before
    /// funding). Dry run: ready (a payment method is saved) | required (call
    /// amba_affiliate_program_funding_setup first).
    pub status: String,
    /// What the run charges (charged) to your saved payment method: the sum of the paid items' gross.
    pub amount_minor: i64,
    pub payment_intent_id: String,
    pub charge_id: String,
    /// FUNDING_FAILED when the charge failed: nothing was transferred, every commission stays payable.
    pub code: String,
    /// Stripe's reason, e.g. card_declined, insufficient_funds, authentication_required.
    pub decline_code: String,
    pub message: String,
    pub card_brand: String,
    pub card_last4: String,
    /// Refunded to your card: the gross of items that could not be paid after the charge (e.g. an
    /// affiliate's account was closed meanwhile); their commission is payable again.
    pub refunded_minor: i64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PayoutsListArgs {
    pub program_id: String,
    /// One run (`run_…`, a run's payout_run_id): list that run alone, and page its items with
    /// cursor/limit instead of paging runs. Use it when a run's items_next_cursor is set.
    pub payout_run_id: Option<String>,
    /// Where the next page starts: the `next_cursor` of the previous page (of runs, or of the
    /// run's items with payout_run_id). Omit for the first page.
    pub cursor: Option<String>,
    /// Page size, 1-200 (default 50): runs, or with payout_run_id, that run's items.
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PayoutAccountOutput {
    pub payout_account_id: String,
    /// `onboarding` until Stripe reports the account can receive transfers, then `ready`.
    pub status: String,
    pub stripe_account_id: String,
    pub country: String,
    pub payouts_enabled: bool,
    /// false when the org already had this account (nothing new was created).
    pub created: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct OnboardingOutput {
    /// Stripe's hosted onboarding page: single use and short-lived; open it to finish onboarding.
    pub url: String,
    pub expires_at: String,
    pub status: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PayoutQuoteView {
    pub program_id: String,
    pub enrollment_id: String,
    pub currency: String,
    pub held_minor: i64,
    pub payable_minor: i64,
    pub debt_minor: i64,
    /// What the next run would take from payable (payable net of debt); 0 when it would not pay.
    pub gross_minor: i64,
    pub fee_minor: i64,
    /// What the next run would transfer to you: gross − fee; 0 when blocked_reason says why not.
    pub net_minor: i64,
    pub threshold_minor: i64,
    pub payout_schedule: String,
    /// Start of the next scheduled settlement (RFC 3339); empty for manual programs.
    pub next_scheduled_at: String,
    /// Why the next run would not pay this, with the amounts and dates; empty when it would.
    pub blocked_reason: String,
    /// will_be_paid | held | below_threshold | in_debt | no_payout_account |
    /// payout_account_not_ready | nothing_payable
    pub reason_code: String,
    /// When released held commission brings your payable (net of debt) to the threshold (RFC
    /// 3339); the first run after it pays you, once your payout account is ready. null when
    /// payable now, or when no held release gets there.
    pub payable_at: Option<String>,
    /// The next release of held commission (RFC 3339, the end of the refund window); null when
    /// nothing is held.
    pub next_release_at: Option<String>,
    /// What that release makes payable.
    pub next_release_minor: i64,
    /// Payable still missing to reach the threshold.
    pub missing_minor: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PayoutRequestOutput {
    /// The sums over `programs` (amounts of one currency only when all programs share it).
    pub held_minor: i64,
    pub payable_minor: i64,
    pub debt_minor: i64,
    pub fee_minor: i64,
    pub net_minor: i64,
    pub threshold_minor: i64,
    pub next_scheduled_at: String,
    /// The earliest next release of held commission over `programs` (RFC 3339); null when
    /// nothing is held.
    pub next_release_at: Option<String>,
    /// The earliest `payable_at` over `programs`; null when none is known.
    pub payable_at: Option<String>,
    pub account_ready: bool,
    /// Whether the platform moves real money (ORG_PAYOUTS_LIVE); off, runs answer PAYOUTS_NOT_ENABLED.
    pub payouts_enabled: bool,
    pub programs: Vec<PayoutQuoteView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PayoutItemView {
    pub payout_item_id: String,
    pub enrollment_id: String,
    pub affiliate_org_id: String,
    pub gross_minor: i64,
    pub fee_minor: i64,
    pub debt_minor: i64,
    pub net_minor: i64,
    /// planned | skipped (a plan: dry run or nothing_to_pay); skipped | pending | reserved | paid |
    /// failed | unknown | voided (a recorded run). A skipped item's gross, fee and net are 0.
    pub status: String,
    /// Why: "will be paid", or why not with the amounts and dates (held until…, below the
    /// threshold of…, in debt, payout account not ready), or a failure.
    pub reason: String,
    pub stripe_transfer_id: String,
    /// Present in a plan only (dry run or nothing_to_pay).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub plan: Option<ItemPlanView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ItemPlanView {
    /// will_be_paid | held | below_threshold | in_debt | no_payout_account |
    /// payout_account_not_ready
    pub reason_code: String,
    pub held_minor: i64,
    /// The affiliate's payable balance (negative: debt).
    pub payable_minor: i64,
    /// When released held commission brings the affiliate's payable (net of debt) to the
    /// threshold (RFC 3339): the first run after it pays them, once their payout account is
    /// ready. null when paid now, or when that is not known (payout account, future sales).
    pub payable_at: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RunPlanView {
    /// The program's payout threshold: a payable below it is not paid (net_minor 0).
    pub threshold_minor: i64,
    /// The earliest payable_at of the items (RFC 3339); null when none is known.
    pub next_payable_at: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PayoutRunOutput {
    /// planned: a dry run that would pay someone; recorded: a stored run (items and funding say
    /// how far it got); nothing_to_pay: nobody would be paid now — a live run then stores no run
    /// and charges nothing (not an error), and items say why each affiliate is not paid and
    /// from when (payable_at).
    pub outcome: String,
    /// Empty for a dry run and for nothing_to_pay.
    pub payout_run_id: String,
    pub program_id: String,
    pub dry_run: bool,
    pub trigger: String,
    pub period: String,
    pub currency: String,
    pub idempotency_key: String,
    pub created_at: String,
    /// The run's items: in amba_affiliate_payout_run's reply the first 200 (a dry run's plan
    /// too), in amba_affiliate_payouts_list the first 10 of each run (or, with payout_run_id, one
    /// page); items_total says how many there are.
    pub items: Vec<PayoutItemView>,
    pub items_total: u32,
    /// Set when the run has more items than shown: call amba_affiliate_payouts_list with this
    /// run's payout_run_id and this value as cursor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_next_cursor: Option<String>,
    /// What this run charges (dry run: would charge) your organization's saved payment method:
    /// the sum of the paid items' gross (fee included, nothing else).
    pub funding_required_minor: i64,
    pub funding: FundingView,
    /// true when this idempotency key's earlier run was returned.
    pub duplicate: bool,
    /// Present in a plan only (dry run or nothing_to_pay).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RunPlanView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PayoutsListOutput {
    pub runs: Vec<PayoutRunOutput>,
    /// Pass as `cursor` for the next page (of runs; with payout_run_id, of that run's items);
    /// empty on the last page.
    pub next_cursor: String,
}

fn account_view(account: pb::PayoutAccount, created: bool) -> PayoutAccountOutput {
    PayoutAccountOutput {
        payout_account_id: account.payout_account_id,
        status: account.status,
        stripe_account_id: account.stripe_account_id,
        country: account.country,
        payouts_enabled: account.payouts_enabled,
        created,
    }
}

fn run_view(run: pb::PayoutRun, duplicate: bool) -> PayoutRunOutput {
    // A run answered whole (payout_run) carries no count: all its items are there.
    let items_total = run.items_total.max(u32::try_from(run.items.len()).unwrap_or(u32::MAX));
    let is_plan = run.dry_run || run.outcome == "nothing_to_pay";
    PayoutRunOutput {
        plan: is_plan.then(|| RunPlanView {
            threshold_minor: run.threshold_minor,
            next_payable_at: rfc3339_or_null(run.next_payable_at_micros),
        }),
        outcome: run.outcome,
        items_total,
        items_next_cursor: (!run.items_next_cursor.is_empty()).then_some(run.items_next_cursor),
        payout_run_id: run.payout_run_id,
        program_id: run.program_id,
        dry_run: run.dry_run,
        trigger: run.trigger,
        period: run.period,
        currency: run.currency,
        idempotency_key: run.idempotency_key,
        created_at: rfc3339(run.created_at_micros),
        items: run
            .items
            .into_iter()
            .map(|i| PayoutItemView {
                plan: is_plan.then(|| ItemPlanView {
                    reason_code: i.reason_code.clone(),
                    held_minor: i.held_minor,
                    payable_minor: i.payable_minor,
                    payable_at: rfc3339_or_null(i.payable_at_micros),
                }),
                payout_item_id: i.payout_item_id,
                enrollment_id: i.enrollment_id,
                affiliate_org_id: i.affiliate_org_id,
                gross_minor: i.gross_minor,
                fee_minor: i.fee_minor,
                debt_minor: i.debt_minor,
                net_minor: i.net_minor,
                status: i.status,
                reason: i.reason,
                stripe_transfer_id: i.stripe_transfer_id,
            })
            .collect(),
        funding_required_minor: run.funding_required_minor,
        funding: funding_view(run.funding.unwrap_or_default()),
        duplicate,
    }
}

fn funding_view(f: pb::PayoutFunding) -> FundingView {
    FundingView {
        status: f.status,
        amount_minor: f.amount_minor,
        payment_intent_id: f.payment_intent_id,
        charge_id: f.charge_id,
        code: f.code,
        decline_code: f.decline_code,
        message: f.message,
        card_brand: f.card_brand,
        card_last4: f.card_last4,
        refunded_minor: f.refunded_minor,
    }
}

#[tool_router(router = payout_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_my_payout_create",
        description = "Create your organization's payout account (a Stripe connected account that can receive \
                       transfers), used for every program you are in. Calling it again returns the same account and \
                       creates nothing. Next: amba_affiliate_my_payout_onboarding to finish Stripe's onboarding.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn my_payout_create(
        &self,
        Parameters(args): Parameters<PayoutCreateArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<PayoutAccountOutput>, ToolError> {
        let request = pb::PayoutAccountCreateRequest {
            caller: Some(require_principal(&parts)?),
            country: args.country.unwrap_or_default(),
        };
        let reply: pb::PayoutAccountReply = self.call_service(methods::ACCOUNT_CREATE, &request).await?;
        Ok(Json(account_view(reply.account.unwrap_or_default(), reply.created)))
    }

    #[tool(
        name = "amba_affiliate_my_payout_onboarding",
        description = "A link to Stripe's hosted onboarding for your payout account (bank details, identity). The link \
                       is single use and expires in minutes (expires_at): open it promptly, or call again for a new one. \
                       The account becomes ready when Stripe confirms it (seconds after onboarding; see \
                       amba_affiliate_my_payout_request's account_ready).",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn my_payout_onboarding(
        &self,
        Parameters(args): Parameters<OnboardingArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<OnboardingOutput>, ToolError> {
        let request = pb::OnboardingRequest {
            caller: Some(require_principal(&parts)?),
            return_url: args.return_url,
            refresh_url: args.refresh_url,
        };
        let reply: pb::OnboardingReply = self.call_service(methods::ONBOARDING, &request).await?;
        Ok(Json(OnboardingOutput {
            url: reply.url,
            expires_at: rfc3339(reply.expires_at_micros),
            status: reply.account.map(|a| a.status).unwrap_or_default(),
        }))
    }

    #[tool(
        name = "amba_affiliate_my_payout_request",
        description = "Exactly what you are owed and what the next payout run would send you: held (refund window), \
                       payable, debt, the platform fee, net (0 when it would not pay you), the program's threshold, \
                       the next scheduled date, whether your payout account is ready and whether payouts are enabled. \
                       When nothing would be paid, blocked_reason and reason_code say why, next_release_at and \
                       next_release_minor when held commission becomes payable and how much, missing_minor what is \
                       missing to the threshold, and payable_at when released commission reaches it. Eventually \
                       consistent: a just approved conversion shows up about a second later.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn my_payout_request(
        &self,
        Parameters(args): Parameters<PayoutRequestArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<PayoutRequestOutput>, ToolError> {
        let request = pb::PayoutQuoteRequest {
            caller: Some(require_principal(&parts)?),
            program_id: args.program_id.unwrap_or_default(),
        };
        let reply: pb::PayoutQuoteReply = self.call_service(methods::QUOTE, &request).await?;
        let sum = |f: fn(&pb::PayoutQuote) -> i64| reply.quotes.iter().map(f).sum::<i64>();
        let next = reply
            .quotes
            .iter()
            .map(|q| q.next_scheduled_at_micros)
            .filter(|t| *t > 0)
            .min()
            .unwrap_or(0);
        let earliest = |f: fn(&pb::PayoutQuote) -> i64| {
            rfc3339_or_null(reply.quotes.iter().map(f).filter(|t| *t > 0).min().unwrap_or(0))
        };
        Ok(Json(PayoutRequestOutput {
            next_release_at: earliest(|q| q.next_release_at_micros),
            payable_at: earliest(|q| q.payable_at_micros),
            held_minor: sum(|q| q.held_minor),
            payable_minor: sum(|q| q.payable_minor),
            debt_minor: sum(|q| q.debt_minor),
            fee_minor: sum(|q| q.fee_minor),
            net_minor: sum(|q| q.net_minor),
            threshold_minor: reply.quotes.iter().map(|q| q.threshold_minor).max().unwrap_or(0),
            next_scheduled_at: if next > 0 { rfc3339(next) } else { String::new() },
            account_ready: reply.account_ready,
            payouts_enabled: reply.payouts_enabled,
            programs: reply
                .quotes
                .into_iter()
                .map(|q| PayoutQuoteView {
                    next_scheduled_at: if q.next_scheduled_at_micros > 0 {
                        rfc3339(q.next_scheduled_at_micros)
                    } else {
                        String::new()
                    },
                    program_id: q.program_id,
                    enrollment_id: q.enrollment_id,
                    currency: q.currency,
                    held_minor: q.held_minor,
                    payable_minor: q.payable_minor,
                    debt_minor: q.debt_minor,
                    gross_minor: q.gross_minor,
                    fee_minor: q.fee_minor,
                    net_minor: q.net_minor,
                    threshold_minor: q.threshold_minor,
                    payout_schedule: q.payout_schedule,
                    blocked_reason: q.blocked_reason,
                    reason_code: q.reason_code,
                    payable_at: rfc3339_or_null(q.payable_at_micros),
                    next_release_at: rfc3339_or_null(q.next_release_at_micros),
                    next_release_minor: q.next_release_minor,
                    missing_minor: q.missing_minor,
                })
                .collect(),
        }))
    }

    #[tool(
        name = "amba_affiliate_program_funding_setup",
        description = "Save the payment method your payout runs are charged to (program owners). Returns a Stripe \
                       Checkout link (setup mode, no charge now): open it and save a card. Each live payout run first \
                       charges your organization the run's total (funding_required_minor: the sum of the paid items' \
                       gross), then transfers to affiliates from that charge. status turns ready seconds after the \
                       page is completed (Stripe's confirmation). Call again for a fresh link or to replace the card.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn program_funding_setup(
        &self,
        Parameters(args): Parameters<FundingSetupArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<FundingSetupOutput>, ToolError> {
        let public = self.state.public_url.clone();
        let request = pb::FundingSetupRequest {
            caller: Some(require_principal(&parts)?),
            program_id: args.program_id,
            success_url: args.success_url.unwrap_or_else(|| format!("{public}/funding/done")),
            cancel_url: args.cancel_url.unwrap_or_else(|| format!("{public}/funding/cancelled")),
        };
        let reply: pb::FundingSetupReply = self.call_service(methods::FUNDING_SETUP, &request).await?;
        Ok(Json(FundingSetupOutput {
            url: reply.url,
            expires_at: rfc3339(reply.expires_at_micros),
            status: reply.status,
            card_brand: reply.card_brand,
            card_last4: reply.card_last4,
        }))
    }

    #[tool(
        name = "amba_affiliate_payout_run",
        description = "Pay every affiliate of your program whose payable balance (net of debt) reaches the payout \
                       threshold and whose payout account is ready: gross = payable, fee = platform_fee_bps of it, net \
                       = gross − fee. A live run first charges your saved payment method the run's total \
                       (funding_required_minor), then transfers each net through Stripe Connect from that charge; a \
                       declined charge moves nothing (funding.status failed, FUNDING_FAILED with Stripe's \
                       decline_code; commissions stay payable). Without a saved payment method it answers \
                       FUNDING_REQUIRED: call amba_affiliate_program_funding_setup. dry_run: true returns the exact \
                       plan and charge and moves nothing: every affiliate with a balance (held or payable), each with \
                       reason_code and reason (will be paid, held until a date, below the threshold, in debt, payout \
                       account not ready), payable_at (when held commission makes it payable; null when now or not \
                       known) and net_minor = what the run would really send (0 when not paid), plus threshold_minor. \
                       When nobody would be paid, the reply's outcome is nothing_to_pay (not an error): a real run \
                       then records no run and charges nothing, and its items say why and from when. While payouts \
                       are off for the platform or your organization, a real run answers PAYOUTS_NOT_ENABLED (503). \
                       Safe to retry with the same idempotency_key.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn payout_run(
        &self,
        Parameters(args): Parameters<PayoutRunArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<PayoutRunOutput>, ToolError> {
        let request = pb::PayoutRunRequest {
            caller: Some(require_principal(&parts)?),
            program_id: args.program_id,
            dry_run: args.dry_run.unwrap_or(false),
            idempotency_key: args.idempotency_key.unwrap_or_default(),
        };
        let reply: pb::PayoutRunReply = self.call_service(methods::RUN, &request).await?;
        Ok(Json(run_view(reply.run.unwrap_or_default(), reply.duplicate)))
    }

    #[tool(
        name = "amba_affiliate_payouts_list",
        description = "Your program's payout runs, newest first (limit runs per page, default 50, max 200; pass \
                       next_cursor as cursor for more), each with its first 10 items: amounts, status (paid, failed, \
                       skipped with the reason, or still in flight) and the Stripe transfer id; items_total counts \
                       them all. For a run with more (items_next_cursor set), call again with its payout_run_id: the \
                       reply holds that run alone with limit items from cursor, and next_cursor continues its items.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn payouts_list(
        &self,
        Parameters(args): Parameters<PayoutsListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<PayoutsListOutput>, ToolError> {
        let request = pb::PayoutRunsRequest {
            caller: Some(require_principal(&parts)?),
            program_id: args.program_id,
            cursor: args.cursor.unwrap_or_default(),
            limit: args.limit.unwrap_or_default(),
            payout_run_id: args.payout_run_id.unwrap_or_default(),
        };
        let reply: pb::PayoutRunsReply = self.call_service(methods::RUNS, &request).await?;
        Ok(Json(PayoutsListOutput {
            runs: reply.runs.into_iter().map(|r| run_view(r, false)).collect(),
            next_cursor: reply.next_cursor,
        }))
    }
}
