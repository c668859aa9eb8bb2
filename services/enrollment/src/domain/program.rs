//! Program settings, their defaults and limits, and the status life cycle
//! `draft → active ⇄ paused → archived` (a draft may also be archived unused).

use super::identity::normalize_name;
use amba_core::{ApiError, Currency};
use amba_rules::{CommissionRule, FraudChecks};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub const DEFAULT_ATTRIBUTION_WINDOW_DAYS: u32 = 30;
pub const DEFAULT_HOLD_DAYS: u32 = 30;
const MAX_DAYS: u32 = 365;
const MAX_LEVELS: usize = 5;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident $noun:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = ApiError;
            fn from_str(s: &str) -> Result<Self, ApiError> {
                match s.trim() {
                    $($text => Ok($name::$variant),)+
                    other => Err(ApiError::invalid(format!(
                        "{:?} is not a valid {}; expected one of: {}", other, $noun, [$($text),+].join(", ")))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

string_enum!(/// Where a program is in its life.
    ProgramStatus "status" { Draft => "draft", Active => "active", Paused => "paused", Archived => "archived" });
string_enum!(/// Whether conversions (and applications) need the owner's approval.
    ApprovalMode "approval mode" { Auto => "auto", Manual => "manual" });
string_enum!(/// Which touchpoint inside the window gets the credit.
    AttributionModel "attribution model" { LastTouch => "last_touch", FirstTouch => "first_touch" });
string_enum!(/// What wins when a report has both a code and a tracked subject with a touchpoint.
    AttributionPrecedence "attribution precedence" { CodeWins => "code_wins", TouchWins => "touch_wins" });
string_enum!(/// When payouts run unattended.
    PayoutSchedule "payout schedule" { Manual => "manual", Weekly => "weekly", Monthly => "monthly" });

impl ProgramStatus {
    /// Checks a requested status change. Asking for the current status is a no-op.
    pub fn transition_to(self, next: ProgramStatus) -> Result<ProgramStatus, ApiError> {
        use ProgramStatus::*;
        let allowed = self == next
            || matches!(
                (self, next),
                (Draft, Active)
                    | (Draft, Archived)
                    | (Active, Paused)
                    | (Paused, Active)
                    | (Active, Archived)
                    | (Paused, Archived)
            );
        if allowed {
            Ok(next)
        } else {
            Err(ApiError::conflict(format!("a program cannot go from {self} to {next}")))
        }
    }
}

/// Upline override commissions: `levels_bps[0]` goes to the direct sponsor, `[1]` to theirs, ...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MultiLevel {
    pub enabled: bool,
    #[serde(default)]
    pub levels_bps: Vec<u32>,
}

impl MultiLevel {
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ApiError> {
        let multi: MultiLevel = serde_json::from_value(value.clone()).map_err(|e| {
            ApiError::invalid(format!(
                "invalid multi_level (expected {{\"enabled\":true,\"levels_bps\":[500,200]}}): {e}"
            ))
        })?;
        if multi.levels_bps.len() > MAX_LEVELS {
            return Err(ApiError::invalid(format!(
                "multi_level allows at most {MAX_LEVELS} levels"
            )));
        }
        if multi.levels_bps.iter().map(|b| u64::from(*b)).sum::<u64>() > 10_000 {
            return Err(ApiError::invalid("multi_level levels_bps must add up to at most 10000"));
        }
        if multi.enabled && multi.levels_bps.is_empty() {
            return Err(ApiError::invalid(
                "multi_level enabled needs at least one level in levels_bps",
            ));
        }
        Ok(multi)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Everything an owner configures on a program.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramSettings {
    pub name: String,
    pub currency: Currency,
    pub commission: CommissionRule,
    pub approval_mode: ApprovalMode,
    /// Whether applications to join need the owner's approval (invites are accepted instead).
    pub affiliate_approval: ApprovalMode,
    pub attribution_window_days: u32,
    pub attribution_model: AttributionModel,
    pub attribution_precedence: AttributionPrecedence,
    pub fraud_checks: FraudChecks,
    pub hold_days: u32,
    pub payout_threshold_minor: i64,
    pub payout_schedule: PayoutSchedule,
    pub platform_fee_bps: u32,
    pub multi_level: MultiLevel,
    pub landing_url: Option<String>,
}

/// A requested change; `None` keeps the current value. Fields are raw caller input.
#[derive(Debug, Clone, Default)]
pub struct SettingsInput {
    pub name: Option<String>,
    pub currency: Option<String>,
    pub commission: Option<serde_json::Value>,
    pub approval_mode: Option<String>,
    pub affiliate_approval: Option<String>,
    pub attribution_window_days: Option<u32>,
    pub attribution_model: Option<String>,
    pub attribution_precedence: Option<String>,
    pub fraud_checks: Option<serde_json::Value>,
    pub hold_days: Option<u32>,
    pub payout_threshold_minor: Option<i64>,
    pub payout_schedule: Option<String>,
    pub platform_fee_bps: Option<u32>,
    pub multi_level: Option<serde_json::Value>,
    pub landing_url: Option<String>,
}

impl ProgramSettings {
    /// Settings for a new program: name, currency and commission are required, the rest default.
    pub fn create(input: SettingsInput) -> Result<Self, ApiError> {
        let required = |field: &str| ApiError::invalid(format!("{field} is required"));
        let name = input.name.as_deref().ok_or_else(|| required("name"))?;
        let currency = input.currency.as_deref().ok_or_else(|| required("currency"))?;
        let commission = input.commission.as_ref().ok_or_else(|| required("commission"))?;
        let base = ProgramSettings {
            name: normalize_name("name", name)?,
            currency: Currency::parse(currency)?,
            commission: CommissionRule::from_json(commission)?,
            approval_mode: ApprovalMode::Auto,
            affiliate_approval: ApprovalMode::Manual,
            attribution_window_days: DEFAULT_ATTRIBUTION_WINDOW_DAYS,
            attribution_model: AttributionModel::LastTouch,
            attribution_precedence: AttributionPrecedence::CodeWins,
            fraud_checks: FraudChecks::default(),
            hold_days: DEFAULT_HOLD_DAYS,
            payout_threshold_minor: 0,
            payout_schedule: PayoutSchedule::Manual,
            platform_fee_bps: 0,
            multi_level: MultiLevel::default(),
            landing_url: None,
        };
        base.apply(
            SettingsInput {
                name: None,
                currency: None,
                commission: None,
                ..input
            },
            ProgramStatus::Draft,
        )
    }

    /// Applies a change. The currency is fixed once the program has left draft: money already
    /// recorded in it must never change meaning.
    pub fn apply(&self, input: SettingsInput, status: ProgramStatus) -> Result<Self, ApiError> {
        let mut next = self.clone();
        if let Some(name) = input.name {
            next.name = normalize_name("name", &name)?;
        }
        if let Some(currency) = input.currency {
            let currency = Currency::parse(&currency)?;
            if currency != self.currency && status != ProgramStatus::Draft {
                return Err(ApiError::conflict(
                    "the currency can only be changed while the program is a draft",
                ));
            }
            next.currency = currency;
        }
        if let Some(commission) = input.commission {
            next.commission = CommissionRule::from_json(&commission)?;
        }
        if let Some(mode) = input.approval_mode {
            next.approval_mode = mode.parse()?;
        }
        if let Some(mode) = input.affiliate_approval {
            next.affiliate_approval = mode.parse()?;
        }
        if let Some(days) = input.attribution_window_days {
            next.attribution_window_days = days_in_range("attribution_window_days", days, 1)?;
        }
        if let Some(model) = input.attribution_model {
            next.attribution_model = model.parse()?;
        }
        if let Some(precedence) = input.attribution_precedence {
            next.attribution_precedence = precedence.parse()?;
        }
        if let Some(checks) = input.fraud_checks {
            next.fraud_checks = FraudChecks::from_json(&checks)?;
        }
        if let Some(days) = input.hold_days {
            next.hold_days = days_in_range("hold_days", days, 0)?;
        }
        if let Some(threshold) = input.payout_threshold_minor {
            if threshold < 0 {
                return Err(ApiError::invalid("payout_threshold_minor must be zero or more"));
            }
            next.payout_threshold_minor = threshold;
        }
        if let Some(schedule) = input.payout_schedule {
            next.payout_schedule = schedule.parse()?;
        }
        if let Some(bps) = input.platform_fee_bps {
            if bps > 10_000 {
                return Err(ApiError::invalid("platform_fee_bps must be between 0 and 10000"));
            }
            next.platform_fee_bps = bps;
        }
        if let Some(multi) = input.multi_level {
            next.multi_level = MultiLevel::from_json(&multi)?;
        }
        if let Some(url) = input.landing_url {
            next.landing_url = if url.trim().is_empty() {
                None
            } else {
                Some(validate_landing_url(&url)?)
            };
        }
        Ok(next)
    }
}

impl ProgramSettings {
    /// Whether `next` attributes differently: a new attribution policy version.
    pub fn attribution_changed(&self, next: &ProgramSettings) -> bool {
        (
            self.attribution_model,
            self.attribution_precedence,
            self.attribution_window_days,
        ) != (
            next.attribution_model,
            next.attribution_precedence,
            next.attribution_window_days,
        )
    }
}

fn days_in_range(field: &str, days: u32, min: u32) -> Result<u32, ApiError> {
    if (min..=MAX_DAYS).contains(&days) {
        Ok(days)
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be between {min} and {MAX_DAYS}"
        )))
    }
}

/// An absolute https URL (see [`amba_core::landing`]): where affiliate links send visitors. The
/// platform's own host is refused by the service, which knows it.
pub fn validate_landing_url(url: &str) -> Result<String, ApiError> {
    amba_core::landing::check(url, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input() -> SettingsInput {
        SettingsInput {
            name: Some("Partners".into()),
            currency: Some("usd".into()),
            commission: Some(json!({"schema":1,"type":"percentage","bps":2000})),
            ..Default::default()
        }
    }

    #[test]
    fn create_applies_defaults() -> Result<(), ApiError> {
        let settings = ProgramSettings::create(input())?;
        assert_eq!(settings.currency.code(), "USD");
        assert_eq!(settings.approval_mode, ApprovalMode::Auto);
        assert_eq!(settings.attribution_window_days, DEFAULT_ATTRIBUTION_WINDOW_DAYS);
        assert_eq!(settings.payout_schedule, PayoutSchedule::Manual);
        assert!(!settings.multi_level.enabled);
        Ok(())
    }

    #[test]
    fn create_requires_the_essentials() {
        for missing in ["name", "currency", "commission"] {
            let mut i = input();
            match missing {
                "name" => i.name = None,
                "currency" => i.currency = None,
                _ => i.commission = None,
            }
            let err = ProgramSettings::create(i).err();
            assert!(err.is_some_and(|e| e.message.contains(missing)), "{missing}");
        }
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let cases: Vec<SettingsInput> = vec![
            SettingsInput {
                currency: Some("XYZ".into()),
                ..input()
            },
            SettingsInput {
                approval_mode: Some("sometimes".into()),
                ..input()
            },
            SettingsInput {
                attribution_window_days: Some(0),
                ..input()
            },
            SettingsInput {
                hold_days: Some(366),
                ..input()
            },
            SettingsInput {
                payout_threshold_minor: Some(-1),
                ..input()
            },
            SettingsInput {
                payout_schedule: Some("daily".into()),
                ..input()
            },
            SettingsInput {
                platform_fee_bps: Some(10_001),
                ..input()
            },
            SettingsInput {
                multi_level: Some(json!({"enabled":true})),
                ..input()
            },
            SettingsInput {
                multi_level: Some(json!({"enabled":true,"levels_bps":[9000,2000]})),
                ..input()
            },
            SettingsInput {
                landing_url: Some("javascript:alert(1)".into()),
                ..input()
            },
            SettingsInput {
                landing_url: Some("https://".into()),
                ..input()
            },
            SettingsInput {
                landing_url: Some("http://acme.example/".into()),
                ..input()
            },
        ];
        for case in cases {
            assert!(ProgramSettings::create(case.clone()).is_err(), "{case:?}");
        }
    }

    #[test]
    fn currency_is_fixed_after_draft() -> Result<(), ApiError> {
        let settings = ProgramSettings::create(input())?;
        let change = || SettingsInput {
            currency: Some("EUR".into()),
            ..Default::default()
        };
        assert!(settings.apply(change(), ProgramStatus::Draft).is_ok());
        assert_eq!(
            settings.apply(change(), ProgramStatus::Active).err().map(|e| e.code),
            Some(amba_core::ErrorCode::Conflict)
        );
        // Restating the same currency is not a change.
        let same = SettingsInput {
            currency: Some("usd".into()),
            ..Default::default()
        };
        assert!(settings.apply(same, ProgramStatus::Active).is_ok());
        Ok(())
    }

    #[test]
    fn status_life_cycle() {
        use ProgramStatus::*;
        let all = [Draft, Active, Paused, Archived];
        let allowed = [
            (Draft, Active),
            (Draft, Archived),
            (Active, Paused),
            (Paused, Active),
            (Active, Archived),
            (Paused, Archived),
        ];
        for from in all {
            for to in all {
                let ok = from == to || allowed.contains(&(from, to));
                assert_eq!(from.transition_to(to).is_ok(), ok, "{from} -> {to}");
            }
        }
    }
}
