//! The accounting export: a program's conversions as CSV, quoted and guarded against formula
//! injection by [`amba_core::csv`]. Number cells are never negative.

use amba_core::csv::{text, time};
use amba_core::rounding::round_half_even;
use chrono::{DateTime, Utc};

/// The columns, in order (the header row).
pub const COLUMNS: [&str; 15] = [
    "conversion_id",
    "external_id",
    "occurred_at",
    "status",
    "affiliate_org_id",
    "enrollment_id",
    "code",
    "amount_minor",
    "currency",
    "commission_minor",
    "clawed_back_minor",
    "net_commission_minor",
    "reason",
    "decided_at",
    "refunded_minor",
];

/// One conversion as the export shows it.
pub struct ExportRow<'a> {
    pub conversion_id: &'a str,
    pub external_id: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub status: &'a str,
    pub affiliate_org_id: Option<&'a str>,
    pub enrollment_id: Option<&'a str>,
    pub code: Option<&'a str>,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub commission_minor: i64,
    /// The part of the sale refunded so far (clawbacks).
    pub refunded_minor: i64,
    pub reason: Option<&'a str>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// The header row, CRLF-terminated.
pub fn header() -> String {
    amba_core::csv::row(&COLUMNS)
}

/// One CRLF-terminated data row.
pub fn line(row: &ExportRow<'_>) -> String {
    let clawed_back = commission_clawed_back(row.commission_minor, row.refunded_minor, row.amount_minor);
    let cells = [
        text(row.conversion_id),
        text(row.external_id),
        time(row.occurred_at),
        text(row.status),
        text(row.affiliate_org_id.unwrap_or_default()),
        text(row.enrollment_id.unwrap_or_default()),
        text(row.code.unwrap_or_default()),
        row.amount_minor.to_string(),
        text(row.currency),
        row.commission_minor.to_string(),
        clawed_back.to_string(),
        (row.commission_minor - clawed_back).to_string(),
        text(row.reason.unwrap_or_default()),
        row.decided_at.map(time).unwrap_or_default(),
        row.refunded_minor.to_string(),
    ];
    amba_core::csv::row(&cells)
}

/// The commission a refund takes back, prorated exactly as the ledger reverses it:
/// `round_half_even(commission × refunded / sale)`; all of it when a zero sale is refunded.
pub fn commission_clawed_back(commission_minor: i64, refunded_minor: i64, sale_minor: i64) -> i64 {
    if refunded_minor <= 0 || commission_minor <= 0 {
        return 0;
    }
    if sale_minor <= 0 || refunded_minor >= sale_minor {
        return commission_minor;
    }
    round_half_even(
        i128::from(commission_minor) * i128::from(refunded_minor),
        i128::from(sale_minor),
    )
    .unwrap_or(commission_minor)
    .clamp(0, commission_minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clawbacks_prorate_like_the_ledger() {
        assert_eq!(commission_clawed_back(2_000, 0, 10_000), 0);
        assert_eq!(commission_clawed_back(2_000, 2_500, 10_000), 500);
        assert_eq!(commission_clawed_back(3, 5_000, 10_000), 2); // 1.5 → 2 (half-even)
        assert_eq!(commission_clawed_back(5, 5_000, 10_000), 2); // 2.5 → 2
        assert_eq!(commission_clawed_back(2_000, 10_000, 10_000), 2_000);
        assert_eq!(commission_clawed_back(0, 10_000, 10_000), 0);
    }
}
