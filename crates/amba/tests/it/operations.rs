//! The `amba` binary's operator commands, run as an operator would run them.

use amba_testkit::{nats_url, test_bus};
use std::process::Command;

fn amba(namespace: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_amba"))
        .args(args)
        .env("AMBA_NAMESPACE", namespace)
        .env("AMBA_NATS_URL", nats_url())
        .output()
}

async fn stream_exists(bus: &amba_bus::Bus, owner: &str) -> bool {
    bus.js.get_stream(bus.ns.events_stream(owner)).await.is_ok()
}

#[tokio::test]
async fn streams_delete_needs_the_namespace_confirmed_and_removes_only_its_streams() -> anyhow::Result<()> {
    let doomed = test_bus().await?;
    let bystander = test_bus().await?;
    let namespace = doomed.ns.as_str().to_owned();

    let refused = amba(&namespace, &["streams", "delete", "--confirm", "someone-else"])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing was deleted"));
    assert!(
        stream_exists(&doomed, "attribution").await,
        "a refused delete deletes nothing"
    );

    let deleted = amba(&namespace, &["streams", "delete", "--confirm", &namespace])?;
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    for (owner, _) in amba_bus::streams::EVENT_STREAMS {
        assert!(!stream_exists(&doomed, owner).await, "{owner} stream deleted");
        assert!(
            stream_exists(&bystander, owner).await,
            "another namespace's {owner} stream kept"
        );
    }

    amba_bus::streams::delete_event_streams(&bystander.js, &bystander.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}
