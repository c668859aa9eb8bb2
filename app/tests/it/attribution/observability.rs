//! Traces and metrics of the report path.

use super::*;

#[tokio::test]
async fn reports_continue_the_callers_trace_into_their_conversion_events() -> anyhow::Result<()> {
    // The process's telemetry, as `amba` installs it (no exporter: context still propagates).
    let _telemetry = amba_telemetry::init("amba-it", None, false)?;
    let Setup {
        sys,
        owner,
        program,
        ann_enrollment,
        ..
    } = setup(json!({})).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let mut client = grpc(&sys).await?;
    let (unary_trace, stream_trace, mcp_trace) = (
        "0af7651916cd43dd8448eb211c80319c",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "5c1e2f3a4b5c6d7e8f90a1b2c3d4e5f6",
    );

    client
        .report_conversion(in_trace(
            &owner.token,
            unary_trace,
            report(&program, "t-unary", 1_000, &code),
        )?)
        .await?;
    let items = vec![
        report(&program, "t-stream-1", 1_000, &code),
        report(&program, "t-stream-2", 1_000, &code),
    ];
    client
        .report_conversions(in_trace(&owner.token, stream_trace, futures::stream::iter(items))?)
        .await?;
    let args = json!({"program_id": program, "project_id": "web", "external_id": "t-mcp",
                      "amount_minor": 1_000, "currency": "USD", "code": code});
    let traceparent = format!("00-{mcp_trace}-00f067aa0ba902b7-01");
    let reported = owner
        .mcp
        .call_in_trace("amba_affiliate_conversion_report", args, &traceparent)
        .await?;
    assert_ne!(reported.is_error, Some(true));
    // Without a trace from the caller, the edge starts one.
    client
        .report_conversion(authed(&owner.token, report(&program, "t-none", 1_000, &code))?)
        .await?;

    let traces = eventually(std::time::Duration::from_secs(10), "five conversion events", || {
        let sys = &sys;
        async move {
            let traces = event_traces(sys, 5).await?;
            Ok((traces.len() == 5).then_some(traces))
        }
    })
    .await?;
    let trace_of = |external_id: &str| {
        traces
            .get(external_id)
            .and_then(|tp| tp.split('-').nth(1))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(trace_of("t-unary"), unary_trace);
    assert_eq!(trace_of("t-stream-1"), stream_trace);
    assert_eq!(trace_of("t-stream-2"), stream_trace);
    assert_eq!(trace_of("t-mcp"), mcp_trace);
    let fresh = trace_of("t-none");
    assert_eq!(fresh.len(), 32, "a trace the edge started: {fresh:?}");
    assert!(![unary_trace, stream_trace, mcp_trace].contains(&fresh.as_str()));
    sys.stop().await
}

#[tokio::test]
async fn metrics_count_reports_by_surface_and_outcome_and_time_the_pipeline() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        program,
        ann_enrollment,
        ..
    } = setup(json!({})).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let public = reqwest::get(format!("{}/metrics", sys.base_url())).await?;
    assert_eq!(public.status(), 404, "metrics stay off the public port");
    let before = scrape(&sys).await?;
    let mut client = grpc(&sys).await?;

    client
        .report_conversion(authed(&owner.token, report(&program, "m-1", 1_000, &code))?)
        .await?;
    client
        .report_conversion(authed(&owner.token, report(&program, "m-1", 1_000, &code))?)
        .await?;
    let refused = client
        .report_conversion(authed(&owner.token, report(&program, "m-2", -5, &code))?)
        .await;
    assert!(refused.is_err());
    let items = vec![
        report(&program, "m-3", 1_000, &code),
        report(&program, "m-4", 1_000, &code),
        report(&program, "m-1", 1_000, &code),
        report(&program, "m-5", 1_000, "nosuchcode23"),
    ];
    client
        .report_conversions(authed(&owner.token, futures::stream::iter(items))?)
        .await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "m-6",
                   "amount_minor": 1_000, "currency": "USD", "code": code}),
        )
        .await?;

    let reports = |surface: &str, outcome: &str| {
        format!("amba_conversion_reports_total{{surface=\"{surface}\",outcome=\"{outcome}\"}}")
    };
    let published_before = sample(&before, "amba_outbox_published_total");
    let after = eventually(
        std::time::Duration::from_secs(10),
        "the four events to be published",
        || {
            let sys = &sys;
            async move {
                let after = scrape(sys).await?;
                let published = sample(&after, "amba_outbox_published_total");
                Ok((published >= published_before + 4.0).then_some(after))
            }
        },
    )
    .await?;
    let delta = |series: String| sample(&after, &series) - sample(&before, &series);
    assert_eq!(delta(reports("grpc", "recorded")), 1.0);
    assert_eq!(delta(reports("grpc", "duplicate")), 1.0);
    assert_eq!(delta(reports("grpc", "INVALID_ARGUMENT")), 1.0);
    assert_eq!(delta(reports("grpc_stream", "recorded")), 2.0);
    assert_eq!(delta(reports("grpc_stream", "duplicate")), 1.0);
    assert_eq!(delta(reports("grpc_stream", "INVALID_ARGUMENT")), 1.0);
    assert_eq!(delta(reports("mcp", "recorded")), 1.0);
    // Latency of single reports, the writer's batches, and the relay's lag are histograms.
    assert_eq!(
        delta("amba_conversion_report_seconds_count{surface=\"grpc\"}".into()),
        3.0
    );
    assert!(delta("amba_writer_batch_size_count".into()) >= 1.0);
    assert!(after.contains("amba_outbox_publish_lag_seconds_bucket{le=\"0.1\"}"));
    assert!(after.contains("amba_events_consumed_total{consumer="));
    sys.stop().await
}
