//! Fault injection points for the fault suite (`AMBA_FAILPOINTS`, the `fail` crate): a named
//! point where a process can be made to wait, so a test can strike at a known moment. Nothing
//! happens unless the point is configured.

/// Waits at the point `name` when it is configured with `return(<milliseconds>)` (optionally
/// with a probability, e.g. `50%return(300)`); returns at once otherwise.
pub async fn pause_at(name: &str) {
    let pause = (|| {
        fail::fail_point!(name, |millis| millis.and_then(|m| m.parse::<u64>().ok()));
        None
    })();
    if let Some(millis) = pause {
        tracing::warn!(point = name, millis, "fault injection: pausing");
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
    }
}
