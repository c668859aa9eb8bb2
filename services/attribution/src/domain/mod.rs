//! Pure rules of attribution: validating a report, deciding who gets the credit, the
//! commission a conversion accrues when approved, and the accounting export's CSV. No I/O.

pub mod accrual;
pub mod export;
pub mod facts;
pub mod fraud;
pub mod fx;
pub mod policy;
pub mod report;
pub mod trail;
