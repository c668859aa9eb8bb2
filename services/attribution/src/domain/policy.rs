//! A program's attribution policy and the weighing of a subject's touchpoints under it.
//!
//! The policy is versioned by enrollment (a change of model, precedence or window is a new
//! version); each conversion pins the version it was decided under.

use super::facts::EnrollmentFacts;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// Which touchpoint inside the window gets the credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    LastTouch,
    FirstTouch,
}

/// What wins when a report has both a code and a tracked subject with a winning touchpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precedence {
    CodeWins,
    TouchWins,
}

impl Model {
    pub fn as_str(self) -> &'static str {
        match self {
            Model::LastTouch => "last_touch",
            Model::FirstTouch => "first_touch",
        }
    }

    /// Read from the read model; anything unknown is the default (the enrollment service only
    /// ever sends the two values).
    pub fn parse(text: &str) -> Model {
        if text == "first_touch" {
            Model::FirstTouch
        } else {
            Model::LastTouch
        }
    }
}

impl Precedence {
    pub fn as_str(self) -> &'static str {
        match self {
            Precedence::CodeWins => "code_wins",
            Precedence::TouchWins => "touch_wins",
        }
    }

    pub fn parse(text: &str) -> Precedence {
        if text == "touch_wins" {
            Precedence::TouchWins
        } else {
            Precedence::CodeWins
        }
    }
}

/// The policy a conversion is decided under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub model: Model,
    pub precedence: Precedence,
    pub window_days: i32,
    pub version: i32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            model: Model::LastTouch,
            precedence: Precedence::CodeWins,
            window_days: 30,
            version: 1,
        }
    }
}

/// A touchpoint on the report's subject, with its enrollment as it is now.
#[derive(Debug, Clone, PartialEq)]
pub struct Touch {
    pub touchpoint_id: String,
    pub code: String,
    pub occurred_at: DateTime<Utc>,
    /// The clicking client's address, when known.
    pub client_ip: Option<String>,
    pub enrollment: EnrollmentFacts,
}

/// Why a touchpoint did or did not get the credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The first (or last) touchpoint of an active enrollment inside the window.
    Won,
    /// Inside the window, but a touchpoint earlier (first touch) or later (last touch) won.
    NotFirst,
    NotLast,
    /// Before the window opened.
    OutsideWindow,
    /// Its enrollment is no longer active: it earns no new commission.
    EnrollmentNotActive,
}

/// One touchpoint as weighed.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighed {
    pub index: usize,
    pub inside_window: bool,
    pub verdict: Verdict,
}

/// Weighs `touches` (any order; those after the sale are ignored) for a sale at `at`: the index
/// of the winner, if any, and every touchpoint with its verdict, in time order.
pub fn weigh(policy: &Policy, at: DateTime<Utc>, touches: &[Touch]) -> (Option<usize>, Vec<Weighed>) {
    let opens = at - Duration::days(i64::from(policy.window_days));
    let mut order: Vec<usize> = (0..touches.len()).filter(|&i| touches[i].occurred_at <= at).collect();
    // Ties at the same instant go to the smaller id, so a decision never depends on row order.
    order.sort_by(|&a, &b| {
        (touches[a].occurred_at, &touches[a].touchpoint_id).cmp(&(touches[b].occurred_at, &touches[b].touchpoint_id))
    });
    let inside = |i: usize| touches[i].occurred_at >= opens;
    let eligible = |i: usize| inside(i) && touches[i].enrollment.status == "active";
    let winner = match policy.model {
        Model::FirstTouch => order.iter().copied().find(|&i| eligible(i)),
        Model::LastTouch => order.iter().rev().copied().find(|&i| eligible(i)),
    };
    let weighed = order
        .iter()
        .map(|&i| Weighed {
            index: i,
            inside_window: inside(i),
            verdict: if Some(i) == winner {
                Verdict::Won
            } else if !inside(i) {
                Verdict::OutsideWindow
            } else if touches[i].enrollment.status != "active" {
                Verdict::EnrollmentNotActive
            } else if policy.model == Model::FirstTouch {
                Verdict::NotFirst
            } else {
                Verdict::NotLast
            },
        })
        .collect();
    (winner, weighed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() + Duration::days(day)
    }

    fn touch(id: &str, day: i64, enrollment: &str, status: &str) -> Touch {
        Touch {
            touchpoint_id: id.into(),
            code: format!("code-{enrollment}"),
            occurred_at: at(day),
            client_ip: None,
            enrollment: EnrollmentFacts {
                enrollment_id: enrollment.into(),
                program_id: "prg".into(),
                affiliate_org_id: format!("org-{enrollment}"),
                status: status.into(),
                emails: vec![],
            },
        }
    }

    fn policy(model: Model) -> Policy {
        Policy {
            model,
            ..Policy::default()
        }
    }

    #[test]
    fn first_and_last_touch_pick_opposite_ends_of_the_window() {
        let touches = [
            touch("t_old", -40, "enr_a", "active"),
            touch("t_b", -10, "enr_b", "active"),
            touch("t_c", -2, "enr_c", "active"),
            touch("t_after", 1, "enr_d", "active"),
        ];
        let (last, weighed) = weigh(&policy(Model::LastTouch), at(0), &touches);
        assert_eq!(last, Some(2));
        let verdicts: Vec<_> = weighed.iter().map(|w| (w.index, w.verdict)).collect();
        assert_eq!(
            verdicts,
            vec![(0, Verdict::OutsideWindow), (1, Verdict::NotLast), (2, Verdict::Won)]
        );
        let (first, weighed) = weigh(&policy(Model::FirstTouch), at(0), &touches);
        assert_eq!(first, Some(1));
        assert_eq!(weighed[2].verdict, Verdict::NotFirst);
        assert!(!weighed[0].inside_window && weighed[1].inside_window);
    }

    #[test]
    fn inactive_enrollments_and_empty_windows_win_nothing() {
        let touches = [
            touch("t_b", -10, "enr_b", "removed"),
            touch("t_c", -2, "enr_c", "active"),
        ];
        let (first, weighed) = weigh(&policy(Model::FirstTouch), at(0), &touches);
        assert_eq!(first, Some(1));
        assert_eq!(weighed[0].verdict, Verdict::EnrollmentNotActive);
        let (none, weighed) = weigh(&policy(Model::LastTouch), at(-20), &touches);
        assert_eq!((none, weighed.len()), (None, 0));
        let narrow = Policy {
            window_days: 1,
            ..policy(Model::LastTouch)
        };
        assert_eq!(weigh(&narrow, at(0), &touches).0, None);
    }

    #[test]
    fn ties_do_not_depend_on_row_order() {
        let a = touch("t_a", -1, "enr_a", "active");
        let b = touch("t_b", -1, "enr_b", "active");
        let forward = weigh(&policy(Model::FirstTouch), at(0), &[a.clone(), b.clone()]).0;
        let backward = weigh(&policy(Model::FirstTouch), at(0), &[b, a]).0;
        assert_eq!((forward, backward), (Some(0), Some(1)));
    }
}
