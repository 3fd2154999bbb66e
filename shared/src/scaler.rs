//! Scaling inside a process: how many messages a worker works on at once, from its backlog.
//!
//! The rule is the one the infrastructure uses across processes (ECS target tracking on
//! backlog per task, KEDA's `queueLength`), applied to units of concurrency:
//!
//! ```text
//! backlog            = ApproximateNumberOfMessages + ApproximateNumberOfMessagesNotVisible
//! backlog per process = backlog / processes
//! desired            = ceil(backlog per process / target backlog per unit), within [min, max]
//! ```
//!
//! Choosing the target: acceptable latency ÷ time per message. A message that takes 50 ms and
//! may wait 2 s gives a target of 40 messages of backlog per unit of concurrency.
//!
//! Up is immediate. Down waits for a cooldown since the last change and needs the new value to
//! be at least `hysteresis` below the current one, so a backlog that hovers does not flap.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Fraction below the current concurrency that a scale-down must reach.
pub const HYSTERESIS: f64 = 0.2;

/// The scaling rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerPolicy {
    /// Least concurrency.
    pub min: u32,
    /// Most concurrency.
    pub max: u32,
    /// Messages of backlog one unit of concurrency should carry.
    pub target_backlog_per_unit: f64,
    /// Processes sharing the queue (the backlog is split between them).
    pub processes: u32,
    /// Time since the last change before concurrency may go down.
    pub scale_down_cooldown: Duration,
}

impl ScalerPolicy {
    /// The concurrency the rule asks for at this backlog.
    pub fn desired(&self, backlog: u64) -> u32 {
        let per_process = backlog as f64 / f64::from(self.processes.max(1));
        let units = (per_process / self.target_backlog_per_unit.max(f64::MIN_POSITIVE)).ceil();
        (units.min(f64::from(u32::MAX)) as u32).clamp(self.min, self.max)
    }
}

/// A change of concurrency, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Concurrency before.
    pub from: u32,
    /// Concurrency after.
    pub to: u32,
    /// The backlog it was decided on.
    pub backlog: u64,
}

/// The scaler's state: the current concurrency and when it last changed.
#[derive(Debug, Clone)]
pub struct Scaler {
    policy: ScalerPolicy,
    current: u32,
    last_change: Option<Instant>,
}

impl Scaler {
    /// Starts at the policy's minimum.
    pub fn new(policy: ScalerPolicy) -> Self {
        Self {
            current: policy.min,
            policy,
            last_change: None,
        }
    }

    /// The current concurrency.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Applies the rule to a backlog observed at `now`; `Some` when concurrency changes.
    pub fn observe(&mut self, backlog: u64, now: Instant) -> Option<Decision> {
        let desired = self.policy.desired(backlog);
        let cooled = self
            .last_change
            .is_none_or(|at| now.duration_since(at) >= self.policy.scale_down_cooldown);
        let low_enough = f64::from(desired) <= f64::from(self.current) * (1.0 - HYSTERESIS)
            || desired == self.policy.min;
        let to = if desired > self.current || (desired < self.current && cooled && low_enough) {
            desired
        } else {
            return None;
        };
        let decision = Decision {
            from: self.current,
            to,
            backlog,
        };
        self.current = to;
        self.last_change = Some(now);
        Some(decision)
    }
}

/// A concurrency limit that can be changed while permits are out: lowering it retires permits
/// as they come back.
#[derive(Debug)]
pub struct Limit {
    semaphore: Arc<Semaphore>,
    /// Permits to retire when they are released (a decrease larger than what was free).
    debt: AtomicUsize,
    /// The limit itself: what the semaphore holds once the debt is paid.
    size: AtomicU32,
}

impl Limit {
    /// A limit of `n`.
    pub fn new(n: u32) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(n as usize)),
            debt: AtomicUsize::new(0),
            size: AtomicU32::new(n),
        }
    }

    /// The current limit.
    pub fn size(&self) -> u32 {
        self.size.load(Ordering::Acquire)
    }

    /// Waits for one permit, then up to `fill` for more, up to `want`: full batches under
    /// load, and no wait on a pool that slow messages keep partly busy.
    pub async fn acquire_batch(&self, want: u32, fill: Duration) -> OwnedSemaphorePermit {
        let acquire = || async {
            self.semaphore
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed")
        };
        let mut permits = acquire().await;
        let deadline = tokio::time::Instant::now() + fill;
        while permits.num_permits() < want as usize {
            match tokio::time::timeout_at(deadline, acquire()).await {
                Ok(more) => permits.merge(more),
                Err(_) => break,
            }
        }
        permits
    }

    /// Gives a permit back, or retires it if the limit went down meanwhile.
    pub fn release(&self, permit: OwnedSemaphorePermit) {
        let retire = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if retire {
            permit.forget();
        }
    }

    /// Gives back a block of unused permits, retiring what the limit owes.
    pub fn release_many(&self, mut permits: OwnedSemaphorePermit) {
        while permits.num_permits() > 1 {
            if let Some(one) = permits.split(1) {
                self.release(one);
            }
        }
        self.release(permits);
    }

    /// Sets the limit to `to`.
    pub fn resize(&self, to: u32) {
        let from = self.size.swap(to, Ordering::AcqRel);
        if to > from {
            let mut up = (to - from) as usize;
            // Cancel pending retirements first.
            while up > 0 {
                match self
                    .debt
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                {
                    Ok(_) => up -= 1,
                    Err(_) => break,
                }
            }
            self.semaphore.add_permits(up);
        } else {
            let down = (from - to) as usize;
            let forgotten = self.semaphore.forget_permits(down);
            self.debt.fetch_add(down - forgotten, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalerPolicy {
        ScalerPolicy {
            min: 2,
            max: 40,
            target_backlog_per_unit: 10.0,
            processes: 1,
            scale_down_cooldown: Duration::from_secs(60),
        }
    }

    #[test]
    fn desired_follows_backlog_per_process_within_bounds() {
        let p = policy();
        assert_eq!(p.desired(0), 2);
        assert_eq!(p.desired(95), 10);
        assert_eq!(p.desired(2000), 40);
        let shared = ScalerPolicy { processes: 4, ..p };
        assert_eq!(shared.desired(400), 10, "400 split over 4 processes");
    }

    #[test]
    fn up_at_once_down_after_cooldown_and_only_by_enough() {
        let mut s = Scaler::new(policy());
        let t0 = Instant::now();
        assert_eq!(s.observe(2000, t0).map(|d| d.to), Some(40), "up at once");
        assert_eq!(
            s.observe(50, t0 + Duration::from_secs(10)),
            None,
            "cooldown"
        );
        assert_eq!(
            s.observe(350, t0 + Duration::from_secs(61)),
            None,
            "35 is within 20 % of 40"
        );
        assert_eq!(
            s.observe(300, t0 + Duration::from_secs(62)).map(|d| d.to),
            Some(30)
        );
        assert_eq!(
            s.observe(0, t0 + Duration::from_secs(100)),
            None,
            "cooldown again"
        );
        assert_eq!(
            s.observe(0, t0 + Duration::from_secs(123)).map(|d| d.to),
            Some(2),
            "to min"
        );
    }

    #[test]
    fn a_hovering_backlog_does_not_flap() {
        let mut s = Scaler::new(policy());
        let t0 = Instant::now();
        let mut decisions = 0;
        for i in 0..600u64 {
            let backlog = if i % 2 == 0 { 200 } else { 180 };
            decisions += u32::from(s.observe(backlog, t0 + Duration::from_secs(i)).is_some());
        }
        assert_eq!(decisions, 1, "one scale-up to 20, then steady");
        assert_eq!(s.current(), 20);
    }

    #[tokio::test]
    async fn a_batch_takes_what_is_free_after_the_fill_wait() {
        let limit = Limit::new(10);
        let busy = limit.acquire_batch(1, Duration::ZERO).await;
        let batch = limit.acquire_batch(10, Duration::from_millis(20)).await;
        assert_eq!(
            batch.num_permits(),
            9,
            "one is busy: take nine, do not wait for ten"
        );
        drop(busy);
    }

    #[tokio::test]
    async fn limit_shrinks_as_permits_come_back_and_grows_at_once() {
        let limit = Limit::new(4);
        let held = limit.acquire_batch(4, Duration::from_millis(10)).await;
        limit.resize(1); // nothing free: three to retire on release
        let mut held = held;
        for _ in 0..3 {
            limit.release(held.split(1).unwrap());
        }
        limit.release(held);
        assert_eq!(limit.semaphore.available_permits(), 1);
        limit.resize(3);
        assert_eq!(limit.semaphore.available_permits(), 3);
        assert_eq!(limit.size(), 3);
    }
}
