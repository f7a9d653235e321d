//! Each version's budget of guest lines ([`LINE_BURST`], then [`LINES_PER_SECOND`]) and of
//! outbound warnings ([`OUTBOUND_BURST`], then [`OUTBOUND_PER_SECOND`]): one clock read and one
//! compare-and-swap a line; what is over it is counted, and reported once every
//! [`REPORT_EVERY`] by a thread of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::tail::Tail;

/// Lines a version may log at once before its budget applies.
pub const LINE_BURST: u64 = 500;
/// Lines a version may log per second once its burst is spent.
pub const LINES_PER_SECOND: u64 = 100;
/// Outbound warnings (denied, refused, failed requests) a version may cause at once.
pub const OUTBOUND_BURST: u64 = 10;
/// Outbound warnings a version may cause per second once that burst is spent.
pub const OUTBOUND_PER_SECOND: u64 = 1;
/// How often suppressed counts are reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// One version's guest logging: its labels and its budgets. Built once per version.
pub struct GuestLogs {
    pub(super) route: Arc<str>,
    pub(super) version: Arc<str>,
    lines: Budget,
    outbound: Budget,
    /// The server's followers of guest lines, once the version is attached to them.
    pub(super) tail: OnceLock<Arc<Tail>>,
}

impl GuestLogs {
    /// The logging state of the version `version` (its short digest) of `route`.
    pub fn new(route: Arc<str>, version: Arc<str>) -> Arc<Self> {
        Arc::new(Self {
            route,
            version,
            lines: Budget::new(LINE_BURST, LINES_PER_SECOND),
            outbound: Budget::new(OUTBOUND_BURST, OUTBOUND_PER_SECOND),
            tail: OnceLock::new(),
        })
    }

    /// Sends this version's lines to `tail`'s followers too.
    pub fn tail_to(&self, tail: &Arc<Tail>) {
        let _ = self.tail.set(tail.clone());
    }

    /// The route, for log fields.
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// The version's short digest, for log fields.
    pub fn version(&self) -> &Arc<str> {
        &self.version
    }

    /// Whether a warning the guest caused on the outbound path may be logged now; if not, it
    /// is counted and reported later.
    pub fn admit_outbound_warning(self: &Arc<Self>) -> bool {
        if self.outbound.admit() {
            return true;
        }
        self.suppress(&self.outbound);
        false
    }

    /// Guest lines not logged because the version was over its budget, since it was built.
    pub fn suppressed_lines(&self) -> u64 {
        self.lines.total.load(Ordering::Relaxed)
    }

    /// Outbound warnings not logged because the version was over its budget.
    pub fn suppressed_outbound_warnings(&self) -> u64 {
        self.outbound.total.load(Ordering::Relaxed)
    }

    pub(super) fn admit_line(self: &Arc<Self>) -> bool {
        if self.lines.admit() {
            return true;
        }
        self.suppress(&self.lines);
        false
    }

    fn suppress(self: &Arc<Self>, budget: &Budget) {
        budget.total.fetch_add(1, Ordering::Relaxed);
        // The first suppression since the last report schedules the next one.
        if budget.unreported.fetch_add(1, Ordering::Relaxed) == 0 {
            schedule_report(self.clone());
        }
    }

    /// Logs (and resets) what was suppressed since the last report.
    fn report(&self) {
        let (route, version) = (&self.route, &self.version);
        let lines = self.lines.unreported.swap(0, Ordering::Relaxed);
        if lines > 0 {
            tracing::warn!(
                %route, %version, suppressed = lines,
                "guest log lines suppressed: the version logged more than {LINE_BURST} lines at once or {LINES_PER_SECOND} a second"
            );
        }
        let outbound = self.outbound.unreported.swap(0, Ordering::Relaxed);
        if outbound > 0 {
            tracing::warn!(
                %route, %version, suppressed = outbound,
                "outbound warnings suppressed: the version caused more than {OUTBOUND_BURST} at once or {OUTBOUND_PER_SECOND} a second"
            );
        }
    }
}

impl Drop for GuestLogs {
    fn drop(&mut self) {
        // Only without the reporter thread (it could not start) can counts be left here.
        self.report();
    }
}

/// A burst, then a steady rate: the generic cell rate algorithm on one atomic (the
/// theoretical arrival time of the next event, in nanoseconds since [`epoch`]).
struct Budget {
    interval: u64,
    tolerance: u64,
    next: AtomicU64,
    unreported: AtomicU64,
    total: AtomicU64,
}

impl Budget {
    fn new(burst: u64, per_second: u64) -> Self {
        let interval = 1_000_000_000 / per_second.max(1);
        Self {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            next: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn admit(&self) -> bool {
        self.admit_at(epoch().elapsed().as_nanos() as u64)
    }

    /// [`Self::admit`] at `now` nanoseconds since [`epoch`].
    fn admit_at(&self, now: u64) -> bool {
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            let start = next.max(now);
            if start - now > self.tolerance {
                return false;
            }
            match self.next.compare_exchange_weak(
                next,
                start + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => next = actual,
            }
        }
    }
}

/// The process's time zero for [`Budget`]s.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Versions with suppressed counts to report.
struct Reports {
    due: Mutex<Vec<Arc<GuestLogs>>>,
    wake: Condvar,
}

static REPORTS: Reports = Reports {
    due: Mutex::new(Vec::new()),
    wake: Condvar::new(),
};

/// Has `logs` reported within [`REPORT_EVERY`], by the reporter thread (started on first use).
fn schedule_report(logs: Arc<GuestLogs>) {
    static REPORTER: OnceLock<bool> = OnceLock::new();
    let running = *REPORTER.get_or_init(|| {
        std::thread::Builder::new()
            .name("handoff-guest-log".into())
            .spawn(report_forever)
            .is_ok()
    });
    // Without the thread, the counts still reach `/metrics`, and the log when the version is
    // freed.
    if running {
        REPORTS
            .due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(logs);
        REPORTS.wake.notify_one();
    }
}

fn report_forever() {
    loop {
        {
            let mut due = REPORTS.due.lock().unwrap_or_else(|e| e.into_inner());
            while due.is_empty() {
                due = REPORTS.wake.wait(due).unwrap_or_else(|e| e.into_inner());
            }
        }
        // Let the counts gather for a period, then report each version once.
        std::thread::sleep(REPORT_EVERY);
        let due = std::mem::take(&mut *REPORTS.due.lock().unwrap_or_else(|e| e.into_inner()));
        for logs in due {
            logs.report();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_its_burst_then_its_rate() {
        const SECOND: u64 = 1_000_000_000;
        let budget = Budget::new(5, 10);
        let start = 7 * SECOND;
        let admitted = (0..100).filter(|_| budget.admit_at(start)).count();
        assert_eq!(admitted, 5);
        // One more every tenth of a second, never more than that.
        assert!(!budget.admit_at(start + SECOND / 20));
        assert!(budget.admit_at(start + SECOND / 10));
        assert!(!budget.admit_at(start + SECOND / 10));
        let later = start + 3 * SECOND / 10;
        assert_eq!((0..100).filter(|_| budget.admit_at(later)).count(), 2);
        // After a quiet spell the whole burst is back, not more.
        let quiet = later + 60 * SECOND;
        assert_eq!((0..100).filter(|_| budget.admit_at(quiet)).count(), 5);
    }

    #[test]
    fn the_budgets_are_what_the_readme_says() {
        assert_eq!(
            (
                LINE_BURST,
                LINES_PER_SECOND,
                OUTBOUND_BURST,
                OUTBOUND_PER_SECOND
            ),
            (500, 100, 10, 1)
        );
        assert_eq!(REPORT_EVERY, Duration::from_secs(1));
        assert_eq!(crate::guest_log::MAX_GUEST_LINE, 16 << 10);
    }

    #[test]
    fn suppressed_lines_are_counted_for_the_version() {
        let logs = GuestLogs::new("r".into(), "v".into());
        let admitted = (0..LINE_BURST + 50).filter(|_| logs.admit_line()).count() as u64;
        assert!(admitted >= LINE_BURST);
        assert_eq!(logs.suppressed_lines(), LINE_BURST + 50 - admitted);
        assert!(logs.suppressed_lines() > 0);
        let warnings = (0..OUTBOUND_BURST + 5)
            .filter(|_| logs.admit_outbound_warning())
            .count() as u64;
        assert_eq!(
            logs.suppressed_outbound_warnings(),
            OUTBOUND_BURST + 5 - warnings
        );
    }
}
