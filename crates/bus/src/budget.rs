//! The database budget of the work that can wait, in a process that also takes reports.
//!
//! PostgreSQL gives every busy backend its share of the cores; without a bound, a dozen consumer
//! workers (the ledger, e-mail, the feed) would each take one beside the single report writer.
//! With a budget they wait their turn, take bigger groups when they get it, and catch up when
//! ingest pauses. Two rules shape the turns:
//!
//! - **Ingest first.** While reports are being written (the writer said so within
//!   [`QUIET_AFTER`]), the budget allows fewer transactions at once than when ingest is quiet, so
//!   a burst keeps a core to itself and the backlog is worked off, with every turn, once it ends.
//! - **The ledger before the rest.** A turn that is waiting for money's work ([`Precedence::First`])
//!   goes before any waiting e-mail or feed work: the ledger catches up first, notifications after.
//!   A later turn that has waited [`LATER_WAITS_AT_MOST`] goes as a first one, so a long burst
//!   delays e-mails but never stops them (nor lets the events they hold outlive JetStream's
//!   ack wait and come again).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long after the writer last said it was writing ingest counts as quiet again.
pub const QUIET_AFTER: Duration = Duration::from_millis(100);

/// How long a [`Precedence::Later`] turn waits behind first ones at most; then it is one of them.
pub const LATER_WAITS_AT_MOST: Duration = Duration::from_secs(5);

/// Which waiting turn goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precedence {
    /// Money's work (the ledger, payouts): before any waiting `Later` turn.
    First,
    /// Work that only informs (e-mail, the feed).
    Later,
}

/// A share of the budget; clones share it. Each handle takes its turns with its own
/// [`Precedence`] (`Later` unless [`Budget::with_precedence`] says otherwise).
#[derive(Debug, Clone)]
pub struct Budget {
    shared: Arc<Shared>,
    precedence: Precedence,
}

#[derive(Debug)]
struct Shared {
    limits: Limits,
    state: Mutex<State>,
    /// Signalled whenever a turn may have become free: one ended, or a first turn stopped waiting.
    changed: Notify,
}

/// How many transactions may run at once.
#[derive(Debug, Clone, Copy)]
struct Limits {
    while_ingesting: usize,
    when_quiet: usize,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    first_waiting: usize,
    last_ingest: Option<Instant>,
}

impl Limits {
    /// The limit at `now`, and when it rises if it is the lower one.
    fn at(self, last_ingest: Option<Instant>, now: Instant) -> (usize, Option<Instant>) {
        match last_ingest.map(|at| at + QUIET_AFTER) {
            Some(quiet_at) if quiet_at > now && self.while_ingesting < self.when_quiet => {
                (self.while_ingesting, Some(quiet_at))
            }
            _ => (self.when_quiet, None),
        }
    }
}

impl Budget {
    /// Up to `when_quiet` transactions at once, and `while_ingesting` while reports are being
    /// written (each at least 1, and never more while ingesting than when quiet).
    pub fn new(while_ingesting: usize, when_quiet: usize) -> Budget {
        let when_quiet = when_quiet.max(1);
        Budget {
            shared: Arc::new(Shared {
                limits: Limits {
                    while_ingesting: while_ingesting.clamp(1, when_quiet),
                    when_quiet,
                },
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
            precedence: Precedence::Later,
        }
    }

    /// The same budget, taking its turns with `precedence`.
    pub fn with_precedence(mut self, precedence: Precedence) -> Budget {
        self.precedence = precedence;
        self
    }

    /// The handle through which the report writer tells the budget that it is writing.
    pub fn ingest(&self) -> Ingest {
        Ingest(self.shared.clone())
    }

    /// Waits for a turn; the transaction may run while the returned [`Turn`] is held.
    pub async fn turn(&self) -> Turn {
        let mut waiting = FirstWaiting {
            shared: &self.shared,
            counted: false,
        };
        let first_from = match self.precedence {
            Precedence::First => Instant::now(),
            Precedence::Later => Instant::now() + LATER_WAITS_AT_MOST,
        };
        loop {
            let changed = self.shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the state is read, so a turn ending in between still wakes it.
            changed.as_mut().enable();
            let look_again_at = {
                let mut state = self.shared.lock();
                let now = Instant::now();
                let (limit, quiet_at) = self.shared.limits.at(state.last_ingest, now);
                let first = now >= first_from;
                if state.running < limit && (first || state.first_waiting == 0) {
                    state.running += 1;
                    if waiting.counted {
                        waiting.counted = false;
                        state.first_waiting -= 1;
                        drop(state);
                        // Later turns held back by this one may go now, if room is left.
                        self.shared.changed.notify_waiters();
                    }
                    return Turn(self.shared.clone());
                }
                if first && !waiting.counted {
                    waiting.counted = true;
                    state.first_waiting += 1;
                }
                // The limit rises when ingest goes quiet, and a later turn becomes a first one:
                // look again then, if no turn ends before.
                [quiet_at, (!first).then_some(first_from)].into_iter().flatten().min()
            };
            match look_again_at {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, changed).await;
                }
                None => changed.await,
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters, each left whole by every holder: a panic elsewhere
        // while holding it leaves nothing half-updated.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A first turn that is waiting, counted so that later ones let it go before them; uncounted
/// when it gets its turn or its waiter goes away.
struct FirstWaiting<'a> {
    shared: &'a Shared,
    counted: bool,
}

impl Drop for FirstWaiting<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.shared.lock().first_waiting -= 1;
            self.shared.changed.notify_waiters();
        }
    }
}

/// A running transaction's turn; the next waiting one may start when this is dropped.
#[derive(Debug)]
pub struct Turn(Arc<Shared>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.changed.notify_waiters();
    }
}

/// Told by the report writer each time it writes, so that the budget holds back while ingest is
/// busy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingest(Arc<Shared>);

impl Ingest {
    /// Reports are being written now.
    pub fn writing(&self) {
        self.0.lock().last_ingest = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_more_turns_run_at_once_than_the_limit() {
        let budget = Budget::new(2, 2);
        let (a, b) = (budget.turn().await, budget.turn().await);
        let third = budget.turn();
        let mut third = std::pin::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending());
        drop(a);
        let c = third.await;
        drop((b, c));
    }

    #[tokio::test(start_paused = true)]
    async fn while_ingesting_the_lower_limit_holds_until_ingest_is_quiet() {
        let budget = Budget::new(1, 2);
        let ingest = budget.ingest();
        ingest.writing();
        let running = budget.turn().await;
        let started = Instant::now();
        let second = budget.turn().await;
        // No turn ended: the second started when ingest went quiet, not before.
        assert_eq!(started.elapsed(), QUIET_AFTER);
        drop((running, second));
        // Quiet: both at once, with no wait.
        let started = Instant::now();
        let both = (budget.turn().await, budget.turn().await);
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(both);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_first_turn_goes_before_waiting_later_ones() {
        let later = Budget::new(1, 1);
        let first = later.clone().with_precedence(Precedence::First);
        let running = later.turn().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = tokio::task::JoinSet::new();
        for (name, budget) in [("later", later.clone()), ("first", first.clone())] {
            let order = order.clone();
            waiters.spawn(async move {
                let turn = budget.turn().await;
                order.lock().map(|mut o| o.push(name)).ok();
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(turn);
            });
            // The later one waits first.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(running);
        while waiters.join_next().await.is_some() {}
        assert_eq!(
            *order.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            ["first", "later"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_turn_that_waited_long_enough_goes_as_a_first_one() -> Result<(), tokio::task::JoinError> {
        let later = Budget::new(1, 1);
        let first = later.clone().with_precedence(Precedence::First);
        let asked = Instant::now();
        let mut running = first.turn().await;
        let waiting_later = tokio::spawn(async move {
            drop(later.turn().await);
            asked.elapsed()
        });
        // First turns keep coming, each asking before the one running ends.
        for _ in 0..20 {
            let next = tokio::spawn({
                let first = first.clone();
                async move { first.turn().await }
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(running);
            running = next.await?;
            if waiting_later.is_finished() {
                break;
            }
        }
        drop(running);
        let waited = waiting_later.await?;
        assert!(
            waited >= LATER_WAITS_AT_MOST && waited <= LATER_WAITS_AT_MOST + Duration::from_secs(1),
            "{waited:?}"
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_turn_that_stops_waiting_holds_nothing_back() {
        let later = Budget::new(1, 1);
        let first = later.clone().with_precedence(Precedence::First);
        let running = later.turn().await;
        let gave_up = tokio::time::timeout(Duration::from_millis(5), first.turn()).await;
        assert!(gave_up.is_err());
        drop(running);
        let started = Instant::now();
        let turn = later.turn().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(turn);
    }
}
