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

#[test]
fn transfer_reversal_pays_debt_first_then_recovers() -> Result<(), LedgerError> {
    let s = scope(0);
    let t = transfer_reversal(&s, -300, 1_000, 1_900)?;
    assert_eq!((t.settled_debt_minor, t.recovered_minor), (300, 700));
    assert!(t.posting.is_balanced());
    assert!(matches!(
        transfer_reversal(&s, 0, 2_000, 1_900),
        Err(LedgerError::ExceedsReturnable { .. })
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
    Reserve { enrollment: usize, gross: i64 },
    Post { item: usize, fee_bps: u32 },
    Void { item: usize },
    TransferReversal { item: usize, returned: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..3, 0i64..50_000, 1i64..200_000).prop_map(|(enrollment, amount, sale)| Op::Accrue { enrollment, amount, sale }),
        2 => (0usize..40).prop_map(|commission| Op::Release { commission }),
        2 => (0usize..40, 1i64..200_000, any::<bool>()).prop_map(|(commission, refund, full)| Op::Clawback { commission, refund, full }),
        2 => (0usize..3, 1i64..60_000).prop_map(|(enrollment, gross)| Op::Reserve { enrollment, gross }),
        1 => (0usize..20, 0u32..3_000).prop_map(|(item, fee_bps)| Op::Post { item, fee_bps }),
        1 => (0usize..20).prop_map(|item| Op::Void { item }),
        1 => (0usize..20, 1i64..60_000).prop_map(|(item, returned)| Op::TransferReversal { item, returned }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemState {
    Reserved,
    Posted { net: i64, returned: i64 },
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
            Op::Reserve { enrollment, gross } => {
                let payable = self.payable(enrollment);
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
                        net: gross - fee,
                        returned: 0,
                    };
                }
            }
            Op::Void { item } => {
                if let Some((enrollment, gross, ItemState::Reserved)) = self.items.get(item).copied() {
                    self.record(void(&scope(enrollment), gross))?;
                    self.items[item].2 = ItemState::Voided;
                }
            }
            Op::TransferReversal { item, returned } => {
                if let Some((enrollment, _, ItemState::Posted { net, returned: before })) =
                    self.items.get(item).copied()
                {
                    let payable = self.payable(enrollment);
                    match transfer_reversal(&scope(enrollment), payable, returned, net - before) {
                        Ok(t) => {
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
                            self.items[item].2 = ItemState::Posted {
                                net,
                                returned: before + returned,
                            };
                        }
                        Err(LedgerError::ExceedsReturnable { .. }) => prop_assert!(returned > net - before),
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
