//! A conversion report: validation, the idempotency fingerprint, and the attribution decision.
//!
//! Who gets the credit, in order:
//! 1. `code` given — that code's enrollment (the code must be active and its enrollment active);
//!    under the program's `touch_wins` precedence a winning touchpoint (3.) comes first, unless
//!    the customer is bound (2.);
//! 2. `customer_ref` already bound to an enrollment — that enrollment (a renewal), whatever the
//!    attribution model;
//! 3. `subject_ref` with a touchpoint of an active enrollment inside the attribution window —
//!    the latest (`last_touch`) or earliest (`first_touch`) such touchpoint;
//! 4. otherwise nobody: recorded as `unattributed`, and the reply says why.
//!
//! Every decision also yields its trail ([`super::trail`]): what was weighed and why it won.
//!
//! The program's fraud checks then run on an attributed conversion ([`Decision::screened`]): a
//! hit holds it for review (pending, with reason codes) even in auto-approving programs.

use super::fraud::{self, CheckRun};
use super::policy::{self, Policy, Precedence, Touch};
use super::trail::{AttributionTrail, CodeCheck, CustomerCheck, TouchWeighed, Why};
use amba_core::id::ProgramId;
use amba_core::{ApiError, Currency, ErrorCode, Money};
use amba_proto::wire as pb;
use amba_rules::FraudChecks;
use chrono::{DateTime, Utc};

/// A validated report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub program_id: ProgramId,
    pub project_id: String,
    pub external_id: String,
    pub amount: Money,
    pub code: Option<String>,
    pub subject_ref: Option<String>,
    pub customer_ref: Option<String>,
    pub customer_email: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

impl Report {
    /// Checks the report against the documented limits (the same check the edge ran) and types it.
    pub fn parse(r: &pb::ReportConversionRequest, now: DateTime<Utc>) -> Result<Report, ApiError> {
        let r = amba_proto::validate::report(r, now)?;
        let some = |s: String| (!s.is_empty()).then_some(s);
        Ok(Report {
            program_id: ProgramId::parse(&r.program_id)?,
            amount: Money::new(r.amount_minor, Currency::parse(&r.currency)?),
            occurred_at: DateTime::from_timestamp_micros(r.occurred_at_micros).unwrap_or(now),
            project_id: r.project_id,
            external_id: r.external_id,
            code: some(r.code),
            subject_ref: some(r.subject_ref),
            customer_ref: some(r.customer_ref),
            customer_email: some(r.customer_email),
        })
    }

    /// What must match for a repeat of the same key to be the same report.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}",
            self.amount.amount_minor,
            self.amount.currency,
            self.code.as_deref().unwrap_or("")
        )
    }
}

/// The same key with another amount, currency or code.
pub fn mismatch(stored_fingerprint: &str, report: &Report) -> Option<ApiError> {
    (stored_fingerprint != report.fingerprint()).then(|| {
        ApiError::new(
            ErrorCode::IdempotencyMismatch,
            format!(
                "conversion {}/{} was already reported with a different amount, currency or code",
                report.project_id, report.external_id
            ),
        )
    })
}

/// What attribution knows of a program (from enrollment's events).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramFacts {
    pub program_id: String,
    pub owner_org_id: String,
    pub currency: String,
    pub status: String,
    pub auto_approve: bool,
    pub policy: Policy,
    pub fraud: FraudChecks,
    pub commission_version: i32,
    pub landing_url: Option<String>,
}

pub use super::facts::EnrollmentFacts;

/// What the report's code turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum CodeState {
    NotGiven,
    Unknown,
    Retired,
    Active {
        program_id: String,
        enrollment: Option<EnrollmentFacts>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub enrollment: EnrollmentFacts,
    pub first_conversion_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    Code,
    Touchpoint,
    Customer,
    None,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Code => "code",
            Attribution::Touchpoint => "touchpoint",
            Attribution::Customer => "customer",
            Attribution::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Unattributed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Unattributed => "unattributed",
        }
    }
}

/// The outcome for a new report.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: Status,
    pub attribution: Attribution,
    pub enrollment: Option<EnrollmentFacts>,
    pub code: Option<String>,
    pub touchpoint_id: Option<String>,
    pub renewal: bool,
    /// When the customer was first bound (this conversion's time for a new binding).
    pub customer_first_conversion_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub held_for_review: bool,
    /// The fraud checks' reason codes when it is held.
    pub hold_reasons: Vec<String>,
    /// When the click that attributed it happened (touchpoint attribution), and from where.
    pub clicked_at: Option<DateTime<Utc>>,
    pub clicked_from: Option<String>,
    /// The policy it was decided under (pinned on the conversion).
    pub policy: Policy,
    pub trail: AttributionTrail,
}

pub struct Facts<'a> {
    pub caller_org_id: &'a str,
    pub program: Option<&'a ProgramFacts>,
    pub code: CodeState,
    pub binding: Option<&'a Binding>,
    /// The touchpoints on the report's subject (any order, any enrollment status).
    pub touchpoints: &'a [Touch],
}

/// Decides a new report, or refuses it with a typed error (then nothing is recorded).
pub fn decide(report: &Report, facts: Facts<'_>) -> Result<Decision, ApiError> {
    let program = facts
        .program
        .filter(|p| p.owner_org_id == facts.caller_org_id)
        .ok_or_else(|| ApiError::not_found(format!("program {}", report.program_id)))?;
    if program.status != "active" {
        return Err(ApiError::conflict(format!(
            "program {} is {}; it records no conversions",
            program.program_id, program.status
        )));
    }
    let active = |e: &EnrollmentFacts| e.status == "active";
    let policy = program.policy;
    let (winner, weighed) = policy::weigh(&policy, report.occurred_at, facts.touchpoints);
    let touch = winner.map(|i| &facts.touchpoints[i]);
    let bound = facts.binding.filter(|b| active(&b.enrollment));
    let code_check = report
        .code
        .as_ref()
        .map(|code| code_check(code, &facts.code, &program.program_id));
    // touch_wins: a winning touchpoint beats the code; a bound customer still beats a touchpoint.
    let touch_first = policy.precedence == Precedence::TouchWins && report.code.is_some() && bound.is_none();
    let (attribution, enrollment, code, touchpoint_id, why) = match (touch_first, touch) {
        (true, Some(hit)) => (
            Attribution::Touchpoint,
            Some(hit.enrollment.clone()),
            Some(hit.code.clone()),
            Some(hit.touchpoint_id.clone()),
            Why::TouchWins,
        ),
        _ => match facts.code {
            CodeState::Unknown => {
                return Err(ApiError::invalid(format!(
                    "unknown referral code {:?}: no affiliate in any program has it (codes come from amba_affiliate_invite or _my_referral_generate)",
                    report.code.as_deref().unwrap_or_default()
                )));
            }
            CodeState::Retired => {
                return Err(ApiError::conflict(
                    "that referral code was retired (rotated); it no longer attributes conversions",
                ));
            }
            CodeState::Active { program_id, .. } if program_id != program.program_id => {
                return Err(ApiError::invalid("that referral code belongs to another program"));
            }
            CodeState::Active { enrollment, .. } => {
                let enrollment = enrollment.ok_or_else(|| {
                    ApiError::conflict("that referral code's enrollment is not known yet; retry shortly")
                })?;
                if !active(&enrollment) {
                    return Err(ApiError::conflict(format!(
                        "the affiliate's enrollment is {}; it earns no new commission",
                        enrollment.status
                    )));
                }
                let why = match (policy.precedence, touch) {
                    (Precedence::CodeWins, Some(_)) => Why::CodeWins,
                    _ => Why::Code,
                };
                (Attribution::Code, Some(enrollment), report.code.clone(), None, why)
            }
            CodeState::NotGiven => match (bound, touch) {
                (Some(binding), _) => (
                    Attribution::Customer,
                    Some(binding.enrollment.clone()),
                    None,
                    None,
                    Why::Customer,
                ),
                (None, Some(hit)) => (
                    Attribution::Touchpoint,
                    Some(hit.enrollment.clone()),
                    Some(hit.code.clone()),
                    Some(hit.touchpoint_id.clone()),
                    Why::Touch,
                ),
                (None, None) => (Attribution::None, None, None, None, Why::Nobody),
            },
        },
    };
    let mut trail = AttributionTrail {
        decided_at: None,
        policy,
        code: code_check,
        customer: report.customer_ref.as_ref().map(|customer_ref| CustomerCheck {
            customer_ref: customer_ref.clone(),
            bound_enrollment_id: facts.binding.map(|b| b.enrollment.enrollment_id.clone()),
            bound_affiliate_org_id: facts.binding.map(|b| b.enrollment.affiliate_org_id.clone()),
            bound_since: facts.binding.map(|b| b.first_conversion_at),
            renewal: false,
        }),
        subject_ref: report.subject_ref.clone(),
        touchpoints: weighed
            .iter()
            .map(|w| {
                let t = &facts.touchpoints[w.index];
                TouchWeighed {
                    touchpoint_id: Some(t.touchpoint_id.clone()),
                    enrollment_id: Some(t.enrollment.enrollment_id.clone()),
                    affiliate_org_id: Some(t.enrollment.affiliate_org_id.clone()),
                    occurred_at: t.occurred_at,
                    inside_window: w.inside_window,
                    enrollment_status: t.enrollment.status.clone(),
                    verdict: w.verdict,
                }
            })
            .collect(),
        winner: attribution.as_str().to_owned(),
        why,
        status: String::new(),
        held: None,
        checks: Vec::new(),
    };
    let Some(enrollment) = enrollment else {
        trail.status = Status::Unattributed.as_str().to_owned();
        return Ok(Decision {
            status: Status::Unattributed,
            attribution,
            enrollment: None,
            code: None,
            touchpoint_id: None,
            renewal: false,
            customer_first_conversion_at: None,
            reason: Some(Why::Nobody.sentence(&policy, None)),
            held_for_review: false,
            hold_reasons: Vec::new(),
            clicked_at: None,
            clicked_from: None,
            policy,
            trail,
        });
    };
    let bound_here = facts
        .binding
        .filter(|b| b.enrollment.enrollment_id == enrollment.enrollment_id);
    let renewal = bound_here.is_some();
    let customer_first_conversion_at = match (bound_here, &report.customer_ref) {
        (Some(binding), _) => Some(binding.first_conversion_at),
        (None, Some(_)) => Some(report.occurred_at),
        (None, None) => None,
    };
    let status = if program.auto_approve {
        Status::Approved
    } else {
        Status::Pending
    };
    if let Some(customer) = trail.customer.as_mut() {
        customer.renewal = renewal;
    }
    trail.status = status.as_str().to_owned();
    trail.held = (status == Status::Pending)
        .then(|| "the program approves conversions by hand (approval_mode manual)".to_owned());
    let click = match attribution {
        Attribution::Touchpoint => touch,
        _ => None,
    };
    Ok(Decision {
        status,
        attribution,
        enrollment: Some(enrollment),
        code,
        touchpoint_id,
        renewal,
        customer_first_conversion_at,
        reason: None,
        held_for_review: false,
        hold_reasons: Vec::new(),
        clicked_at: click.map(|t| t.occurred_at),
        clicked_from: click.and_then(|t| t.client_ip.clone()),
        policy,
        trail,
    })
}

impl Decision {
    /// Takes the fraud checks' outcome: any hit holds the conversion for review (pending, with
    /// the reason codes and, for the owner, the details); the trail records every check run.
    pub fn screened(&mut self, runs: Vec<CheckRun>) {
        let hits = fraud::hits(&runs);
        if !hits.is_empty() {
            self.status = Status::Pending;
            self.held_for_review = true;
            self.hold_reasons = hits.iter().map(|h| h.check.clone()).collect();
            self.reason = Some(fraud::hold_reason(hits.iter().copied()));
            self.trail.status = Status::Pending.as_str().to_owned();
            self.trail.held = self.reason.clone();
        }
        self.trail.checks = runs;
    }

    /// A sale in another currency whose rate is not known yet: it waits, held with reason
    /// `fx_rate_missing`, and is converted (and then approved if nothing else holds it) once the
    /// rate arrives. Never converted at 1.
    pub fn wait_for_rate(&mut self, detail: String) {
        if self.status == Status::Approved {
            self.status = Status::Pending;
        }
        self.held_for_review = true;
        self.hold_reasons.push("fx_rate_missing".to_owned());
        let waiting = format!("fx_rate_missing: {detail}");
        self.reason = Some(match self.reason.take() {
            Some(held) if held.starts_with("held for review (") => {
                format!("{}; {waiting})", held.trim_end_matches(')'))
            }
            _ => format!("held for review ({waiting})"),
        });
        self.trail.status = self.status.as_str().to_owned();
        self.trail.held = self.reason.clone();
    }
}

/// What the report's code turned out to be, for the trail.
fn code_check(code: &str, state: &CodeState, program_id: &str) -> CodeCheck {
    let (state, enrollment) = match state {
        CodeState::NotGiven | CodeState::Unknown => ("unknown", None),
        CodeState::Retired => ("retired", None),
        CodeState::Active { program_id: other, .. } if other != program_id => ("other_program", None),
        CodeState::Active { enrollment: None, .. } => ("enrollment_unknown", None),
        CodeState::Active {
            enrollment: Some(e), ..
        } if e.status != "active" => ("enrollment_not_active", Some(e)),
        CodeState::Active {
            enrollment: Some(e), ..
        } => ("active", Some(e)),
    };
    CodeCheck {
        code: code.to_owned(),
        state: state.to_owned(),
        enrollment_id: enrollment.map(|e| e.enrollment_id.clone()),
        affiliate_org_id: enrollment.map(|e| e.affiliate_org_id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn request() -> pb::ReportConversionRequest {
        pb::ReportConversionRequest {
            program_id: ProgramId::new().to_string(),
            project_id: "web".into(),
            external_id: "order-1".into(),
            amount_minor: 10_000,
            currency: "usd".into(),
            ..Default::default()
        }
    }

    fn program(report: &Report) -> ProgramFacts {
        ProgramFacts {
            program_id: report.program_id.to_string(),
            owner_org_id: "org_owner".into(),
            currency: "USD".into(),
            status: "active".into(),
            auto_approve: true,
            policy: Policy::default(),
            fraud: FraudChecks::default(),
            commission_version: 1,
            landing_url: None,
        }
    }

    fn enrollment(id: &str, status: &str) -> EnrollmentFacts {
        EnrollmentFacts {
            enrollment_id: id.into(),
            program_id: String::new(),
            affiliate_org_id: "org_aff".into(),
            status: status.into(),
            emails: vec!["ann@aff.example".into()],
        }
    }

    fn facts<'a>(program: &'a ProgramFacts, code: CodeState) -> Facts<'a> {
        Facts {
            caller_org_id: "org_owner",
            program: Some(program),
            code,
            binding: None,
            touchpoints: &[],
        }
    }

    #[test]
    fn parse_validates_and_defaults() {
        let r = Report::parse(&request(), now());
        assert_eq!(r.as_ref().map(|r| r.occurred_at).ok(), Some(now()));
        assert_eq!(r.as_ref().map(|r| r.amount.currency.code()).ok(), Some("USD"));
        let bad = |f: fn(&mut pb::ReportConversionRequest)| {
            let mut req = request();
            f(&mut req);
            Report::parse(&req, now()).err().map(|e| e.code)
        };
        assert_eq!(bad(|r| r.amount_minor = -1), Some(ErrorCode::InvalidArgument));
        assert_eq!(bad(|r| r.currency = "EURO".into()), Some(ErrorCode::InvalidArgument));
        assert_eq!(bad(|r| r.external_id = " ".into()), Some(ErrorCode::InvalidArgument));
        assert_eq!(
            bad(|r| r.project_id = "x".repeat(201)),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(bad(|r| r.program_id = "nope".into()), Some(ErrorCode::InvalidArgument));
        assert_eq!(
            bad(|r| r.occurred_at_micros = (now() + Duration::hours(1)).timestamp_micros()),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            bad(|r| r.occurred_at_micros = i64::MAX),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            bad(|r| r.occurred_at_micros = -1_000_000_000_000_000_000),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(bad(|r| r.amount_minor = 1 << 62), Some(ErrorCode::InvalidArgument));
        assert_eq!(
            bad(|r| r.customer_ref = "a\0b".into()),
            Some(ErrorCode::InvalidArgument)
        );
    }

    #[test]
    fn fingerprint_mismatch() -> Result<(), ApiError> {
        let r = Report::parse(&request(), now())?;
        assert!(mismatch(&r.fingerprint(), &r).is_none());
        let mut other = r.clone();
        other.amount.amount_minor += 1;
        assert_eq!(
            mismatch(&r.fingerprint(), &other).map(|e| e.code),
            Some(ErrorCode::IdempotencyMismatch)
        );
        Ok(())
    }

    #[test]
    fn refusals() -> Result<(), ApiError> {
        let r = Report::parse(&request(), now())?;
        let p = program(&r);
        let code = |e| CodeState::Active {
            program_id: p.program_id.clone(),
            enrollment: Some(e),
        };
        let refuse = |f: Facts<'_>| decide(&r, f).err().map(|e| e.code);
        assert_eq!(
            refuse(Facts {
                caller_org_id: "org_other",
                ..facts(&p, CodeState::NotGiven)
            }),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            refuse(Facts {
                program: None,
                ..facts(&p, CodeState::NotGiven)
            }),
            Some(ErrorCode::NotFound)
        );
        let paused = ProgramFacts {
            status: "paused".into(),
            ..p.clone()
        };
        assert_eq!(refuse(facts(&paused, CodeState::NotGiven)), Some(ErrorCode::Conflict));
        assert_eq!(refuse(facts(&p, CodeState::Unknown)), Some(ErrorCode::InvalidArgument));
        assert_eq!(refuse(facts(&p, CodeState::Retired)), Some(ErrorCode::Conflict));
        assert_eq!(
            refuse(facts(&p, code(enrollment("enr_1", "removed")))),
            Some(ErrorCode::Conflict)
        );
        let elsewhere = CodeState::Active {
            program_id: "prg_other".into(),
            enrollment: Some(enrollment("enr_1", "active")),
        };
        assert_eq!(refuse(facts(&p, elsewhere)), Some(ErrorCode::InvalidArgument));
        Ok(())
    }

    #[test]
    fn attribution_order_and_status() -> Result<(), ApiError> {
        let mut r = Report::parse(&request(), now())?;
        let p = program(&r);
        let by_code = decide(
            &r,
            facts(
                &p,
                CodeState::Active {
                    program_id: p.program_id.clone(),
                    enrollment: Some(enrollment("enr_c", "active")),
                },
            ),
        )?;
        assert_eq!(
            (by_code.attribution, by_code.status),
            (Attribution::Code, Status::Approved)
        );

        let binding = Binding {
            enrollment: enrollment("enr_b", "active"),
            first_conversion_at: now() - Duration::days(40),
        };
        let hit = [Touch {
            touchpoint_id: "tch_1".into(),
            code: "abc".into(),
            occurred_at: now() - Duration::days(1),
            client_ip: None,
            enrollment: enrollment("enr_t", "active"),
        }];
        let both = decide(
            &r,
            Facts {
                binding: Some(&binding),
                touchpoints: &hit,
                ..facts(&p, CodeState::NotGiven)
            },
        )?;
        assert_eq!((both.attribution, both.renewal), (Attribution::Customer, true));
        assert_eq!(both.enrollment.map(|e| e.enrollment_id), Some("enr_b".to_owned()));
        assert_eq!(both.customer_first_conversion_at, Some(now() - Duration::days(40)));

        let touch = decide(
            &r,
            Facts {
                touchpoints: &hit,
                ..facts(&p, CodeState::NotGiven)
            },
        )?;
        assert_eq!(
            (touch.attribution, touch.touchpoint_id.as_deref()),
            (Attribution::Touchpoint, Some("tch_1"))
        );

        let nobody = decide(&r, facts(&p, CodeState::NotGiven))?;
        assert_eq!(
            (nobody.status, nobody.attribution),
            (Status::Unattributed, Attribution::None)
        );
        assert!(nobody.reason.is_some());

        let manual = ProgramFacts {
            auto_approve: false,
            ..p.clone()
        };
        assert_eq!(
            decide(
                &r,
                Facts {
                    touchpoints: &hit,
                    ..facts(&manual, CodeState::NotGiven)
                }
            )?
            .status,
            Status::Pending
        );

        r.customer_email = Some("ann@aff.example".into());
        let mut selfish = decide(
            &r,
            Facts {
                touchpoints: &hit,
                ..facts(&p, CodeState::NotGiven)
            },
        )?;
        assert_eq!(selfish.clicked_at, Some(now() - Duration::days(1)));
        let emails = selfish
            .enrollment
            .as_ref()
            .map(|e| e.emails.clone())
            .unwrap_or_default();
        let runs = fraud::screen(
            &p.fraud,
            &fraud::DisposableDomains::default(),
            &fraud::Facts {
                customer_email: r.customer_email.as_deref(),
                affiliate_emails: &emails,
                click_address_seen: None,
                last_minute: None,
                click_to_sale_seconds: None,
                recent_sales: None,
            },
        );
        selfish.screened(runs);
        assert_eq!((selfish.status, selfish.held_for_review), (Status::Pending, true));
        assert_eq!(selfish.hold_reasons, vec!["self_referral".to_owned()]);
        assert!(
            selfish
                .reason
                .is_some_and(|r| r.starts_with("held for review (self_referral: "))
        );
        assert_eq!(selfish.trail.checks.len(), 2);
        Ok(())
    }
}
