//! The decision trail: why a conversion went to whom and why its commission is what it is,
//! recorded when each decision is made (stored with the conversion) and read back by explain.
//! Never recomputed: a later change of the program's policy or rule leaves it as it was.
//!
//! It is stored lean (codes and figures, written for every sale on the report path) and put into
//! words by [`Trail::render`] when it is read: the sentences follow from what was recorded, and
//! the rule text from its version, which never changes once written.

use super::fraud::{self, CheckRun, Outcome};
use super::fx::FxTrail;
use super::policy::Model;
use super::policy::{Policy, Verdict};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Everything recorded about one conversion's decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<AttributionTrail>,
    /// An owner's hand assignment of a conversion nobody was credited with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<AssignmentTrail>,
    /// A sale in another currency: the rate it was converted at, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fx: Option<FxTrail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewTrail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commission: Option<CommissionTrail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentTrail {
    pub assigned_at: DateTime<Utc>,
    pub enrollment_id: String,
    pub affiliate_org_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How the conversion was attributed.
/// Which rule of attribution decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The report's code.
    Code,
    /// The code, over a touchpoint that would have won (`code_wins`).
    CodeWins,
    /// A touchpoint, over the report's code (`touch_wins`).
    TouchWins,
    /// The customer's binding (a renewal).
    Customer,
    /// The first or last touchpoint inside the window.
    Touch,
    /// Nothing attributed it.
    Nobody,
}

impl Why {
    /// The rule in words.
    pub fn sentence(self, policy: &Policy, bound_since: Option<DateTime<Utc>>) -> String {
        let touch = match policy.model {
            Model::FirstTouch => "earliest",
            Model::LastTouch => "latest",
        };
        let window = policy.window_days;
        match self {
            Why::Code => "the report's code belongs to this affiliate's active enrollment".to_owned(),
            Why::CodeWins => "code_wins: the report's code beats the tracked touchpoints".to_owned(),
            Why::TouchWins => {
                format!("touch_wins: the {touch} touchpoint inside the {window}-day window beats the report's code")
            }
            Why::Customer => format!(
                "the customer has been bound to this enrollment since {}: a renewal stays with its affiliate \
                 whatever the attribution model",
                bound_since
                    .map(|t| t.format("%Y-%m-%d").to_string())
                    .unwrap_or_default()
            ),
            Why::Touch => format!(
                "{}: the {touch} touchpoint of an active enrollment inside the {window}-day window",
                policy.model.as_str()
            ),
            Why::Nobody => "no referral code, bound customer or touchpoint inside the attribution window".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionTrail {
    /// Filled in when read (the conversion's `recorded_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    pub policy: Policy,
    /// The code the report carried, and what it turned out to be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeCheck>,
    /// The customer the report named, and whom it was bound to before this conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<CustomerCheck>,
    /// The report's tracked subject, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_ref: Option<String>,
    /// Every touchpoint on the subject up to the sale that was weighed, in time order.
    #[serde(default)]
    pub touchpoints: Vec<TouchWeighed>,
    /// code | touchpoint | customer | none
    pub winner: String,
    /// The rule that decided it (in words once rendered).
    pub why: Why,
    /// What the report's status became, and why it waits when it does.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The program's fraud checks as run on it (attributed conversions only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckRun>,
}

/// The owner's decision on a conversion that waited for it (a hold released, or a rejection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewTrail {
    pub decided_at: DateTime<Utc>,
    /// approved | rejected
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The hold reasons it had, if it was held by a fraud check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released_holds: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeCheck {
    pub code: String,
    /// active | unknown | retired | other_program | enrollment_unknown | enrollment_not_active
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliate_org_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerCheck {
    /// Empty in an affiliate's view (the owner's reference for its customer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub customer_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_enrollment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_affiliate_org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_since: Option<DateTime<Utc>>,
    pub renewal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TouchWeighed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub touchpoint_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliate_org_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub inside_window: bool,
    pub enrollment_status: String,
    pub verdict: Verdict,
}

/// How the commission was computed, step by step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommissionTrail {
    /// Filled in when read (the conversion's `decided_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priced_at: Option<DateTime<Utc>>,
    pub rule_version: i32,
    /// Filled in when read, from the rule version (versions never change once written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<serde_json::Value>,
    /// The sale amount the rule was applied to, in minor units of `currency`.
    pub base_minor: i64,
    pub currency: String,
    /// For a renewal: whole months since the customer's first conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_months_since_first: Option<u32>,
    /// For tiered rules: the period counted and the affiliate's volume in it before this sale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierHit>,
    /// The rate applied, in basis points (percentage-based rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u32>,
    /// `base × rate` before rounding, in minor units, as an exact decimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_minor: Option<String>,
    /// How the exact amount became whole minor units (filled in when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounding: Option<String>,
    pub commission_minor: i64,
    /// Why the rule gave nothing, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierHit {
    pub period: String,
    pub basis: String,
    pub prior_conversions: i64,
    pub prior_revenue_minor: i64,
    pub index: usize,
    pub from: i64,
    pub bps: u32,
}

/// What a stored trail is read with: the conversion's times and its rule version's text.
pub struct ReadWith<'a> {
    pub recorded_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub rule: Option<&'a serde_json::Value>,
}

impl Trail {
    /// The trail as explain shows it: the recorded codes put into words, the times and the rule
    /// text filled in. Nothing is decided again.
    pub fn render(mut self, with: ReadWith<'_>) -> serde_json::Value {
        let mut why = None;
        if let Some(a) = self.attribution.as_mut() {
            a.decided_at = Some(with.recorded_at);
            for check in &mut a.checks {
                if check.detail.is_empty() {
                    check.detail = fraud::usual_detail(&check.check, check.outcome).to_owned();
                }
            }
            let bound_since = a.customer.as_ref().and_then(|c| c.bound_since);
            why = Some(a.why.sentence(&a.policy, bound_since));
        }
        if let Some(c) = self.commission.as_mut() {
            c.priced_at = c.priced_at.or(with.decided_at);
            c.rule = c.rule.take().or_else(|| with.rule.cloned());
            let flat = c.rule.as_ref().is_some_and(|r| r["type"] == "flat");
            c.rounding = Some(
                match (flat, &c.exact_minor) {
                    (true, _) => "none: a flat amount per conversion",
                    (false, Some(_)) => "half-even to the minor unit, once",
                    (false, None) => "none: nothing is due",
                }
                .to_owned(),
            );
        }
        let mut value = serde_json::to_value(&self).unwrap_or_default();
        if let (Some(why), Some(a)) = (why, value.get_mut("attribution")) {
            a["why"] = serde_json::Value::String(why);
        }
        value
    }

    /// The trail as an affiliate may see it: nothing that names another affiliate (their
    /// enrollments, orgs, touchpoint ids), only that a touchpoint or code of someone else existed;
    /// and, as in its conversion list, not the owner's subject and customer references.
    pub fn for_affiliate(mut self, enrollment_id: &str) -> Trail {
        if let Some(review) = self.review.as_mut() {
            review.released_holds.clear();
        }
        if let Some(a) = self.attribution.as_mut() {
            a.subject_ref = None;
            // "Held for review" without the detector's details.
            if a.checks.iter().any(|c| c.outcome == Outcome::Hit) {
                a.held = Some("held for review".to_owned());
            }
            a.checks.clear();
            if let Some(customer) = a.customer.as_mut() {
                customer.customer_ref.clear();
            }
            let theirs = |e: &Option<String>| e.as_deref() == Some(enrollment_id);
            for t in &mut a.touchpoints {
                if !theirs(&t.enrollment_id) {
                    t.touchpoint_id = None;
                    t.enrollment_id = None;
                    t.affiliate_org_id = None;
                }
            }
            if let Some(code) = a.code.as_mut().filter(|c| !theirs(&c.enrollment_id)) {
                code.code = "(another affiliate's code)".into();
                code.enrollment_id = None;
                code.affiliate_org_id = None;
            }
            if let Some(customer) = a.customer.as_mut().filter(|c| !theirs(&c.bound_enrollment_id)) {
                customer.bound_enrollment_id = None;
                customer.bound_affiliate_org_id = None;
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::Policy;

    #[test]
    fn affiliates_see_no_other_affiliate() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let touch = |enrollment: &str, verdict| TouchWeighed {
            touchpoint_id: Some(format!("tch_{enrollment}")),
            enrollment_id: Some(enrollment.into()),
            affiliate_org_id: Some(format!("org_{enrollment}")),
            occurred_at: now,
            inside_window: true,
            enrollment_status: "active".into(),
            verdict,
        };
        let trail = Trail {
            attribution: Some(AttributionTrail {
                decided_at: None,
                policy: Policy::default(),
                code: Some(CodeCheck {
                    code: "OTHER".into(),
                    state: "active".into(),
                    enrollment_id: Some("enr_b".into()),
                    affiliate_org_id: Some("org_b".into()),
                }),
                customer: None,
                subject_ref: Some("visitor".into()),
                touchpoints: vec![touch("enr_a", Verdict::Won), touch("enr_b", Verdict::NotLast)],
                winner: "touchpoint".into(),
                why: Why::Touch,
                status: "approved".into(),
                held: None,
                checks: Vec::new(),
            }),
            assignment: None,
            fx: None,
            review: None,
            commission: None,
        };
        let seen = trail.for_affiliate("enr_a");
        let a = seen.attribution.unwrap_or_else(|| unreachable!());
        assert_eq!(a.touchpoints[0].touchpoint_id.as_deref(), Some("tch_enr_a"));
        assert_eq!(
            (&a.touchpoints[1].touchpoint_id, &a.touchpoints[1].affiliate_org_id),
            (&None, &None)
        );
        let code = a.code.unwrap_or_else(|| unreachable!());
        assert_eq!(
            (code.code.as_str(), code.affiliate_org_id),
            ("(another affiliate's code)", None)
        );
        let json = serde_json::to_string(&a.touchpoints).unwrap_or_default();
        assert!(!json.contains("enr_b") && !json.contains("org_enr_b"));
        assert_eq!(a.subject_ref, None);
    }
}
