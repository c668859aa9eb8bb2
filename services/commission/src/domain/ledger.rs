//! The double-entry ledger, pure: accounts, postings and the one function per money movement.
//!
//! Every movement is a [`Posting`]: entries of signed minor units that sum to zero per currency.
//! Sign convention: an affiliate account's balance is what the platform owes or has handed over
//! to the affiliate (positive = in the affiliate's favour); the program's `expense` account holds
//! the matching negative side (−expense = commission the program owes net of recoveries), `fee`
//! collects the platform fee taken at payout.
//!
//! | movement          | entries                                                        |
//! |-------------------|----------------------------------------------------------------|
//! | accrue            | expense −c, held +c                                            |
//! | release           | held −h, payable +h                                            |
//! | clawback (held)   | held −r, expense +r                                            |
//! | clawback (released)| payable −r, expense +r (payable may go negative: debt)        |
//! | reserve           | payable −g, reserved +g (refused when g > payable)             |
//! | post              | reserved −g, paid +(g − fee), fee +fee                         |
//! | void              | reserved −g, payable +g                                        |
//! | transfer reversal | paid −y, fee −fb, payable +settle (pays debt), expense +(r − settle) |
//!
//! A transfer reversal undoes commission as a whole, fee included: returning `y` of an item's net
//! `n` also returns the fee's share `fb` (prorated cumulatively: `round_half_even(fee × returned
//! total / n)` less the fee already returned), so it undoes `r = y + fb` of commission, which
//! pays off debt first (`settle = min(debt, r)`).
//!
//! The service computes postings here and only stores them; property tests drive the same
//! functions through random sequences.

use amba_core::rounding::round_half_even;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// Accrued, inside the hold period.
    Held,
    /// Released and not yet in a payout; negative = carry-forward debt.
    Payable,
    /// In a payout in flight.
    Reserved,
    /// Handed over to the affiliate (net of the platform fee).
    Paid,
    /// The program's commission expense for this enrollment (negative side of accruals).
    Expense,
    /// Platform fee taken at payout.
    Fee,
}

impl Account {
    pub const ALL: [Account; 6] = [
        Account::Held,
        Account::Payable,
        Account::Reserved,
        Account::Paid,
        Account::Expense,
        Account::Fee,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Account::Held => "held",
            Account::Payable => "payable",
            Account::Reserved => "reserved",
            Account::Paid => "paid",
            Account::Expense => "expense",
            Account::Fee => "fee",
        }
    }

    pub fn parse(text: &str) -> Option<Account> {
        Account::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// One account: (program, enrollment, kind, currency). The program's expense and fee accounts
/// are kept per enrollment too (sub-accounts; the program's figure is their sum), so a posting
/// only ever locks the balance rows of the enrollment it concerns: no program-wide hot row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    pub program_id: String,
    pub enrollment_id: String,
    pub account: Account,
    pub currency: String,
}

/// Whose accounts a posting touches: one enrollment of one program, in the program currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub program_id: String,
    pub enrollment_id: String,
    pub currency: String,
}

impl Scope {
    pub fn key(&self, account: Account) -> AccountKey {
        AccountKey {
            program_id: self.program_id.clone(),
            enrollment_id: self.enrollment_id.clone(),
            account,
            currency: self.currency.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: AccountKey,
    pub amount_minor: i64,
}

/// A balanced set of entries; zero amounts are never recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub kind: &'static str,
    pub entries: Vec<Entry>,
}

impl Posting {
    fn new(kind: &'static str) -> Self {
        Posting {
            kind,
            entries: Vec::new(),
        }
    }

    fn add(mut self, scope: &Scope, account: Account, amount_minor: i64) -> Self {
        if amount_minor != 0 {
            self.entries.push(Entry {
                key: scope.key(account),
                amount_minor,
            });
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every currency's entries sum to exactly zero (computed in i128: no overflow hides a gap).
    pub fn is_balanced(&self) -> bool {
        let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
        for entry in &self.entries {
            *sums.entry(entry.key.currency.as_str()).or_default() += i128::from(entry.amount_minor);
        }
        sums.values().all(|s| *s == 0)
    }

    /// The change this posting makes to one account.
    pub fn delta(&self, account: Account) -> i64 {
        self.entries
            .iter()
            .filter(|e| e.key.account == account)
            .map(|e| e.amount_minor)
            .sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("amount must be positive")]
    NonPositive,
    #[error("amount out of range")]
    Overflow,
    #[error("only {available} is payable; cannot reserve {requested}")]
    InsufficientPayable { available: i64, requested: i64 },
    #[error("fee {fee} is not within 0..={gross}")]
    BadFee { fee: i64, gross: i64 },
    #[error("only {returnable} of this transfer can still be returned; {requested} requested")]
    ExceedsReturnable { returnable: i64, requested: i64 },
    #[error("refunded total {refunded} exceeds the sale amount {sale}")]
    ExceedsSale { refunded: i64, sale: i64 },
}

/// The sub-ledger state of one commission (direct or override).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommissionState {
    /// What was accrued (never re-rated).
    pub amount_minor: i64,
    /// The sale it was earned on (the proration base of refunds).
    pub sale_minor: i64,
    /// What is still in `held` for it (0 once released).
    pub held_minor: i64,
    pub released: bool,
    /// Recovered so far, by clawbacks or by a transfer reversal; never above `amount_minor`.
    pub recovered_minor: i64,
}

impl CommissionState {
    pub fn accrued(amount_minor: i64, sale_minor: i64) -> Self {
        CommissionState {
            amount_minor,
            sale_minor,
            held_minor: amount_minor,
            released: false,
            recovered_minor: 0,
        }
    }
}

/// Commission accrues into `held`.
pub fn accrue(scope: &Scope, amount_minor: i64) -> Result<Posting, LedgerError> {
    if amount_minor < 0 {
        return Err(LedgerError::NonPositive);
    }
    let neg = amount_minor.checked_neg().ok_or(LedgerError::Overflow)?;
    Ok(Posting::new("accrue")
        .add(scope, Account::Expense, neg)
        .add(scope, Account::Held, amount_minor))
}

/// An override for an upline: `bps` of the source commission, rounded half-even once.
pub fn override_amount(source_commission_minor: i64, bps: u32) -> Result<i64, LedgerError> {
    amba_core::rounding::apply_bps(source_commission_minor, bps).ok_or(LedgerError::Overflow)
}

/// The hold ends: what is still held for this commission becomes payable. Applying it twice
/// moves nothing the second time (`released` is set).
pub fn release(scope: &Scope, commission: &mut CommissionState) -> Posting {
    if commission.released {
        return Posting::new("release");
    }
    let held = commission.held_minor;
    commission.held_minor = 0;
    commission.released = true;
    Posting::new("release")
        .add(scope, Account::Held, -held)
        .add(scope, Account::Payable, held)
}

/// The part of a commission a refund reverses, computed cumulatively so partial refunds add up
/// to exactly the commission when the whole sale is refunded:
/// `target = round_half_even(amount × refunded_total / sale)`; this step reverses
/// `target − recovered` (never negative, so a commission is never recovered twice).
pub fn reversal_target(commission: &CommissionState, refunded_total: i64) -> Result<i64, LedgerError> {
    if refunded_total < 0 {
        return Err(LedgerError::NonPositive);
    }
    if refunded_total > commission.sale_minor && commission.sale_minor > 0 {
        return Err(LedgerError::ExceedsSale {
            refunded: refunded_total,
            sale: commission.sale_minor,
        });
    }
    if commission.sale_minor == 0 {
        // Nothing to prorate against: any refund of a zero sale reverses everything.
        return Ok(if refunded_total > 0 { commission.amount_minor } else { 0 });
    }
    round_half_even(
        i128::from(commission.amount_minor) * i128::from(refunded_total),
        i128::from(commission.sale_minor),
    )
    .ok_or(LedgerError::Overflow)
}

/// What one reversal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversal {
    pub posting: Posting,
    pub reversed_minor: i64,
    /// How much of it became (or deepened) carry-forward debt (negative payable).
    pub carry_forward_minor: i64,
}

/// Reverses a commission for a refund that brings the sale's refunded total to `refunded_total`.
/// Still held: out of `held`. Released: out of `payable`, which may go negative (debt netted
/// against the next payout). `payable_balance` is the enrollment's payable before this posting.
pub fn clawback(
    scope: &Scope,
    commission: &mut CommissionState,
    refunded_total: i64,
    payable_balance: i64,
) -> Result<Reversal, LedgerError> {
    let target = reversal_target(commission, refunded_total)?;
    let reversed = target.saturating_sub(commission.recovered_minor).max(0);
    let from_held = reversed.min(commission.held_minor);
    let from_payable = reversed - from_held;
    commission.held_minor -= from_held;
    commission.recovered_minor += reversed;
    let payable_after = payable_balance.checked_sub(from_payable).ok_or(LedgerError::Overflow)?;
    let carry_forward = debt(payable_after) - debt(payable_balance);
    let posting = Posting::new("clawback")
        .add(scope, Account::Held, -from_held)
        .add(scope, Account::Payable, -from_payable)
        .add(scope, Account::Expense, reversed);
    Ok(Reversal {
        posting,
        reversed_minor: reversed,
        carry_forward_minor: carry_forward,
    })
}

/// Debt is a negative payable balance, shown as a positive amount.
pub fn debt(payable_balance: i64) -> i64 {
    payable_balance.min(0).saturating_neg()
}

/// Phase one of a payout: moves `gross` from payable to reserved. Never takes payable below zero.
pub fn reserve(scope: &Scope, payable_balance: i64, gross: i64) -> Result<Posting, LedgerError> {
    if gross <= 0 {
        return Err(LedgerError::NonPositive);
    }
    if gross > payable_balance {
        return Err(LedgerError::InsufficientPayable {
            available: payable_balance.max(0),
            requested: gross,
        });
    }
    Ok(Posting::new("reserve")
        .add(scope, Account::Payable, -gross)
        .add(scope, Account::Reserved, gross))
}

/// The transfer succeeded: the affiliate received `gross − fee`, the platform kept `fee`.
pub fn post(scope: &Scope, gross: i64, fee: i64) -> Result<Posting, LedgerError> {
    if !(0..=gross).contains(&fee) {
        return Err(LedgerError::BadFee { fee, gross });
    }
    Ok(Posting::new("post")
        .add(scope, Account::Reserved, -gross)
        .add(scope, Account::Paid, gross - fee)
        .add(scope, Account::Fee, fee))
}

/// The transfer definitely failed: the reservation goes back to payable.
pub fn void(scope: &Scope, gross: i64) -> Posting {
    Posting::new("void")
        .add(scope, Account::Reserved, -gross)
        .add(scope, Account::Payable, gross)
}

/// A posted payout item as a transfer reversal sees it: what it paid and what came back so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PostedItem {
    pub gross_minor: i64,
    /// Platform fee taken at post.
    pub fee_minor: i64,
    /// Net returned by earlier reversals.
    pub returned_minor: i64,
    /// Fee returned with them.
    pub fee_returned_minor: i64,
}

impl PostedItem {
    /// What the affiliate received: `gross − fee`.
    pub fn net_minor(&self) -> i64 {
        self.gross_minor.saturating_sub(self.fee_minor)
    }

    /// What can still come back: the net not returned yet.
    pub fn returnable_minor(&self) -> i64 {
        self.net_minor().saturating_sub(self.returned_minor).max(0)
    }
}

/// What a transfer reversal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReversal {
    pub posting: Posting,
    /// The fee's share returned with it (out of the `fee` account).
    pub fee_returned_minor: i64,
    /// Part of the commission it undoes (returned + fee share) that paid off carry-forward debt
    /// (commission already recovered by a clawback: it is not recovered again).
    pub settled_debt_minor: i64,
    /// Part that recovers commission not recovered before (marked on the commissions).
    pub recovered_minor: i64,
}

/// `returned` of a posted transfer came back (Stripe `transfer.reversed`). It undoes the
/// commission the transfer paid as a whole, platform fee included: the fee's share comes back
/// too, prorated cumulatively so partial reversals add up to exactly the fee:
/// `fee_back = round_half_even(fee × returned_total_after / net) − fee_returned_so_far`.
/// The commission undone, `r = returned + fee_back`, first pays off the enrollment's debt —
/// commission a clawback already recovered — and recovers the rest, so the affiliate ends with no
/// debt for it and nothing is recovered twice.
pub fn transfer_reversal(
    scope: &Scope,
    payable_balance: i64,
    returned: i64,
    item: &PostedItem,
) -> Result<TransferReversal, LedgerError> {
    if returned <= 0 {
        return Err(LedgerError::NonPositive);
    }
    let returnable = item.returnable_minor();
    if returned > returnable {
        return Err(LedgerError::ExceedsReturnable {
            returnable,
            requested: returned,
        });
    }
    // 0 < returned <= returnable <= net, so the net is positive.
    let net = item.net_minor();
    let returned_after = item.returned_minor.checked_add(returned).ok_or(LedgerError::Overflow)?;
    let fee_back_total = round_half_even(i128::from(item.fee_minor) * i128::from(returned_after), i128::from(net))
        .ok_or(LedgerError::Overflow)?;
    // Never negative and never more than the fee still kept (also for items whose earlier
    // reversals predate returning the fee: the first later one catches their share up).
    let fee_left = item.fee_minor.saturating_sub(item.fee_returned_minor).max(0);
    let fee_back = fee_back_total
        .saturating_sub(item.fee_returned_minor)
        .clamp(0, fee_left);
    let undone = returned.checked_add(fee_back).ok_or(LedgerError::Overflow)?;
    let settled = undone.min(debt(payable_balance));
    let recovered = undone - settled;
    let posting = Posting::new("transfer_reversal")
        .add(scope, Account::Paid, -returned)
        .add(scope, Account::Fee, -fee_back)
        .add(scope, Account::Payable, settled)
        .add(scope, Account::Expense, recovered);
    Ok(TransferReversal {
        posting,
        fee_returned_minor: fee_back,
        settled_debt_minor: settled,
        recovered_minor: recovered,
    })
}

/// Marks `recovered` on released commissions (in the order given) up to what each has left, so
/// a later clawback of the same conversion reverses nothing more. Returns each one's share.
pub fn allocate_recovery(commissions: &mut [CommissionState], recovered: i64) -> Vec<i64> {
    let mut left = recovered;
    commissions
        .iter_mut()
        .map(|c| {
            let room = (c.amount_minor - c.recovered_minor).max(0);
            let share = room.min(left).max(0);
            c.recovered_minor += share;
            left -= share;
            share
        })
        .collect()
}

/// Balances as a projection of postings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balances(pub BTreeMap<AccountKey, i64>);

impl Balances {
    pub fn apply(&mut self, posting: &Posting) {
        for entry in &posting.entries {
            let balance = self.0.entry(entry.key.clone()).or_default();
            *balance = balance.saturating_add(entry.amount_minor);
        }
    }

    pub fn get(&self, key: &AccountKey) -> i64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Replays postings from nothing.
    pub fn replay<'a>(postings: impl IntoIterator<Item = &'a Posting>) -> Balances {
        let mut balances = Balances::default();
        for posting in postings {
            balances.apply(posting);
        }
        balances.0.retain(|_, v| *v != 0);
        balances
    }

    /// Sum over every account per currency: zero when the ledger conserves money.
    pub fn totals(&self) -> BTreeMap<String, i128> {
        let mut sums: BTreeMap<String, i128> = BTreeMap::new();
        for (key, value) in &self.0 {
            *sums.entry(key.currency.clone()).or_default() += i128::from(*value);
        }
        sums
    }
}

#[cfg(test)]
mod tests;
