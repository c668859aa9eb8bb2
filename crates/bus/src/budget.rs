//! The database budget of the work that can wait, in a process that also takes reports.
//!
//! PostgreSQL gives every busy backend its share of the cores; without a bound, a dozen consumer
//! workers (the ledger, e-mail, the feed) would each take one beside the single report writer.
//! With a budget they wait their turn, take bigger groups when they get it, and catch up when
//! ingest pauses. Three rules shape the turns:
//!
//! - **Ingest first.** While reports are being written (the writer said so within
//!   [`QUIET_AFTER`]), the budget allows fewer transactions at once than when ingest is quiet, so
//!   a burst keeps a core to itself and the backlog is worked off, with every turn, once it ends.
//! - **A burst keeps the cores.** While the writer is *busy* (writing at least [`BUSY_SHARE`] of
//!   the last [`BUSY_WINDOW`], so reports queue behind its commits), a group's turn waits until
//!   the group's oldest event is [`HOLD_WHILE_BUSY`] old. A burst shorter than that runs with no
//!   background work beside it; in a longer one the consumers run that far behind. The hold is
//!   below JetStream's ack wait, so the events a held group keeps are not delivered again, and
//!   it bounds what is left to catch up after the burst. A writer that keeps up with a steady
//!   flow is never busy, and nothing is held.
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

/// How old a group's oldest event grows before its turn may go while the writer is busy:
/// well below the consumers' ack wait (30 s), which also covers the wait for a free turn after.
pub const HOLD_WHILE_BUSY: Duration = Duration::from_secs(15);

/// The writer is busy when it wrote at least this share of a [`BUSY_WINDOW`].
pub const BUSY_SHARE: f64 = 0.75;

/// How long a stretch of the writer's time is judged busy or not at once.
pub const BUSY_WINDOW: Duration = Duration::from_millis(500);

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
    writer: Busy,
}

/// The writer's share of busy time, window by window.
#[derive(Debug, Default)]
struct Busy {
    window_start: Option<Instant>,
    written: Duration,
    /// Whether the last whole window was busy.
    busy: bool,
}

impl Busy {
    /// Counts a write from `started` to `ended`; whether the writer is busy now, when a window
    /// closes with it.
    fn wrote(&mut self, started: Instant, ended: Instant) -> Option<bool> {
        let window_start = *self.window_start.get_or_insert(started);
        self.written += ended.saturating_duration_since(started);
        let length = ended.saturating_duration_since(window_start);
        if length < BUSY_WINDOW {
            return None;
        }
        // A window that ran on past the writer's last write (it idled) is judged whole.
        self.busy = self.written.as_secs_f64() >= BUSY_SHARE * length.as_secs_f64();
        self.window_start = Some(ended);
        self.written = Duration::ZERO;
        Some(self.busy)
    }
}

impl State {
    /// When ingest goes quiet, if reports are being written at `now`.
    fn ingesting_until(&self, now: Instant) -> Option<Instant> {
        self.last_ingest
            .map(|at| at + QUIET_AFTER)
            .filter(|&quiet_at| quiet_at > now)
    }
}

impl Limits {
    /// The limit while ingest lasts `ingesting_until`, and when it rises if it is the lower one.
    fn at(self, ingesting_until: Option<Instant>) -> (usize, Option<Instant>) {
        match ingesting_until {
            Some(quiet_at) if self.while_ingesting < self.when_quiet => (self.while_ingesting, Some(quiet_at)),
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

    /// Waits for a turn for a group whose oldest event is `age` old; the transaction may run
    /// while the returned [`Turn`] is held.
    pub async fn turn(&self, age: Duration) -> Turn {
        let mut waiting = FirstWaiting {
            shared: &self.shared,
            counted: false,
        };
        // Held while the writer is busy, until then.
        let due = Instant::now() + HOLD_WHILE_BUSY.saturating_sub(age);
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
                let ingesting_until = state.ingesting_until(now);
                let (limit, quiet_at) = self.shared.limits.at(ingesting_until);
                let busy_until = ingesting_until.filter(|_| state.writer.busy);
                if let Some(quiet) = busy_until
                    && now < due
                {
                    // A held turn holds no later one back.
                    if waiting.counted {
                        waiting.counted = false;
                        state.first_waiting -= 1;
                        self.shared.changed.notify_waiters();
                    }
                    // Until it is due, or the writer goes quiet; the writer growing less busy
                    // wakes it too.
                    Some(quiet.min(due))
                } else {
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
                }
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
    /// Reports are being written now, until the returned [`Writing`] is dropped.
    pub fn writing(&self) -> Writing {
        let started = Instant::now();
        self.0.lock().last_ingest = Some(started);
        Writing {
            shared: self.0.clone(),
            started,
        }
    }
}

/// A write in progress, counted towards the writer's busy share when dropped.
#[derive(Debug)]
#[must_use = "the write is counted when this is dropped"]
pub struct Writing {
    shared: Arc<Shared>,
    started: Instant,
}

impl Drop for Writing {
    fn drop(&mut self) {
        let now_busy = self.shared.lock().writer.wrote(self.started, Instant::now());
        if now_busy == Some(false) {
            // Held turns may go now.
            self.shared.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_more_turns_run_at_once_than_the_limit() {
        let budget = Budget::new(2, 2);
        let (a, b) = (budget.turn(HOLD_WHILE_BUSY).await, budget.turn(HOLD_WHILE_BUSY).await);
        let third = budget.turn(HOLD_WHILE_BUSY);
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
        drop(ingest.writing());
        let running = budget.turn(HOLD_WHILE_BUSY).await;
        let started = Instant::now();
        let second = budget.turn(HOLD_WHILE_BUSY).await;
        // No turn ended: the second started when ingest went quiet, not before.
        assert_eq!(started.elapsed(), QUIET_AFTER);
        drop((running, second));
        // Quiet: both at once, with no wait.
        let started = Instant::now();
        let both = (budget.turn(HOLD_WHILE_BUSY).await, budget.turn(HOLD_WHILE_BUSY).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(both);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_first_turn_goes_before_waiting_later_ones() {
        let later = Budget::new(1, 1);
        let first = later.clone().with_precedence(Precedence::First);
        let running = later.turn(HOLD_WHILE_BUSY).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = tokio::task::JoinSet::new();
        for (name, budget) in [("later", later.clone()), ("first", first.clone())] {
            let order = order.clone();
            waiters.spawn(async move {
                let turn = budget.turn(HOLD_WHILE_BUSY).await;
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
        let mut running = first.turn(HOLD_WHILE_BUSY).await;
        let waiting_later = tokio::spawn(async move {
            drop(later.turn(HOLD_WHILE_BUSY).await);
            asked.elapsed()
        });
        // First turns keep coming, each asking before the one running ends.
        for _ in 0..20 {
            let next = tokio::spawn({
                let first = first.clone();
                async move { first.turn(HOLD_WHILE_BUSY).await }
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
        let running = later.turn(HOLD_WHILE_BUSY).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(5), first.turn(HOLD_WHILE_BUSY)).await;
        assert!(gave_up.is_err());
        drop(running);
        let started = Instant::now();
        let turn = later.turn(HOLD_WHILE_BUSY).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(turn);
    }

    /// A writer that writes `busy` of every 10 ms, from now until `until`.
    fn write_steadily(ingest: Ingest, busy: Duration, until: Instant) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while Instant::now() < until {
                let writing = ingest.writing();
                tokio::time::sleep(busy).await;
                drop(writing);
                tokio::time::sleep(Duration::from_millis(10).saturating_sub(busy)).await;
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_writer_is_busy_a_group_waits_until_its_oldest_event_is_due() -> Result<(), tokio::task::JoinError>
    {
        let budget = Budget::new(1, 2).with_precedence(Precedence::First);
        let started = Instant::now();
        let writer = write_steadily(
            budget.ingest(),
            Duration::from_millis(9),
            started + Duration::from_secs(60),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A group already as old as the hold goes at once.
        let asked = Instant::now();
        drop(budget.turn(HOLD_WHILE_BUSY).await);
        assert!(asked.elapsed() < Duration::from_millis(20), "{:?}", asked.elapsed());
        // One 5 s old waits the rest of the hold.
        let asked = Instant::now();
        drop(budget.turn(Duration::from_secs(5)).await);
        let waited = asked.elapsed();
        assert!(
            waited >= HOLD_WHILE_BUSY - Duration::from_secs(5) && waited < HOLD_WHILE_BUSY - Duration::from_secs(4),
            "{waited:?}"
        );
        writer.abort();
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_keeps_up_holds_nothing_back() {
        let budget = Budget::new(1, 2);
        let writer = write_steadily(
            budget.ingest(),
            Duration::from_millis(2),
            Instant::now() + Duration::from_secs(60),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let asked = Instant::now();
        drop(budget.turn(Duration::ZERO).await);
        assert!(asked.elapsed() < Duration::from_millis(20), "{:?}", asked.elapsed());
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_group_goes_when_the_burst_ends() -> Result<(), tokio::task::JoinError> {
        let budget = Budget::new(1, 2);
        let burst_ends = Instant::now() + Duration::from_secs(3);
        let writer = write_steadily(budget.ingest(), Duration::from_millis(9), burst_ends);
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(budget.turn(Duration::ZERO).await);
        let late = Instant::now().saturating_duration_since(burst_ends);
        assert!(
            Instant::now() >= burst_ends && late <= QUIET_AFTER + Duration::from_millis(20),
            "{late:?} after the burst"
        );
        writer.await
    }
}
