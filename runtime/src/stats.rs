//! What a version's requests did, counted on the hot path with relaxed atomics only: requests,
//! errors, responses by status class, and a latency histogram with fixed buckets. Readers
//! (status pages, `/metrics`, rollout gates) take [`Snapshot`]s; a window (a rollout step) is
//! the difference of two snapshots, so nothing on the hot path is ever reset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in milliseconds (the last bucket is everything above).
pub const BUCKETS_MS: [u64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
];

/// Buckets in the histogram: one per bound, and one for everything above the last.
const BUCKETS: usize = BUCKETS_MS.len() + 1;

/// The counters of one version.
#[derive(Debug, Default)]
pub struct VersionStats {
    completed: AtomicU64,
    errors: AtomicU64,
    classes: [AtomicU64; 5],
    latency: [AtomicU64; BUCKETS],
    latency_us: AtomicU64,
}

impl VersionStats {
    /// Counts a request that ended: the status it was answered with (0 if none was sent), how
    /// long it took from routing to the end of its response, and whether it failed (a 5xx, or a
    /// guest that failed after its response head).
    pub fn record(&self, status: u16, took: Duration, failed: bool) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if failed || status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if (100..600).contains(&status) {
            self.classes[usize::from(status / 100 - 1)].fetch_add(1, Ordering::Relaxed);
        }
        let ms = took.as_millis() as u64;
        let bucket = BUCKETS_MS.partition_point(|&bound| bound < ms);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Requests that failed so far: a 5xx, or a body that ended with an error.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Counts a request the version is not judged by (refused for overload, or ended because
    /// its client did not send its body or read its response in time): only its status class,
    /// not the requests, errors and latencies that its failures and rollout gates read.
    pub fn record_excused(&self, status: u16) {
        if (100..600).contains(&status) {
            self.classes[usize::from(status / 100 - 1)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            completed: self.completed.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            classes: std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed)),
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
            latency_us: self.latency_us.load(Ordering::Relaxed),
        }
    }
}

/// The counters of a version at one moment, or over a window (the difference of two moments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests that ended.
    pub completed: u64,
    /// Of those, the ones that failed.
    pub errors: u64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub classes: [u64; 5],
    /// Requests per latency bucket ([`BUCKETS_MS`], then the overflow).
    pub latency: [u64; BUCKETS],
    /// Total latency, microseconds.
    pub latency_us: u64,
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            completed: self.completed.saturating_sub(earlier.completed),
            errors: self.errors.saturating_sub(earlier.errors),
            classes: std::array::from_fn(|i| self.classes[i].saturating_sub(earlier.classes[i])),
            latency: std::array::from_fn(|i| self.latency[i].saturating_sub(earlier.latency[i])),
            latency_us: self.latency_us.saturating_sub(earlier.latency_us),
        }
    }

    /// The share of requests that failed (0 when there were none).
    pub fn error_rate(&self) -> f64 {
        if self.completed == 0 {
            0.0
        } else {
            self.errors as f64 / self.completed as f64
        }
    }

    /// The latency below which `q` (0-1) of the requests fell, in milliseconds, interpolated
    /// within its bucket; `None` without requests. Requests above the last bound count as the
    /// last bound.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &count) in self.latency.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let low = if i == 0 { 0 } else { BUCKETS_MS[i - 1] } as f64;
                let high = *BUCKETS_MS
                    .get(i)
                    .unwrap_or(&BUCKETS_MS[BUCKETS_MS.len() - 1]) as f64;
                let within = (rank - seen as f64) / count as f64;
                return Some(low + (high - low) * within);
            }
            seen += count;
        }
        Some(BUCKETS_MS[BUCKETS_MS.len() - 1] as f64)
    }

    /// Requests that certainly took longer than `ms`: those in buckets whose lower bound is at
    /// least `ms` (an undercount by the requests in the bucket `ms` falls in).
    pub fn slower_than_ms(&self, ms: f64) -> u64 {
        self.latency
            .iter()
            .enumerate()
            .filter(|(i, _)| *i > 0 && BUCKETS_MS[i - 1] as f64 >= ms)
            .map(|(_, count)| count)
            .sum()
    }

    /// Cumulative counts per bucket bound, for a Prometheus histogram (`le` in seconds).
    pub fn cumulative(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let mut running = 0u64;
        BUCKETS_MS
            .iter()
            .map(|ms| format!("{}", *ms as f64 / 1000.0))
            .chain(std::iter::once("+Inf".to_owned()))
            .zip(self.latency.iter())
            .map(move |(le, count)| {
                running += count;
                (le, running)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_differences_and_percentiles_interpolate() {
        let stats = VersionStats::default();
        for ms in [3u64, 3, 3, 3, 40] {
            stats.record(200, Duration::from_millis(ms), false);
        }
        let start = stats.snapshot();
        for _ in 0..98 {
            stats.record(200, Duration::from_millis(8), false);
        }
        stats.record(503, Duration::from_millis(900), false);
        stats.record(200, Duration::from_millis(4), true);
        let window = stats.snapshot().since(&start);
        assert_eq!(window.completed, 100);
        assert_eq!(window.errors, 2);
        assert_eq!(window.classes, [0, 99, 0, 0, 1]);
        assert!((window.error_rate() - 0.02).abs() < 1e-9);
        let p50 = window.percentile_ms(0.5).unwrap();
        assert!((5.0..=10.0).contains(&p50), "{p50}");
        let p99 = window.percentile_ms(0.995).unwrap();
        assert!(p99 > 500.0, "{p99}");
        assert_eq!(Snapshot::default().percentile_ms(0.99), None);
        assert_eq!(window.slower_than_ms(400.0), 1, "the 900 ms one");
        assert_eq!(
            window.slower_than_ms(5.0),
            99,
            "the 8 ms ones and the 900 ms one"
        );
        assert_eq!(
            window.slower_than_ms(6.0),
            1,
            "8 ms is in the 5-10 bucket: not certain"
        );
        let cumulative: Vec<_> = window.cumulative().collect();
        assert_eq!(cumulative.last().unwrap(), &("+Inf".to_owned(), 100));
    }
}
