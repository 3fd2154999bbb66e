//! Handler latencies as a distribution CloudWatch can aggregate across tasks (EMF `Values` and
//! `Counts`), recorded lock-free in logarithmic buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Histogram, HistogramFn};
use serde_json::{json, Value};

use super::EMF_MAX_VALUES;

/// Buckets of a [`Distribution`]: bucket 0 holds values up to [`LOWEST`], bucket `i` those in
/// (`LOWEST`·1.1^(i-1), `LOWEST`·1.1^i]: 1 µs to 1.1·10⁹ ms (13 days) when the unit is ms.
const BUCKETS: usize = 292;
/// The upper bound of bucket 0.
const LOWEST: f64 = 1e-3;
/// Each bucket's bounds are 10 % apart: a value is reported within ±5 % (the resolution of
/// AWS's own EMF libraries).
const GROWTH: f64 = 1.1;

/// Values recorded since the previous [`Distribution::take`], in logarithmic buckets 10 % wide:
/// lock-free, fixed memory, nothing allocated per value. Exported as a CloudWatch distribution
/// (`Values` and `Counts`), which CloudWatch aggregates across tasks and periods.
pub struct Distribution {
    buckets: [AtomicU64; BUCKETS],
    /// Bits of the sum of the values (an `f64`).
    sum: AtomicU64,
    /// Bits of the least value (`f64`, +∞ when none).
    min: AtomicU64,
    /// Bits of the greatest value (`f64`, −∞ when none).
    max: AtomicU64,
    /// The Prometheus endpoint's histogram, once there is one.
    mirror: OnceLock<Histogram>,
}

impl Default for Distribution {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0f64.to_bits()),
            min: AtomicU64::new(f64::INFINITY.to_bits()),
            max: AtomicU64::new(f64::NEG_INFINITY.to_bits()),
            mirror: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distribution").finish_non_exhaustive()
    }
}

/// What a [`Distribution`] held when taken: what an EMF distribution carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// One value per bucket with values (its geometric middle, within [min, max]), ascending.
    pub values: Vec<f64>,
    /// How many values each of `values` stands for.
    pub counts: Vec<u64>,
    /// The least value.
    pub min: f64,
    /// The greatest value.
    pub max: f64,
    /// The sum of the values.
    pub sum: f64,
    /// How many values.
    pub count: u64,
}

impl Distribution {
    pub(super) fn bucket(value: f64) -> usize {
        if value.partial_cmp(&LOWEST) != Some(std::cmp::Ordering::Greater) {
            return 0;
        }
        (((value / LOWEST).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
    }

    /// The geometric middle of a bucket.
    pub(super) fn middle(bucket: usize) -> f64 {
        if bucket == 0 {
            return LOWEST;
        }
        LOWEST * GROWTH.powf(bucket as f64 - 0.5)
    }

    /// Records a duration, in milliseconds.
    pub fn record_duration(&self, elapsed: Duration) {
        HistogramFn::record(self, elapsed.as_secs_f64() * 1000.0);
    }

    pub(super) fn mirror(&self, histogram: Histogram) {
        let _ = self.mirror.set(histogram);
    }

    /// What was recorded since the previous call (`None` for nothing), and a reset.
    pub fn take(&self) -> Option<Taken> {
        let taken: Vec<(usize, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let n = b.swap(0, Ordering::Relaxed);
                (n > 0).then_some((i, n))
            })
            .collect();
        let min = f64::from_bits(self.min.swap(f64::INFINITY.to_bits(), Ordering::Relaxed));
        let max = f64::from_bits(
            self.max
                .swap(f64::NEG_INFINITY.to_bits(), Ordering::Relaxed),
        );
        let sum = f64::from_bits(self.sum.swap(0f64.to_bits(), Ordering::Relaxed));
        let (first, last) = (taken.first()?.0, taken.last()?.0);
        // On a multi-threaded runtime a value recorded during the take may have reached its
        // bucket but not the statistics (or the other way round): keep the set consistent.
        let min = if min.is_finite() {
            min
        } else {
            Self::middle(first)
        };
        let max = if max.is_finite() && max >= min {
            max
        } else {
            Self::middle(last).max(min)
        };
        let count: u64 = taken.iter().map(|(_, n)| n).sum();
        let sum = sum.clamp(
            max + min * (count - 1) as f64,
            min + max * (count - 1) as f64,
        );
        let mut points: Vec<(f64, u64)> = taken
            .into_iter()
            .map(|(i, n)| (Self::middle(i).clamp(min, max), n))
            .collect();
        // CloudWatch takes at most 100 values a metric: halve the resolution until it fits.
        while points.len() > EMF_MAX_VALUES {
            points = points
                .chunks(2)
                .map(|pair| {
                    let n: u64 = pair.iter().map(|(_, n)| n).sum();
                    let weighted: f64 = pair.iter().map(|(v, n)| v * *n as f64).sum();
                    (weighted / n as f64, n)
                })
                .collect();
        }
        let (values, counts) = points.into_iter().unzip();
        Some(Taken {
            values,
            counts,
            min,
            max,
            sum,
            count,
        })
    }
}

impl HistogramFn for Distribution {
    fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        self.buckets[Self::bucket(value)].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        let _ = self
            .min
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                (value < f64::from_bits(bits)).then(|| value.to_bits())
            });
        let _ = self
            .max
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                (value > f64::from_bits(bits)).then(|| value.to_bits())
            });
        if let Some(mirror) = self.mirror.get() {
            mirror.record(value);
        }
    }
}

impl Taken {
    /// The EMF form of a distribution.
    pub fn to_emf(&self) -> Value {
        json!({
            "Values": self.values,
            "Counts": self.counts,
            "Min": self.min,
            "Max": self.max,
            "Count": self.count,
            "Sum": self.sum,
        })
    }
}
