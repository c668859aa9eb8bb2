//! SQL of the enrollment schema. Functions take a connection so callers choose the transaction.

pub mod enrollments;
pub mod identity;
pub mod invitations;
pub mod programs;

/// Fault injection for the fault suite's scenario 8 (`AMBA_FAILPOINTS=
/// enrollment-before-row-lock=50%return(300)`): half the transactions wait between their start
/// (their `now()`) and their row lock, so concurrent changes commit in another order than they
/// began.
pub async fn fault_pause_before_row_lock() {
    amba_bus::faults::pause_at("enrollment-before-row-lock").await;
}
