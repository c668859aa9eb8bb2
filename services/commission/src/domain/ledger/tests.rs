use super::*;
use proptest::prelude::*;

fn scope(enrollment: usize) -> Scope {
    Scope {
        program_id: "prg_1".into(),
        enrollment_id: format!("enr_{enrollment}"),
        currency: "USD".into(),
    }
}

fn balance(b: &Balances, enrollment: usize, account: Account) -> i64 {
    b.get(&scope(enrollment).key(account))
}

#[test]
fn a_worked_example() -> Result<(), LedgerError> {
    let s = scope(0);
    let mut b = Balances::default();
    // 20% of 100.00 = 20.00 accrues held, is released, half the sale is refunded after release.
    let mut c = CommissionState::accrued(2_000, 10_000);
    b.apply(&accrue(&s, 2_000)?);
    assert_eq!(balance(&b, 0, Account::Held), 2_000);
    b.apply(&release(&s, &mut c));
    assert!(release(&s, &mut c).is_empty(), "released exactly once");
    assert_eq!(balance(&b, 0, Account::Payable), 2_000);
    // Reserve all, post with a 1.00 fee.
    b.apply(&reserve(&s, 2_000, 2_000)?);
    assert_eq!(
        reserve(&s, 0, 1),
        Err(LedgerError::InsufficientPayable {
            available: 0,
            requested: 1
        })
    );
    b.apply(&post(&s, 2_000, 100)?);
    assert_eq!(balance(&b, 0, Account::Paid), 1_900);
    // A 33.33 refund after payout: round(2000 × 3333 / 10000) = 666.6 -> 667 of debt.
    let r = clawback(&s, &mut c, 3_333, balance(&b, 0, Account::Payable))?;
    assert_eq!((r.reversed_minor, r.carry_forward_minor), (667, 667));
    b.apply(&r.posting);
    // The rest of the sale: exactly the remaining 1333, never a unit more or less.
    let r = clawback(&s, &mut c, 10_000, balance(&b, 0, Account::Payable))?;
    assert_eq!(r.reversed_minor, 1_333);
    b.apply(&r.posting);
    assert_eq!(c.recovered_minor, 2_000);
    assert_eq!(debt(balance(&b, 0, Account::Payable)), 2_000);
    // A second full clawback recovers nothing.
    assert_eq!(clawback(&s, &mut c, 10_000, -2_000)?.reversed_minor, 0);
    assert!(b.totals().values().all(|v| *v == 0));
    Ok(())
}

fn posted(gross: i64, fee: i64) -> PostedItem {
    PostedItem {
        gross_minor: gross,
        fee_minor: fee,
        ..PostedItem::default()
    }
}

/// Accrues `amount` on a `sale`, releases it and pays all of it out with `fee`.
fn paid_out(b: &mut Balances, amount: i64, sale: i64, fee: i64) -> Result<CommissionState, LedgerError> {
    let s = scope(0);
    let mut c = CommissionState::accrued(amount, sale);
    b.apply(&accrue(&s, amount)?);
    b.apply(&release(&s, &mut c));
    b.apply(&reserve(&s, balance(b, 0, Account::Payable), amount)?);
    b.apply(&post(&s, amount, fee)?);
    Ok(c)
}

fn all_zero(b: &Balances) -> bool {
    Account::ALL.into_iter().all(|a| balance(b, 0, a) == 0)
}

#[test]
fn transfer_reversal_pays_debt_first_then_recovers() -> Result<(), LedgerError> {
    let s = scope(0);
    // 2,000 paid out as 1,900 (fee 100); 1,000 of it comes back with its fee share
    // round(100 × 1000 / 1900) = 52.6 -> 53: 1,053 of commission undone, 300 of it pays the debt.
    let item = posted(2_000, 100);
    let t = transfer_reversal(&s, -300, 1_000, &item)?;
    assert_eq!(
        (t.fee_returned_minor, t.settled_debt_minor, t.recovered_minor),
        (53, 300, 753)
    );
    assert!(t.posting.is_balanced());
    assert_eq!(
        (
            t.posting.delta(Account::Paid),
            t.posting.delta(Account::Fee),
            t.posting.delta(Account::Payable),
            t.posting.delta(Account::Expense)
        ),
        (-1_000, -53, 300, 753)
    );
    // Example 4: beyond the net not yet returned is refused, whole or after a partial return.
    assert_eq!(
        transfer_reversal(&s, 0, 2_000, &item),
        Err(LedgerError::ExceedsReturnable {
            returnable: 1_900,
            requested: 2_000
        })
    );
    let partly = PostedItem {
        returned_minor: 1_000,
        fee_returned_minor: 53,
        ..item
    };
    assert_eq!(
        transfer_reversal(&s, 0, 901, &partly),
        Err(LedgerError::ExceedsReturnable {
            returnable: 900,
            requested: 901
        })
    );
    assert_eq!(transfer_reversal(&s, 0, 0, &item), Err(LedgerError::NonPositive));
    // An item whose fee took everything has nothing to return.
    assert!(matches!(
        transfer_reversal(&s, 0, 1, &posted(500, 500)),
        Err(LedgerError::ExceedsReturnable { returnable: 0, .. })
    ));
    Ok(())
}

#[test]
fn a_full_reversal_undoes_the_commission_fee_included() -> Result<(), LedgerError> {
    // Example 1: 4,000 paid out as 3,800 (5 % fee = 200), Stripe reverses all 3,800.
    let s = scope(0);
    let mut b = Balances::default();
    let mut c = paid_out(&mut b, 4_000, 40_000, 200)?;
    assert_eq!(
        (balance(&b, 0, Account::Paid), balance(&b, 0, Account::Fee)),
        (3_800, 200)
    );
    let t = transfer_reversal(&s, balance(&b, 0, Account::Payable), 3_800, &posted(4_000, 200))?;
    assert_eq!(
        (t.fee_returned_minor, t.settled_debt_minor, t.recovered_minor),
        (200, 0, 4_000)
    );
    let mut states = [c];
    assert_eq!(allocate_recovery(&mut states, t.recovered_minor), vec![4_000]);
    c = states[0];
    assert_eq!(c.recovered_minor, 4_000, "the whole commission is recovered");
    b.apply(&t.posting);
    // The owner then claws back a refund of the whole sale: nothing is left to reverse.
    assert_eq!(reversal_target(&c, 40_000)?, 4_000);
    let r = clawback(&s, &mut c, 40_000, balance(&b, 0, Account::Payable))?;
    assert_eq!((r.reversed_minor, r.carry_forward_minor), (0, 0));
    assert!(r.posting.is_empty());
    b.apply(&r.posting);
    // paid 0, fee 0, payable 0, expense 0 (accrual −4,000 + recovery 4,000), debt 0.
    assert!(all_zero(&b), "{b:?}");
    assert_eq!(debt(balance(&b, 0, Account::Payable)), 0);
    Ok(())
}

#[test]
fn a_reversal_after_a_clawback_settles_the_whole_debt() -> Result<(), LedgerError> {
    // Example 2: 2,000 paid out as 1,950 (2.5 % fee = 50); the whole sale is clawed back first.
    let s = scope(0);
    let mut b = Balances::default();
    let mut c = paid_out(&mut b, 2_000, 10_000, 50)?;
    let r = clawback(&s, &mut c, 10_000, balance(&b, 0, Account::Payable))?;
    assert_eq!((r.reversed_minor, r.carry_forward_minor), (2_000, 2_000));
    b.apply(&r.posting);
    assert_eq!(debt(balance(&b, 0, Account::Payable)), 2_000);
    // Stripe reverses all 1,950: with the fee's 50 it settles the 2,000 of debt, recovers nothing.
    let t = transfer_reversal(&s, balance(&b, 0, Account::Payable), 1_950, &posted(2_000, 50))?;
    assert_eq!(
        (t.fee_returned_minor, t.settled_debt_minor, t.recovered_minor),
        (50, 2_000, 0)
    );
    let mut states = [c];
    assert_eq!(allocate_recovery(&mut states, t.recovered_minor), vec![0]);
    b.apply(&t.posting);
    assert_eq!(debt(balance(&b, 0, Account::Payable)), 0);
    assert!(all_zero(&b), "payable, paid, fee and expense all 0: {b:?}");
    Ok(())
}

#[test]
fn partial_reversals_return_exactly_the_fee() -> Result<(), LedgerError> {
    // Example 3: the 3,800 of example 1 comes back as 1,000 then 2,800.
    let s = scope(0);
    let mut b = Balances::default();
    let c = paid_out(&mut b, 4_000, 40_000, 200)?;
    let mut item = posted(4_000, 200);
    let mut states = [c];
    let mut fee_back = Vec::new();
    for returned in [1_000, 2_800] {
        let t = transfer_reversal(&s, balance(&b, 0, Account::Payable), returned, &item)?;
        assert!(t.posting.is_balanced());
        allocate_recovery(&mut states, t.recovered_minor);
        b.apply(&t.posting);
        item.returned_minor += returned;
        item.fee_returned_minor += t.fee_returned_minor;
        fee_back.push(t.fee_returned_minor);
    }
    // round(200 × 1000 / 3800) = 52.6 -> 53, then 200 − 53 = 147.
    assert_eq!(fee_back, vec![53, 147]);
    assert_eq!(states[0].recovered_minor, 4_000);
    assert!(all_zero(&b), "{b:?}");
    // Nothing is left to return.
    assert!(matches!(
        transfer_reversal(&s, 0, 1, &item),
        Err(LedgerError::ExceedsReturnable { returnable: 0, .. })
    ));
    Ok(())
}

#[test]
fn partial_refunds_add_up_to_the_commission() -> Result<(), LedgerError> {
    // 1 unit of commission on a 3-unit sale refunded one unit at a time: 0, 1, 0 (half-even).
    let s = scope(0);
    let mut c = CommissionState::accrued(1, 3);
    let steps: Vec<i64> = [1, 2, 3]
        .into_iter()
        .map(|total| clawback(&s, &mut c, total, 0).map(|r| r.reversed_minor))
        .collect::<Result<_, _>>()?;
    assert_eq!(steps.iter().sum::<i64>(), 1);
    assert_eq!(c.held_minor, 0);
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Accrue { enrollment: usize, amount: i64, sale: i64 },
    Release { commission: usize },
    Clawback { commission: usize, refund: i64, full: bool },
    Reserve { enrollment: usize, gross: i64, all: bool },
    Post { item: usize, fee_bps: u32 },
    Void { item: usize },
    TransferReversal { item: usize, returned: i64, full: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..3, 0i64..50_000, 1i64..200_000).prop_map(|(enrollment, amount, sale)| Op::Accrue { enrollment, amount, sale }),
        2 => (0usize..40).prop_map(|commission| Op::Release { commission }),
        2 => (0usize..40, 1i64..200_000, any::<bool>()).prop_map(|(commission, refund, full)| Op::Clawback { commission, refund, full }),
        2 => (0usize..3, 1i64..60_000, any::<bool>()).prop_map(|(enrollment, gross, all)| Op::Reserve { enrollment, gross, all }),
        1 => (0usize..20, 0u32..3_000).prop_map(|(item, fee_bps)| Op::Post { item, fee_bps }),
        1 => (0usize..20).prop_map(|item| Op::Void { item }),
        2 => (0usize..20, 1i64..60_000, any::<bool>()).prop_map(|(item, returned, full)| Op::TransferReversal { item, returned, full }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemState {
    Reserved,
    Posted { item: PostedItem },
    Voided,
}

/// A model of the service: the same functions, applied to in-memory state.
#[derive(Default)]
struct Book {
    postings: Vec<Posting>,
    balances: Balances,
    commissions: Vec<(usize, CommissionState, i64)>, // (enrollment, state, refunded total)
    items: Vec<(usize, i64, ItemState)>,             // (enrollment, gross, state)
}

impl Book {
    fn record(&mut self, posting: Posting) -> Result<(), TestCaseError> {
        prop_assert!(posting.is_balanced(), "unbalanced posting {posting:?}");
        prop_assert!(posting.entries.iter().all(|e| e.amount_minor != 0));
        self.balances.apply(&posting);
        self.postings.push(posting);
        Ok(())
    }

    fn payable(&self, enrollment: usize) -> i64 {
        balance(&self.balances, enrollment, Account::Payable)
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        // Indices pick among what exists, so later ops mostly act on earlier ones.
        let commission_of = |i: usize| i % self.commissions.len().max(1);
        let item_of = |i: usize| i % self.items.len().max(1);
        let op = match op {
            Op::Release { commission } => Op::Release {
                commission: commission_of(commission),
            },
            Op::Clawback {
                commission,
                refund,
                full,
            } => Op::Clawback {
                commission: commission_of(commission),
                refund,
                full,
            },
            Op::Post { item, fee_bps } => Op::Post {
                item: item_of(item),
                fee_bps,
            },
            Op::Void { item } => Op::Void { item: item_of(item) },
            Op::TransferReversal { item, returned, full } => Op::TransferReversal {
                item: item_of(item),
                returned,
                full,
            },
            other => other,
        };
        match op {
            Op::Accrue {
                enrollment,
                amount,
                sale,
            } => {
                let posting = accrue(&scope(enrollment), amount).map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.record(posting)?;
                self.commissions
                    .push((enrollment, CommissionState::accrued(amount, sale), 0));
            }
            Op::Release { commission } => {
                if let Some((enrollment, mut state, refunded)) = self.commissions.get(commission).copied() {
                    let posting = release(&scope(enrollment), &mut state);
                    self.commissions[commission] = (enrollment, state, refunded);
                    self.record(posting)?;
                }
            }
            Op::Clawback {
                commission,
                refund,
                full,
            } => {
                if let Some((enrollment, mut state, refunded)) = self.commissions.get(commission).copied() {
                    let remaining = state.sale_minor - refunded;
                    let refund = if full { remaining } else { refund };
                    if refund <= 0 || refund > remaining {
                        return Ok(()); // attribution refuses a clawback beyond what remains
                    }
                    let total = refunded + refund;
                    let before = state.recovered_minor;
                    let r = clawback(&scope(enrollment), &mut state, total, self.payable(enrollment))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(state.recovered_minor, before + r.reversed_minor);
                    prop_assert!(r.reversed_minor >= 0 && r.carry_forward_minor >= 0);
                    prop_assert!(r.carry_forward_minor <= r.reversed_minor);
                    self.commissions[commission] = (enrollment, state, total);
                    self.record(r.posting)?;
                }
            }
            Op::Reserve { enrollment, gross, all } => {
                let payable = self.payable(enrollment);
                let gross = if all && payable > 0 { payable } else { gross };
                match reserve(&scope(enrollment), payable, gross) {
                    Ok(posting) => {
                        self.record(posting)?;
                        prop_assert!(self.payable(enrollment) >= 0, "a reservation took payable below zero");
                        self.items.push((enrollment, gross, ItemState::Reserved));
                    }
                    Err(LedgerError::InsufficientPayable { .. }) => prop_assert!(gross > payable),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Op::Post { item, fee_bps } => {
                if let Some((enrollment, gross, ItemState::Reserved)) = self.items.get(item).copied() {
                    let fee = amba_core::rounding::apply_bps(gross, fee_bps).unwrap_or(0);
                    let posting =
                        post(&scope(enrollment), gross, fee).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    self.record(posting)?;
                    self.items[item].2 = ItemState::Posted {
                        item: PostedItem {
                            gross_minor: gross,
                            fee_minor: fee,
                            ..PostedItem::default()
                        },
                    };
                }
            }
            Op::Void { item } => {
                if let Some((enrollment, gross, ItemState::Reserved)) = self.items.get(item).copied() {
                    self.record(void(&scope(enrollment), gross))?;
                    self.items[item].2 = ItemState::Voided;
                }
            }
            Op::TransferReversal { item, returned, full } => {
                if let Some((enrollment, _, ItemState::Posted { item: posted })) = self.items.get(item).copied() {
                    let returned = if full {
                        posted.returnable_minor().max(1)
                    } else {
                        returned
                    };
                    let payable = self.payable(enrollment);
                    match transfer_reversal(&scope(enrollment), payable, returned, &posted) {
                        Ok(t) => {
                            let fee_back = t.fee_returned_minor;
                            prop_assert!(fee_back >= 0 && fee_back <= posted.fee_minor - posted.fee_returned_minor);
                            prop_assert!(t.settled_debt_minor >= 0 && t.recovered_minor >= 0);
                            prop_assert_eq!(t.settled_debt_minor + t.recovered_minor, returned + fee_back);
                            prop_assert!(t.settled_debt_minor <= debt(payable));
                            let mut released: Vec<usize> = (0..self.commissions.len())
                                .filter(|i| self.commissions[*i].0 == enrollment && self.commissions[*i].1.released)
                                .collect();
                            released.sort();
                            let mut states: Vec<CommissionState> =
                                released.iter().map(|i| self.commissions[*i].1).collect();
                            let shares = allocate_recovery(&mut states, t.recovered_minor);
                            prop_assert_eq!(
                                shares.iter().sum::<i64>(),
                                t.recovered_minor,
                                "recovery not fully allocated"
                            );
                            for (i, state) in released.into_iter().zip(states) {
                                self.commissions[i].1 = state;
                            }
                            self.record(t.posting)?;
                            let after = PostedItem {
                                returned_minor: posted.returned_minor + returned,
                                fee_returned_minor: posted.fee_returned_minor + fee_back,
                                ..posted
                            };
                            if after.returnable_minor() == 0 {
                                prop_assert_eq!(
                                    after.fee_returned_minor,
                                    after.fee_minor,
                                    "a full reversal returns the whole fee"
                                );
                            }
                            self.items[item].2 = ItemState::Posted { item: after };
                        }
                        Err(LedgerError::ExceedsReturnable { .. }) => {
                            prop_assert!(returned > posted.returnable_minor())
                        }
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        // Replay from the postings equals the incrementally kept balances.
        let mut stored = self.balances.clone();
        stored.0.retain(|_, v| *v != 0);
        prop_assert_eq!(Balances::replay(&self.postings), stored);
        // Conservation: all accounts of a currency sum to zero.
        prop_assert!(self.balances.totals().values().all(|v| *v == 0));
        // Nothing recovered twice, and commission expense = accrued − recovered, to the unit.
        let mut owed = 0i64;
        for (enrollment, c, refunded) in &self.commissions {
            prop_assert!(
                (0..=c.amount_minor).contains(&c.recovered_minor),
                "recovered twice: {c:?}"
            );
            prop_assert!(c.held_minor >= 0);
            if *refunded == c.sale_minor {
                prop_assert_eq!(c.recovered_minor, c.amount_minor, "a full refund must reverse exactly");
            }
            let _ = enrollment;
            owed += c.amount_minor - c.recovered_minor;
        }
        let expense: i64 = (0..3).map(|e| balance(&self.balances, e, Account::Expense)).sum();
        prop_assert_eq!(-expense, owed);
        // Held per enrollment = what the commissions still hold; reserved never negative.
        for e in 0..3 {
            let held: i64 = self
                .commissions
                .iter()
                .filter(|(en, ..)| *en == e)
                .map(|(_, c, _)| c.held_minor)
                .sum();
            prop_assert_eq!(balance(&self.balances, e, Account::Held), held);
            let in_flight: i64 = self
                .items
                .iter()
                .filter(|(en, _, s)| *en == e && *s == ItemState::Reserved)
                .map(|(_, g, _)| *g)
                .sum();
            prop_assert_eq!(balance(&self.balances, e, Account::Reserved), in_flight);
            prop_assert!(balance(&self.balances, e, Account::Paid) >= 0);
            // Paid and fee per enrollment = what posted items paid and kept, less what came back.
            let (mut paid, mut fee) = (0, 0);
            for (en, _, s) in &self.items {
                if let (true, ItemState::Posted { item }) = (*en == e, s) {
                    paid += item.net_minor() - item.returned_minor;
                    fee += item.fee_minor - item.fee_returned_minor;
                }
            }
            prop_assert_eq!(balance(&self.balances, e, Account::Paid), paid);
            prop_assert_eq!(balance(&self.balances, e, Account::Fee), fee);
            prop_assert!(fee >= 0, "the fee account went negative");
            // Every commission recovered, every transfer returned, nothing in flight: the
            // affiliate owes nothing and the platform kept no fee (a reversal returns it).
            let all_recovered = self
                .commissions
                .iter()
                .filter(|(en, ..)| *en == e)
                .all(|(_, c, _)| c.recovered_minor == c.amount_minor);
            let all_returned = self.items.iter().filter(|(en, ..)| *en == e).all(|(_, _, s)| match s {
                ItemState::Posted { item } => item.returnable_minor() == 0,
                ItemState::Voided => true,
                ItemState::Reserved => false,
            });
            if all_recovered && all_returned {
                prop_assert_eq!((self.payable(e), fee), (0, 0), "left over after undoing everything");
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_sequences_keep_the_ledger_whole(ops in proptest::collection::vec(op(), 1..80)) {
        let mut book = Book::default();
        for op in ops {
            book.step(op)?;
            book.check()?;
        }
    }

    #[test]
    fn cumulative_partial_reversals_return_exactly_the_fee(gross in 1i64..1_000_000, fee_bps in 0u32..10_000, cuts in proptest::collection::vec(1i64..1_000_000, 1..8), debt_minor in 0i64..100_000) {
        let s = scope(0);
        let fee = amba_core::rounding::apply_bps(gross, fee_bps).unwrap_or(0);
        let mut item = PostedItem { gross_minor: gross, fee_minor: fee, ..PostedItem::default() };
        let mut payable = -debt_minor;
        let (mut fee_back, mut undone) = (0, 0);
        for cut in cuts.into_iter().chain([i64::MAX]) {
            let returned = cut.min(item.returnable_minor());
            if returned == 0 {
                break;
            }
            let t = transfer_reversal(&s, payable, returned, &item).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(t.posting.is_balanced());
            prop_assert!(t.fee_returned_minor >= 0);
            payable += t.settled_debt_minor;
            prop_assert!(payable <= 0);
            fee_back += t.fee_returned_minor;
            undone += t.settled_debt_minor + t.recovered_minor;
            item.returned_minor += returned;
            item.fee_returned_minor += t.fee_returned_minor;
        }
        // Whatever the cuts: all of the net back returns all of the fee, the whole gross undone.
        prop_assert_eq!(item.returned_minor, gross - fee);
        prop_assert_eq!(fee_back, fee);
        prop_assert_eq!(undone, gross);
    }

    #[test]
    fn cumulative_partial_refunds_never_lose_a_unit(amount in 0i64..1_000_000, sale in 1i64..1_000_000, cuts in proptest::collection::vec(1i64..1_000_000, 1..8)) {
        let s = scope(0);
        let mut c = CommissionState::accrued(amount, sale);
        let mut refunded = 0;
        let mut reversed = 0;
        for cut in cuts {
            refunded = (refunded + cut).min(sale);
            let r = clawback(&s, &mut c, refunded, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(r.posting.is_balanced());
            reversed += r.reversed_minor;
        }
        let r = clawback(&s, &mut c, sale, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
        reversed += r.reversed_minor;
        prop_assert_eq!(reversed, amount);
    }
}
