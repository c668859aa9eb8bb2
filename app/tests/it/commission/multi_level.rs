//! Overrides paid upline, and none when the platform turns multi-level off.

use super::*;

#[tokio::test]
async fn multi_level_overrides_accrue_and_follow_their_source() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(&[("MULTI_LEVEL_ENABLED", "true")]).await?;
    let (orgs, program, enrollments) = three_levels(&sys, json!({"enabled": true, "levels_bps": [1000, 500]})).await?;
    // Cy earns 20.00; Bob (level 1) 10% of it = 2.00; Ann (level 2) 5% = 1.00.
    let c = conversion(&program, &enrollments[2], "cnv_c", 10_000, 2_000);
    approve(&sys, &c).await?;
    let expect = [(0, 100), (1, 200), (2, 2_000)];
    for (i, amount) in expect {
        let b = balance_when(&orgs[i], &program, |b| b["payable_minor"] == amount).await?;
        assert_eq!(figures(&b), [0, amount, 0, 0, 0]);
    }
    // Half the sale refunded: every level loses exactly half.
    claw(&sys, &c, "clb_1", 5_000, 5_000).await?;
    for (i, amount) in [(0, 50), (1, 100), (2, 1_000)] {
        balance_when(&orgs[i], &program, |b| b["payable_minor"] == amount).await?;
    }
    // The rest: nothing left anywhere, not a unit more or less.
    claw(&sys, &c, "clb_2", 5_000, 10_000).await?;
    for affiliate in &orgs {
        let b = balance_when(affiliate, &program, |b| b["payable_minor"] == 0).await?;
        assert_eq!(figures(&b), [0, 0, 0, 0, 0]);
    }
    // A program that does not enable multi-level pays no overrides even with the platform on.
    let owner2 = org(&sys, "Owner2").await?;
    let flat = active_program(&owner2, json!({"hold_days": 0})).await?;
    let top = enroll(&owner2, &orgs[0], &flat, None).await?;
    let top = text(&top["enrollment_id"]).to_owned();
    let sub = enroll(&owner2, &orgs[1], &flat, Some(&top)).await?;
    let sub = text(&sub["enrollment_id"]).to_owned();
    known(&sys, &sub).await?;
    approve(&sys, &conversion(&flat, &sub, "cnv_f", 10_000, 2_000)).await?;
    balance_when(&orgs[1], &flat, |b| b["payable_minor"] == 2_000).await?;
    let b = orgs[0]
        .mcp
        .ok("amba_affiliate_my_balance_get", json!({"program_id": flat}))
        .await?;
    assert_eq!(figures(&b), [0, 0, 0, 0, 0]);
    assert_verifies(&sys).await?;
    sys.stop().await
}

#[tokio::test]
async fn multi_level_off_on_the_platform_pays_no_overrides() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (orgs, program, enrollments) = three_levels(&sys, json!({"enabled": true, "levels_bps": [1000, 500]})).await?;
    approve(&sys, &conversion(&program, &enrollments[2], "cnv_c", 10_000, 2_000)).await?;
    balance_when(&orgs[2], &program, |b| b["payable_minor"] == 2_000).await?;
    for upline in orgs.iter().take(2) {
        let b = upline
            .mcp
            .ok("amba_affiliate_my_balance_get", json!({"program_id": program}))
            .await?;
        assert_eq!(figures(&b), [0, 0, 0, 0, 0]);
    }
    assert_verifies(&sys).await?;
    sys.stop().await
}
