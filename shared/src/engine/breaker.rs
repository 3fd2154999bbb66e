//! The circuit breaker: a dependency outage is not a poison message.
//!
//! Without it, an outage of the worker's dependency (DynamoDB, S3, an HTTP peer) makes every
//! message fail, and each failure spends one of the queue's few receives: with
//! `maxReceiveCount` 3 a whole backlog is dead-lettered within the retry schedule. The breaker
//! watches the outcomes the engine settles:
//!
//! ```text
//!            `threshold` dependency failures in a row
//!   Closed ───────────────────────────────────────────► Open (no receives for `open_for`)
//!     ▲  ▲                                                 │ time is up
//!     │  └──────── a message succeeds ──────── Probing ◄───┘ (receive ONE message)
//!     │                                          │ the probe fails too
//!     └── any success                            └──► Open again, `open_for` doubled (≤ max)
//! ```
//!
//! While it is open nothing is received, so no receive count is burned; one message probes
//! the dependency at a growing interval; the first success resumes full rate. A failure that
//! happens while the breaker is open is the dependency's, not the message's: the engine does not
//! dead-letter such a message for its receive count but puts a fresh copy back on the queue
//! (standard queues; see `settle`), up to `max_outage`.
//!
//! Only failures that blame a dependency ([`crate::Reason::dependency`], set for every
//! retryable AWS error) count. A business "not yet" (results not ready) and permanent failures
//! leave the breaker as it is.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// How the breaker decides (from [`crate::EngineConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Dependency failures in a row (no success between) that open the breaker; 0 turns the
    /// breaker off.
    pub threshold: u32,
    /// How long it stays open the first time; doubles after each failed probe.
    pub first_open: Duration,
    /// The longest it stays open between two probes (bounds the time to notice a recovery).
    pub max_open: Duration,
    /// How long a message may be kept going round during an outage before it is dead-lettered
    /// after all.
    pub max_outage: Duration,
    /// A probe that has not settled by then (its handler hangs, or it was handed back without
    /// an outcome) counts as failed, so that the breaker never waits on it for ever.
    pub probe_deadline: Duration,
}

/// What the receive loop may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Receive as many as there is room for.
    Full,
    /// Receive one message: it probes the dependency.
    Probe,
    /// The breaker is open: receive nothing until this instant (or until the state changes).
    /// Waiting out an outage is what a healthy worker does.
    Paused(Instant),
    /// A probe is out: receive nothing until it settles (look again at this instant).
    ProbeOut(Instant),
}

/// What a settled message says about the dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// It answered: the message was handled.
    Healthy,
    /// It did not answer.
    Down,
    /// Nothing either way (a permanent failure, a business retry, a hand-back).
    Neutral,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        open_for: Duration,
    },
    /// `probe_out`: since when a probe is out, if one is.
    Probing {
        open_for: Duration,
        probe_out: Option<Instant>,
    },
}

/// The breaker of one engine (one queue, one handler).
pub(crate) struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<State>,
    changed: Notify,
    metrics: Arc<Metrics>,
    /// When it last closed after an outage: messages that spent receives in that outage are
    /// still ridden out for [`AFTERMATH`] after it.
    closed_at: Mutex<Option<Instant>>,
}

/// After an outage, how long a dependency failure on a message's last receive still counts as
/// the outage's (its earlier receives were spent in it): about the longest retry delay.
pub(crate) const AFTERMATH: Duration = Duration::from_secs(15 * 60);

impl Breaker {
    pub(crate) fn new(policy: BreakerPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            policy,
            state: Mutex::new(State::Closed { failures: 0 }),
            changed: Notify::new(),
            metrics,
            closed_at: Mutex::new(None),
        }
    }

    /// Whether a dependency outage is going on (the breaker is not closed).
    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    /// Whether an outage is going on, or ended less than [`AFTERMATH`] ago.
    pub(crate) fn outage_recent(&self, now: Instant) -> bool {
        self.is_open()
            || self
                .closed_at
                .lock()
                .expect("breaker lock")
                .is_some_and(|closed| now.saturating_duration_since(closed) < AFTERMATH)
    }

    /// The policy it runs on.
    pub(crate) fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// What the receive loop may do at `now`.
    pub(crate) fn admit(&self, now: Instant) -> Admit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admit::Full,
            State::Open { until, .. } if now < until => Admit::Paused(until),
            State::Open { open_for, .. } => {
                info!(
                    open_secs = open_for.as_secs_f64(),
                    "breaker half-open: probing with one message"
                );
                *state = State::Probing {
                    open_for,
                    probe_out: Some(now),
                };
                Admit::Probe
            }
            State::Probing {
                open_for,
                probe_out: None,
            } => {
                *state = State::Probing {
                    open_for,
                    probe_out: Some(now),
                };
                Admit::Probe
            }
            State::Probing {
                open_for,
                probe_out: Some(since),
            } if now >= since + self.policy.probe_deadline => {
                warn!(
                    waited_secs = (now - since).as_secs_f64(),
                    "the probe did not settle in time: counted as failed"
                );
                let until = self.reopen(&mut state, open_for, now);
                Admit::Paused(until)
            }
            // Look again in a second (or as soon as the probe settles).
            State::Probing {
                probe_out: Some(since),
                ..
            } => Admit::ProbeOut(
                (now + Duration::from_secs(1)).min(since + self.policy.probe_deadline),
            ),
        }
    }

    /// Open again after a failed probe, for twice as long (at most the policy's maximum);
    /// returns until when.
    fn reopen(&self, state: &mut State, open_for: Duration, now: Instant) -> Instant {
        let open_for = (open_for * 2).min(self.policy.max_open);
        let until = now + open_for;
        *state = State::Open { until, open_for };
        self.changed.notify_waiters();
        until
    }

    /// The probe's receive brought back `received` messages (none: probe again).
    pub(crate) fn probe_received(&self, received: usize) {
        if received == 0 {
            self.unblock_probe();
        }
    }

    /// Waits until the state may have changed or `until`, whichever comes first.
    pub(crate) async fn changed_or(&self, until: Instant) {
        tokio::select! {
            () = self.changed.notified() => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }

    /// Records what a settled message says; returns whether a dependency outage is going on
    /// after it (a `Down` that opened the breaker or found it open).
    pub(crate) fn record(&self, signal: Signal, now: Instant) -> bool {
        match signal {
            Signal::Healthy => {
                let mut state = self.lock();
                if !matches!(*state, State::Closed { .. }) {
                    info!("breaker closed: the dependency answers again, full rate");
                    self.metrics.breaker_open.store(0, Ordering::Relaxed);
                    *self.closed_at.lock().expect("breaker lock") = Some(now);
                    self.changed.notify_waiters();
                }
                *state = State::Closed { failures: 0 };
                false
            }
            Signal::Neutral => {
                self.unblock_probe();
                self.is_open()
            }
            Signal::Down => self.down(now),
        }
    }

    fn down(&self, now: Instant) -> bool {
        if self.policy.threshold == 0 {
            return false;
        }
        let mut state = self.lock();
        match *state {
            State::Closed { failures } if failures + 1 >= self.policy.threshold => {
                let open_for = self.policy.first_open.min(self.policy.max_open);
                *state = State::Open {
                    until: now + open_for,
                    open_for,
                };
                warn!(
                    failures = failures + 1,
                    open_secs = open_for.as_secs_f64(),
                    "breaker opened: the dependency does not answer; receiving nothing until a probe succeeds"
                );
                self.metrics.breaker_open.store(1, Ordering::Relaxed);
                Metrics::incr(&self.metrics.breaker_opened);
                true
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Open { .. } => true,
            State::Probing { open_for, .. } => {
                let until = self.reopen(&mut state, open_for, now);
                info!(
                    open_secs = (until - now).as_secs_f64(),
                    "probe failed: breaker stays open"
                );
                true
            }
        }
    }

    fn unblock_probe(&self) {
        let mut state = self.lock();
        if let State::Probing {
            open_for,
            probe_out: Some(_),
        } = *state
        {
            *state = State::Probing {
                open_for,
                probe_out: None,
            };
            self.changed.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("breaker lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> Breaker {
        Breaker::new(
            BreakerPolicy {
                threshold,
                first_open: Duration::from_secs(1),
                max_open: Duration::from_secs(4),
                max_outage: Duration::from_secs(3600),
                probe_deadline: Duration::from_secs(30),
            },
            Metrics::new(),
        )
    }

    #[test]
    fn opens_after_threshold_failures_in_a_row_and_a_success_resets_the_count() {
        let b = breaker(3);
        let t = Instant::now();
        assert!(!b.record(Signal::Down, t));
        assert!(!b.record(Signal::Down, t));
        assert!(!b.record(Signal::Healthy, t));
        assert!(!b.record(Signal::Down, t));
        assert!(!b.record(Signal::Down, t));
        assert_eq!(b.admit(t), Admit::Full);
        assert!(b.record(Signal::Down, t), "the third in a row opens it");
        assert_eq!(b.admit(t), Admit::Paused(t + Duration::from_secs(1)));
        assert_eq!(b.metrics.breaker_open.load(Ordering::Relaxed), 1);
        assert_eq!(b.metrics.breaker_opened.load(Ordering::Relaxed), 1);
        assert!(
            b.record(Signal::Down, t),
            "failures while open are the outage's"
        );
    }

    #[test]
    fn probes_one_message_at_a_doubling_interval_and_closes_on_success() {
        let b = breaker(1);
        let t = Instant::now();
        b.record(Signal::Down, t);
        let mut at = t;
        for open_for in [1, 2, 4, 4] {
            at += Duration::from_secs(open_for);
            assert_eq!(b.admit(at - Duration::from_millis(1)), Admit::Paused(at));
            assert_eq!(b.admit(at), Admit::Probe);
            assert!(
                matches!(b.admit(at), Admit::ProbeOut(_)),
                "one probe at a time"
            );
            assert!(b.record(Signal::Down, at), "the probe failed");
        }
        at += Duration::from_secs(4);
        assert_eq!(b.admit(at), Admit::Probe);
        b.probe_received(0);
        assert_eq!(
            b.admit(at),
            Admit::Probe,
            "an empty probe receive probes again"
        );
        assert!(!b.record(Signal::Healthy, at));
        assert_eq!(b.admit(at), Admit::Full);
        assert_eq!(b.metrics.breaker_open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_neutral_probe_lets_another_probe_go() {
        let b = breaker(1);
        let t = Instant::now();
        b.record(Signal::Down, t);
        let later = t + Duration::from_secs(1);
        assert_eq!(b.admit(later), Admit::Probe);
        assert!(b.record(Signal::Neutral, later), "still an outage");
        assert_eq!(b.admit(later), Admit::Probe);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = breaker(0);
        let t = Instant::now();
        for _ in 0..100 {
            assert!(!b.record(Signal::Down, t));
        }
        assert_eq!(b.admit(t), Admit::Full);
    }

    #[test]
    fn a_probe_that_never_settles_counts_as_failed_at_its_deadline() {
        let b = breaker(1);
        let t = Instant::now();
        b.record(Signal::Down, t);
        let probe_at = t + Duration::from_secs(1);
        assert_eq!(b.admit(probe_at), Admit::Probe);
        let almost = probe_at + Duration::from_secs(29);
        assert!(matches!(b.admit(almost), Admit::ProbeOut(_)));
        let deadline = probe_at + Duration::from_secs(30);
        assert_eq!(
            b.admit(deadline),
            Admit::Paused(deadline + Duration::from_secs(2)),
            "open again, for twice as long"
        );
        assert_eq!(b.admit(deadline + Duration::from_secs(2)), Admit::Probe);
    }

    #[test]
    fn an_outage_is_recent_while_open_and_for_the_aftermath_after() {
        let b = breaker(1);
        let t = Instant::now();
        assert!(!b.outage_recent(t), "no outage yet");
        b.record(Signal::Down, t);
        assert!(b.outage_recent(t));
        let closed = t + Duration::from_secs(5);
        b.record(Signal::Healthy, closed);
        assert!(b.outage_recent(closed + AFTERMATH - Duration::from_secs(1)));
        assert!(!b.outage_recent(closed + AFTERMATH));
    }
}
