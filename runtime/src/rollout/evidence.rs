//! When a step's figures show a breach rather than bad luck: a one-sided binomial test.
//!
//! A gate says "at most a share `p` of the candidate's requests may be bad" (failed, for the
//! error-rate gate; slower than the stable version's p99 times the allowed ratio, for the p99
//! gate, whose `p` is 1 %). Seeing `k` bad requests out of `n` is a breach only when that many
//! would be very unlikely if the candidate really met the gate: when the Chernoff bound on the
//! binomial tail, `P(X >= k) <= exp(-n * KL(k/n || p))`, is below [`ALPHA`]. So one slow or
//! failed request among a candidate's first few dozen (a cold instance, a busy machine) does
//! not roll back a healthy candidate, while a candidate that fails or is slow on every request
//! is rolled back as soon as it has `min_requests`.

/// The chance of a false alarm the test accepts at each look (the bound is conservative, so
/// the real chance is smaller).
pub const ALPHA: f64 = 1e-4;

/// Whether `bad` of `total` requests show, beyond [`ALPHA`], that more than a share `allowed`
/// (0-1) of requests are bad.
pub fn breached(bad: u64, total: u64, allowed: f64) -> bool {
    if total == 0 || bad == 0 {
        return false;
    }
    let seen = bad as f64 / total as f64;
    if seen <= allowed {
        return false;
    }
    if allowed <= 0.0 {
        return true;
    }
    if allowed >= 1.0 {
        return false;
    }
    // KL(seen || allowed), with 0 ln 0 = 0.
    let term = |a: f64, b: f64| if a == 0.0 { 0.0 } else { a * (a / b).ln() };
    let divergence = term(seen, allowed) + term(1.0 - seen, 1.0 - allowed);
    (-(total as f64) * divergence).exp() < ALPHA
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_bad_requests_are_luck_and_many_are_a_breach() {
        // Everything bad: a breach as soon as there are a handful of requests.
        assert!(breached(20, 20, 0.01));
        assert!(breached(3, 3, 0.01));
        assert!(!breached(1, 1, 0.01), "one request proves nothing");
        // One or two bad among a few dozen, against 1 %: luck.
        assert!(!breached(1, 17, 0.01));
        assert!(!breached(2, 26, 0.01));
        // A tenth of a hundred, against 1 %: a breach.
        assert!(breached(10, 100, 0.01));
        assert!(!breached(2, 100, 0.01));
        // Half of forty, against 1 %.
        assert!(breached(20, 40, 0.01));
        // No tolerance: any bad request is a breach; full tolerance: none is.
        assert!(breached(1, 50, 0.0));
        assert!(!breached(50, 50, 1.0));
        assert!(!breached(0, 50, 0.01));
        // Seen at or under the allowed share: never.
        assert!(!breached(1_000, 100_000, 0.01));
        // Large counts just above the share are a breach once there are enough of them.
        assert!(breached(1_300, 100_000, 0.01));
    }
}
