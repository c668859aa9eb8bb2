//! Creates an owner, a program and `--affiliates` affiliates through MCP, as agents would.
//!
//! Anonymous signups are rate limited per client address: each affiliate signs up with its own
//! `X-Forwarded-For`, which the edge believes when started with `AMBA_TRUSTED_PROXIES=127.0.0.1`
//! (otherwise the setup waits out the limit). The owner's configuration writes (one invite per
//! affiliate) are limited per org: a refusal stops the setup with the budgets to start the
//! system with ([`crate::BUDGETS_HINT`]) instead of waiting for hours.

use crate::Options;
use amba_proto::v1::conversions_client::ConversionsClient;
use amba_proto::wire as pb;
use amba_testkit::McpClient;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Clone)]
pub struct World {
    pub owner_token: String,
    pub program_id: String,
    /// One referral code per affiliate; the first `hot` of them get half of all reports.
    pub codes: Vec<String>,
    pub hot: usize,
    /// Prefix of this run's external ids, so runs never collide.
    pub run: String,
}

/// An HTTP client that says (through `X-Forwarded-For`) it is `client_ip`.
fn http_from(client_ip: &str) -> anyhow::Result<reqwest::Client> {
    let forwarded_for = (
        reqwest::header::HeaderName::from_static("x-forwarded-for"),
        client_ip.parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers([forwarded_for].into_iter().collect())
        .build()?)
}

/// Waits out the edge's per-address rate limits (anonymous calls, token lookups) and services
/// still starting instead of failing: `call` is retried while it is refused with 429 /
/// `RATE_LIMITED` or `UNAVAILABLE`.
async fn patiently<T, F, Fut>(mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempts = 0;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e)
                if attempts < 300
                    && ["RATE_LIMITED", "429", "UNAVAILABLE"]
                        .iter()
                        .any(|c| e.to_string().contains(c)) =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Signs up an org from `client_ip`: its details and an MCP session with its token.
async fn signup(mcp_url: &str, email: String, org_name: String, client_ip: &str) -> anyhow::Result<(Value, McpClient)> {
    let http = http_from(client_ip)?;
    let anonymous = patiently(|| McpClient::connect_with(http.clone(), mcp_url, None)).await?;
    let signed_up =
        patiently(|| anonymous.ok("amba_affiliate_signup", json!({"email": email, "org_name": org_name}))).await?;
    anonymous.close().await?;
    let token = signed_up["token"].as_str().unwrap_or_default().to_owned();
    let session = patiently(|| McpClient::connect_with(http.clone(), mcp_url, Some(&token))).await?;
    Ok((signed_up, session))
}

/// Signs an affiliate up, invites it and accepts: its referral code.
async fn enroll_affiliate(
    mcp_url: &str,
    owner: &McpClient,
    program_id: &str,
    run: &str,
    n: usize,
) -> anyhow::Result<String> {
    let client_ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    let (affiliate, affiliate_mcp) = signup(
        mcp_url,
        format!("aff{n}-{run}@load.example"),
        format!("Load Affiliate {n}"),
        &client_ip,
    )
    .await?;
    let invite = owner
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program_id, "affiliate_org_id": affiliate["org_id"]}),
        )
        .await
        .map_err(budgets_hint)?;
    let accepted = affiliate_mcp
        .ok(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invite["enrollment_id"]}),
        )
        .await?;
    affiliate_mcp.close().await?;
    accepted["code"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("accepting an invite gave no code: {accepted}"))
}

/// A refusal by the owner's per-org budget, with what to do about it.
fn budgets_hint(err: anyhow::Error) -> anyhow::Error {
    if err.to_string().contains("RATE_LIMITED") {
        anyhow::anyhow!("{err}: {}", crate::BUDGETS_HINT)
    } else {
        err
    }
}

pub async fn prepare(options: &Options) -> anyhow::Result<World> {
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let mcp_url = format!("{}/mcp", options.http);
    let (owner, owner_mcp) = signup(
        &mcp_url,
        format!("owner-{run}@load.example"),
        "Load Owner".into(),
        "10.255.255.255",
    )
    .await?;
    let owner_token = owner["token"].as_str().unwrap_or_default().to_owned();
    let program = owner_mcp
        .ok(
            "amba_affiliate_programs_create",
            json!({"name": format!("Load {run}"), "currency": "USD", "commission": {"schema":1,"type":"percentage","bps":2000}}),
        )
        .await
        .map_err(budgets_hint)?;
    let program_id = program["program"]["program_id"].as_str().unwrap_or_default().to_owned();
    owner_mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program_id, "status": "active"}),
        )
        .await
        .map_err(budgets_hint)?;
    let affiliates = options.affiliates.max(1);
    let codes: Vec<String> = futures::stream::iter(0..affiliates)
        .map(|n| enroll_affiliate(&mcp_url, &owner_mcp, &program_id, &run, n))
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    owner_mcp.close().await?;

    // Wait until attribution's read model knows the codes (it follows enrollment's events).
    let mut client = ConversionsClient::connect(options.grpc.clone()).await?;
    let world = World {
        owner_token,
        program_id,
        hot: (affiliates / 100).max(1),
        codes,
        run,
    };
    for (index, code) in world.codes.iter().enumerate() {
        let mut attempt = 0;
        loop {
            let mut report = world.report(&format!("warmup-{index}-{attempt}"), 100);
            report.code.clone_from(code);
            if client.report_conversion(world.authed(report)?).await.is_ok() {
                break;
            }
            attempt += 1;
            anyhow::ensure!(attempt < 200, "the code of affiliate {index} never became usable");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(world)
}

impl World {
    /// The code a report with this external id carries: skewed, half of all reports go to the
    /// hot affiliates (the first 1 %), the rest spread over everyone.
    pub fn code_for(&self, external_id: &str) -> &str {
        // FNV-1a: cheap, stable, well spread for ids like "s3-17-42".
        let hash = external_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let pool = if hash & 1 == 0 { self.hot } else { self.codes.len() };
        let index = usize::try_from((hash >> 1) % u64::try_from(pool.max(1)).unwrap_or(1)).unwrap_or(0);
        self.codes.get(index).map(String::as_str).unwrap_or_default()
    }

    pub fn report(&self, external_id: &str, amount_minor: i64) -> pb::ReportConversionRequest {
        pb::ReportConversionRequest {
            program_id: self.program_id.clone(),
            project_id: format!("load-{}", self.run),
            external_id: external_id.to_owned(),
            amount_minor,
            currency: "USD".into(),
            code: self.code_for(external_id).to_owned(),
            ..Default::default()
        }
    }

    pub fn authed<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {}", self.owner_token).parse()?);
        Ok(request)
    }
}
