//! Fault injection points for the fault suite (`AMBA_FAILPOINTS`, the `fail` crate): a named
//! point where a process can be made to wait, so a test can strike at a known moment. Nothing
//! happens unless the point is configured.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

/// How many times each point has paused, so a test knows its callers are held there.
static PAUSES: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Mutex::default);

/// Waits at the point `name` when it is configured with `return(<milliseconds>)` (optionally
/// with a probability, e.g. `50%return(300)`); returns at once otherwise.
pub async fn pause_at(name: &str) {
    let pause = (|| {
        fail::fail_point!(name, |millis| millis.and_then(|m| m.parse::<u64>().ok()));
        None
    })();
    if let Some(millis) = pause {
        tracing::warn!(point = name, millis, "fault injection: pausing");
        *PAUSES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default() += 1;
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
    }
}

/// How many times the point `name` has paused in this process (callers now waiting there
/// included).
pub fn pauses(name: &str) -> u64 {
    PAUSES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .copied()
        .unwrap_or(0)
}
