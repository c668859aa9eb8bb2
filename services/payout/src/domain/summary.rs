//! The summary of a finished run (`payout.run_completed`): what was paid, what failed and why,
//! what the owner was charged and what went back to the owner.

use super::status::ItemStatus;
use std::collections::HashMap;

/// How many distinct failure reasons a summary names.
pub const MAX_REASONS: usize = 5;

/// One item of the run, as far as its summary cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    pub status: ItemStatus,
    pub gross_minor: i64,
    pub fee_minor: i64,
    pub debt_minor: i64,
    pub net_minor: i64,
    pub reason: Option<&'a str>,
    /// A transfer was asked for: the item was part of the charge. An item that failed before
    /// (its reservation refused) was never charged and is not a failure of the run's payment.
    pub transfer_attempted: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub paid_count: u32,
    pub paid_net_minor: i64,
    pub fee_minor: i64,
    pub debt_minor: i64,
    /// Items failed or voided after the charge.
    pub failed_count: u32,
    /// Their gross: payable again, for the next run.
    pub failed_gross_minor: i64,
    /// Distinct reasons of those failures, most frequent first (ties alphabetically), at most
    /// [`MAX_REASONS`].
    pub failure_reasons: Vec<String>,
    pub charged_minor: i64,
    pub refunded_minor: i64,
}

/// Sums a run's final items; `charged_minor` and `refunded_minor` are the run's funding.
pub fn summarize<'a>(items: impl IntoIterator<Item = Item<'a>>, charged_minor: i64, refunded_minor: i64) -> Summary {
    let mut summary = Summary {
        charged_minor,
        refunded_minor,
        ..Summary::default()
    };
    let mut reasons: HashMap<&str, u32> = HashMap::new();
    for item in items {
        match item.status {
            ItemStatus::Paid => {
                summary.paid_count = summary.paid_count.saturating_add(1);
                summary.paid_net_minor += item.net_minor;
                summary.fee_minor += item.fee_minor;
                summary.debt_minor += item.debt_minor;
            }
            ItemStatus::Failed | ItemStatus::Voided if item.transfer_attempted => {
                summary.failed_count = summary.failed_count.saturating_add(1);
                summary.failed_gross_minor += item.gross_minor;
                if let Some(reason) = item.reason.map(str::trim).filter(|r| !r.is_empty()) {
                    *reasons.entry(reason).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let mut reasons: Vec<(&str, u32)> = reasons.into_iter().collect();
    reasons.sort_by(|(a, an), (b, bn)| bn.cmp(an).then_with(|| a.cmp(b)));
    summary.failure_reasons = reasons
        .into_iter()
        .take(MAX_REASONS)
        .map(|(reason, _)| reason.to_owned())
        .collect();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(status: ItemStatus, gross: i64, reason: Option<&'static str>) -> Item<'static> {
        Item {
            status,
            gross_minor: gross,
            fee_minor: gross / 100,
            debt_minor: 10,
            net_minor: gross - gross / 100,
            reason,
            transfer_attempted: true,
        }
    }

    #[test]
    fn counts_and_sums_paid_and_failed_items() {
        let items = [
            item(ItemStatus::Paid, 2_000, None),
            item(ItemStatus::Paid, 1_000, None),
            item(ItemStatus::Failed, 800, Some("Stripe refused the transfer: no")),
            item(ItemStatus::Voided, 500, Some("Stripe has no transfer for this item")),
            // Not part of the run's outcome: skipped, never charged, or not final.
            item(
                ItemStatus::Skipped,
                300,
                Some("payable is below the program's payout threshold"),
            ),
            Item {
                transfer_attempted: false,
                ..item(ItemStatus::Failed, 700, Some("not paid: the payable balance changed"))
            },
            item(ItemStatus::Pending, 1, None),
            item(ItemStatus::Reserved, 1, None),
            item(ItemStatus::Unknown, 1, None),
        ];
        let s = summarize(items, 4_300, 1_300);
        assert_eq!(
            s,
            Summary {
                paid_count: 2,
                paid_net_minor: 1_980 + 990,
                fee_minor: 30,
                debt_minor: 20,
                failed_count: 2,
                failed_gross_minor: 1_300,
                failure_reasons: vec![
                    "Stripe has no transfer for this item".into(),
                    "Stripe refused the transfer: no".into(),
                ],
                charged_minor: 4_300,
                refunded_minor: 1_300,
            }
        );
        assert_eq!(summarize([], 0, 0), Summary::default());
    }

    #[test]
    fn reasons_are_distinct_most_frequent_first_and_at_most_five() {
        let reasons = ["f", "a", "c", "c", "b", "e", "c", "d", "b", "g", " ", "e"];
        let mut items: Vec<Item> = reasons
            .into_iter()
            .map(|r| item(ItemStatus::Failed, 1, Some(r)))
            .collect();
        items.push(item(ItemStatus::Failed, 1, None));
        let s = summarize(items, 13, 13);
        assert_eq!(s.failed_count, 13);
        assert_eq!(s.failed_gross_minor, 13);
        // c ×3, then b and e ×2 (alphabetically), then a, d, f, g ×1: a and d make five.
        assert_eq!(s.failure_reasons, ["c", "b", "e", "a", "d"]);
    }
}
