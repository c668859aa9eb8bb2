//! The ledger export: one CSV row per posting (a movement of money) of a program, for
//! accounting. Cells are quoted and guarded against formula injection by [`amba_core::csv`].
//!
//! Each row carries the posting's signed change to every account it touches, so summing a
//! column over a program's rows gives that account's balance exactly: `held_minor`,
//! `payable_minor` (negative: debt), `reserved_minor`, `paid_minor` (the affiliates' accounts),
//! `fee_minor` (the platform fee) and `commission_minor`, the change to the commission the
//! program owes (minus its expense account: + accrual, − clawback or recovery). Postings
//! balance, so on every row the five account changes add up to `commission_minor`.

use amba_core::csv::{row, text, time};
use chrono::{DateTime, Utc};

/// The columns, in order (the header row).
pub const COLUMNS: [&str; 20] = [
    "posted_at",
    "movement_id",
    "kind",
    "level",
    "conversion_id",
    "commission_id",
    "affiliate_org_id",
    "enrollment_id",
    "amount_minor",
    "currency",
    "commission_minor",
    "held_minor",
    "payable_minor",
    "reserved_minor",
    "paid_minor",
    "fee_minor",
    "status",
    "payable_at",
    "payout_item_id",
    "reason",
];

/// One posting with what it is about, as the store reads it.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct Movement {
    pub journal_id: i64,
    pub posted_at: DateTime<Utc>,
    /// The journal's kind: accrue, release, clawback, reserve, post, void, transfer_reversal.
    pub kind: String,
    pub enrollment_id: String,
    pub affiliate_org_id: String,
    pub currency: String,
    pub held_minor: i64,
    pub payable_minor: i64,
    pub reserved_minor: i64,
    pub paid_minor: i64,
    pub fee_minor: i64,
    pub expense_minor: i64,
    /// The commission of an accrual, release or clawback.
    pub commission_id: Option<String>,
    pub conversion_id: Option<String>,
    pub level: Option<i32>,
    pub commission_amount_minor: Option<i64>,
    pub recovered_minor: Option<i64>,
    pub release_at: Option<DateTime<Utc>>,
    pub released_at: Option<DateTime<Utc>>,
    /// A release an owner asked for before the hold ended.
    pub early_release: bool,
    /// The clawback's reason, or the owner's for an early release.
    pub reason: Option<String>,
    /// The payout item of a reservation, payment, void or transfer reversal, and its status.
    pub payout_item_id: Option<String>,
    pub payout_status: Option<String>,
}

impl Movement {
    /// The kind as the export names it.
    pub fn export_kind(&self) -> &str {
        match self.kind.as_str() {
            "accrue" if self.level.unwrap_or(0) > 0 => "override",
            "accrue" => "accrual",
            "release" if self.early_release => "early_release",
            "reserve" => "payout_reserved",
            "post" => "payout_paid",
            "void" => "payout_voided",
            other => other,
        }
    }

    /// Its change to the commission the program owes.
    pub fn commission_minor(&self) -> i64 {
        self.expense_minor.saturating_neg()
    }

    /// The movement's size, never negative: the commission accrued, released or reversed, a
    /// payout item's gross, or the money a transfer reversal returned.
    pub fn amount_minor(&self) -> i64 {
        let amount = match self.kind.as_str() {
            "accrue" => self.held_minor,
            "release" => self.payable_minor,
            "clawback" => self.expense_minor,
            "reserve" => self.reserved_minor,
            "post" | "void" => self.reserved_minor.saturating_neg(),
            "transfer_reversal" => self.paid_minor.saturating_neg(),
            _ => self.commission_minor(),
        };
        amount.saturating_abs()
    }

    /// A commission's state now (held, released, or recovered in full), or a payout item's
    /// (reserved, posted, voided).
    pub fn status(&self) -> &str {
        if let Some(status) = &self.payout_status {
            return status;
        }
        match (self.commission_amount_minor, self.recovered_minor) {
            (Some(amount), Some(recovered)) if amount > 0 && recovered >= amount => "recovered",
            (Some(_), _) if self.released_at.is_some() => "released",
            (Some(_), _) => "held",
            _ => "",
        }
    }

    /// One CRLF-terminated data row.
    pub fn line(&self) -> String {
        let opt = |v: &Option<String>| text(v.as_deref().unwrap_or_default());
        row(&[
            time(self.posted_at),
            self.journal_id.to_string(),
            text(self.export_kind()),
            self.level.map(|l| l.to_string()).unwrap_or_default(),
            opt(&self.conversion_id),
            opt(&self.commission_id),
            text(&self.affiliate_org_id),
            text(&self.enrollment_id),
            self.amount_minor().to_string(),
            text(&self.currency),
            self.commission_minor().to_string(),
            self.held_minor.to_string(),
            self.payable_minor.to_string(),
            self.reserved_minor.to_string(),
            self.paid_minor.to_string(),
            self.fee_minor.to_string(),
            text(self.status()),
            self.released_at.or(self.release_at).map(time).unwrap_or_default(),
            opt(&self.payout_item_id),
            opt(&self.reason),
        ])
    }
}

/// The header row, CRLF-terminated.
pub fn header() -> String {
    row(&COLUMNS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(micros).unwrap_or_default()
    }

    fn accrual() -> Movement {
        Movement {
            journal_id: 7,
            posted_at: at(1_767_607_200_000_000),
            kind: "accrue".into(),
            enrollment_id: "enr_1".into(),
            affiliate_org_id: "org_a".into(),
            currency: "USD".into(),
            held_minor: 2_000,
            expense_minor: -2_000,
            commission_id: Some("com_1".into()),
            conversion_id: Some("cnv_1".into()),
            level: Some(0),
            commission_amount_minor: Some(2_000),
            recovered_minor: Some(0),
            release_at: Some(at(1_768_212_000_000_000)),
            ..Default::default()
        }
    }

    #[test]
    fn an_accrual_row_has_every_column_in_order() {
        assert_eq!(header().trim_end().split(',').count(), COLUMNS.len());
        assert_eq!(
            accrual().line(),
            "2026-01-05T10:00:00.000Z,7,accrual,0,cnv_1,com_1,org_a,enr_1,2000,USD,2000,2000,0,0,0,0,held,\
             2026-01-12T10:00:00.000Z,,\r\n"
        );
    }

    #[test]
    fn kinds_amounts_and_statuses() {
        let overriding = Movement {
            level: Some(1),
            ..accrual()
        };
        assert_eq!(overriding.export_kind(), "override");
        let clawback = Movement {
            kind: "clawback".into(),
            held_minor: 0,
            payable_minor: -500,
            expense_minor: 500,
            recovered_minor: Some(2_000),
            released_at: Some(at(1_767_700_000_000_000)),
            reason: Some("=refund, partly".into()),
            ..accrual()
        };
        assert_eq!(
            (
                clawback.export_kind(),
                clawback.amount_minor(),
                clawback.commission_minor()
            ),
            ("clawback", 500, -500)
        );
        assert_eq!(clawback.status(), "recovered");
        assert!(
            clawback
                .line()
                .ends_with(",recovered,2026-01-06T11:46:40.000Z,,\"'=refund, partly\"\r\n")
        );
        let early = Movement {
            kind: "release".into(),
            held_minor: -2_000,
            payable_minor: 2_000,
            expense_minor: 0,
            early_release: true,
            released_at: Some(at(1_767_700_000_000_000)),
            ..accrual()
        };
        assert_eq!(
            (early.export_kind(), early.amount_minor(), early.status()),
            ("early_release", 2_000, "released")
        );
        let paid = Movement {
            kind: "post".into(),
            held_minor: 0,
            reserved_minor: -1_500,
            paid_minor: 1_350,
            fee_minor: 150,
            expense_minor: 0,
            commission_id: None,
            conversion_id: None,
            level: None,
            commission_amount_minor: None,
            recovered_minor: None,
            release_at: None,
            payout_item_id: Some("pit_1".into()),
            payout_status: Some("posted".into()),
            ..accrual()
        };
        assert_eq!(
            (paid.export_kind(), paid.amount_minor(), paid.status()),
            ("payout_paid", 1_500, "posted")
        );
        let reversal = Movement {
            kind: "transfer_reversal".into(),
            reserved_minor: 0,
            paid_minor: -1_350,
            fee_minor: -150,
            expense_minor: 1_500,
            ..paid.clone()
        };
        assert_eq!((reversal.amount_minor(), reversal.commission_minor()), (1_350, -1_500));
        // A posting balances: the account changes add up to the commission change.
        for m in [accrual(), clawback, early, paid, reversal] {
            let accounts = m.held_minor + m.payable_minor + m.reserved_minor + m.paid_minor + m.fee_minor;
            assert_eq!(accounts, m.commission_minor(), "{}", m.kind);
        }
    }
}
