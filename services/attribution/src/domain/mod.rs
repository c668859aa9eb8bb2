//! Pure rules of attribution: validating a report, deciding who gets the credit, and the
//! commission a conversion accrues when approved. No I/O.

pub mod accrual;
pub mod report;
