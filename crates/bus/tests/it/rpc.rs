use amba_bus::rpc::{RpcClient, RpcServer};
use amba_core::{ApiError, ErrorCode};
use amba_proto::Method;
use amba_proto::wire::{Principal, VerifyTokenRequest};

const VERIFY: Method<VerifyTokenRequest, Principal> = Method::new("probe", "verify");
const LOCAL_VERIFY: Method<VerifyTokenRequest, Principal> = Method::new("local-probe", "verify");
use amba_testkit::test_bus;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn replies_carry_results_and_typed_errors() -> anyhow::Result<()> {
    let bus = test_bus().await?;
    let server = RpcServer::new("probe").route(VERIFY, |request: VerifyTokenRequest| async move {
        match request.token.as_str() {
            "good" => Ok(Principal {
                org_id: "org_1".into(),
                account_id: "acc_1".into(),
                token_id: "tok_1".into(),
            }),
            _ => Err(ApiError::conflict("that token is busy").with_details(serde_json::json!({"retry": false}))),
        }
    });
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.serve(bus.nats.clone(), bus.ns.clone(), stop.clone()));
    let client = RpcClient::new(bus.nats.clone(), bus.ns.clone());
    // The subscription is live once ping answers.
    amba_testkit::eventually(std::time::Duration::from_secs(5), "server to answer", || {
        let client = client.clone();
        async move { Ok(client.ping("probe").await.ok()) }
    })
    .await?;

    let ok: Principal = client
        .call(VERIFY, &VerifyTokenRequest { token: "good".into() })
        .await?;
    assert_eq!(ok.org_id, "org_1");

    let err = client
        .call(VERIFY, &VerifyTokenRequest { token: "bad".into() })
        .await
        .err();
    let err = err.ok_or_else(|| anyhow::anyhow!("expected an error"))?;
    assert_eq!(
        (err.code, err.status, err.message.as_str()),
        (ErrorCode::Conflict, 409, "that token is busy")
    );
    assert_eq!(err.details, serde_json::json!({"retry": false}));

    let unknown = client
        .call(
            Method::<_, Principal>::new("probe", "nope"),
            &VerifyTokenRequest::default(),
        )
        .await
        .err();
    assert_eq!(unknown.map(|e| e.code), Some(ErrorCode::NotFound));

    // Bytes that are not the method's request message are INVALID_ARGUMENT, not a crash.
    let raw = bus
        .nats
        .request(bus.ns.rpc("probe", "verify"), vec![0xff, 0xff, 0xff].into())
        .await?;
    let reply = <amba_proto::wire::Reply as amba_proto::Message>::decode(raw.payload)?;
    let code = match reply.result {
        Some(amba_proto::wire::reply::Result::Error(e)) => e.code,
        other => anyhow::bail!("expected an error reply, got {other:?}"),
    };
    assert_eq!(code, "INVALID_ARGUMENT");

    let absent = client
        .call(
            Method::<_, Principal>::new("nobody", "verify"),
            &VerifyTokenRequest::default(),
        )
        .await
        .err();
    assert_eq!(absent.map(|e| e.code), Some(ErrorCode::Unavailable));

    stop.cancel();
    serving.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    amba_bus::streams::delete_event_streams(&bus.js, &bus.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// A client preferring local calls reaches a server of its own process without NATS, with the
/// same replies and typed errors; once that server stops it goes over NATS again.
#[tokio::test]
async fn calls_to_a_server_of_this_process_stay_in_it() -> anyhow::Result<()> {
    let bus = test_bus().await?;
    let server = RpcServer::new("local-probe").route(LOCAL_VERIFY, |request: VerifyTokenRequest| async move {
        match request.token.as_str() {
            "good" => Ok(Principal {
                org_id: "org_local".into(),
                ..Principal::default()
            }),
            _ => Err(ApiError::conflict("that token is busy")),
        }
    });
    let local = RpcClient::new(bus.nats.clone(), bus.ns.clone()).preferring_local();
    assert!(!local.calls_locally("local-probe"), "nothing serves it yet");
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.serve(bus.nats.clone(), bus.ns.clone(), stop.clone()));
    amba_testkit::eventually(std::time::Duration::from_secs(5), "server to register", || {
        let local = local.clone();
        async move { Ok(local.calls_locally("local-probe").then_some(())) }
    })
    .await?;
    // A client not preferring local calls never calls locally.
    assert!(!RpcClient::new(bus.nats.clone(), bus.ns.clone()).calls_locally("local-probe"));

    let ok: Principal = local
        .call(LOCAL_VERIFY, &VerifyTokenRequest { token: "good".into() })
        .await?;
    assert_eq!(ok.org_id, "org_local");
    let err = local
        .call(LOCAL_VERIFY, &VerifyTokenRequest { token: "bad".into() })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("expected an error"))?;
    assert_eq!(
        (err.code, err.status, err.message.as_str()),
        (ErrorCode::Conflict, 409, "that token is busy")
    );
    let unknown = local
        .call(
            Method::<_, Principal>::new("local-probe", "nope"),
            &VerifyTokenRequest::default(),
        )
        .await
        .err();
    assert_eq!(unknown.map(|e| e.code), Some(ErrorCode::NotFound));

    stop.cancel();
    serving.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(!local.calls_locally("local-probe"), "a stopped server is unregistered");
    let gone = local
        .call(LOCAL_VERIFY, &VerifyTokenRequest { token: "good".into() })
        .await
        .err();
    assert_eq!(
        gone.map(|e| e.code),
        Some(ErrorCode::Unavailable),
        "over NATS: nobody answers"
    );
    amba_bus::streams::delete_event_streams(&bus.js, &bus.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Over NATS a call waits [`amba_bus::rpc::ANSWER_WITHIN`] whatever the NATS client's own request
/// timeout; in this process it waits as long as its client allows, so a batch of reports queued
/// behind a burst is slow rather than failed.
#[tokio::test]
async fn calls_wait_for_slow_answers_as_long_as_their_client_allows() -> anyhow::Result<()> {
    const SLOW: Method<VerifyTokenRequest, Principal> = Method::new("slow-probe", "verify");
    // A NATS client that would give up on any request after 200 ms by itself.
    let nats = async_nats::ConnectOptions::new()
        .request_timeout(Some(std::time::Duration::from_millis(200)))
        .connect(amba_testkit::nats_url())
        .await?;
    let ns = amba_testkit::unique_namespace();
    let server = RpcServer::new("slow-probe").route(SLOW, |_: VerifyTokenRequest| async move {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        Ok(Principal {
            org_id: "org_slow".into(),
            ..Principal::default()
        })
    });
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.serve(nats.clone(), ns.clone(), stop.clone()));
    let over_nats = RpcClient::new(nats.clone(), ns.clone());
    let local = RpcClient::new(nats.clone(), ns.clone()).preferring_local();
    amba_testkit::eventually(std::time::Duration::from_secs(5), "server to answer", || {
        let (over_nats, local) = (over_nats.clone(), local.clone());
        async move { Ok((over_nats.ping("slow-probe").await.is_ok() && local.calls_locally("slow-probe")).then_some(())) }
    })
    .await?;
    let hasty = std::time::Duration::from_millis(100);
    let answered = |answer: Result<Principal, ApiError>| answer.map(|p| p.org_id).ok();

    let slow = over_nats.call(SLOW, &VerifyTokenRequest::default()).await;
    assert_eq!(
        answered(slow).as_deref(),
        Some("org_slow"),
        "over NATS, past the client's 200 ms"
    );
    // The local bound leaves calls over NATS alone.
    let slow = over_nats
        .with_local_timeout(hasty)
        .call(SLOW, &VerifyTokenRequest::default())
        .await;
    assert_eq!(
        answered(slow).as_deref(),
        Some("org_slow"),
        "over NATS with a short local bound"
    );

    let slow = local.clone().call(SLOW, &VerifyTokenRequest::default()).await;
    assert_eq!(answered(slow).as_deref(), Some("org_slow"), "in this process");
    let err = local
        .with_local_timeout(hasty)
        .call(SLOW, &VerifyTokenRequest::default())
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a client bound to 100 ms got an answer that takes 600 ms"))?;
    assert_eq!(
        (err.code, err.message.as_str()),
        (ErrorCode::Unavailable, "slow-probe did not answer in time")
    );
    stop.cancel();
    serving.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
