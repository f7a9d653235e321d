//! Shadow traffic: a share of a route's requests is copied to a shadow version whose response is
//! compared with the stable version's, never sent. The client always gets the stable version's
//! response; the shadow runs beside it, on its own task and deadline, with outbound HTTP denied.
//!
//! Comparing: the status, the headers the shadow lists, and the body's sha256. **Noise**: some
//! responses differ from run to run on the same version (timestamps, ids). So the first
//! requests to each path, and a sample of later ones, also run the *stable* version a second
//! time (the trick of Twitter's Diffy); a path where the stable version differs from itself in
//! some part (status, a header, the body) has that part counted as noise: a shadow that differs
//! only there is reported as `noise`, not as a mismatch.
//!
//! [`ShadowStats`] is route-lifetime state: counters, the path noise model and the latest
//! mismatch samples. Its updates happen on the comparison's own task, never on the client's.

pub mod copy;

pub use copy::Summary;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::api;
use crate::digest::Digest;
use crate::state::ShadowRecord;

/// The most mismatch samples a route keeps (the latest).
pub const MAX_SAMPLES: usize = 50;
/// Requests to a path that also run the stable version a second time before its noise counts
/// as known.
pub const CALIBRATION: u32 = 3;
/// After that, one request in this many runs it again.
pub const RESAMPLE_EVERY: u64 = 10;
/// Paths whose noise is remembered per route; past this, every request to a new path is
/// calibrated.
pub const MAX_PATHS: usize = 1024;
/// Kinds of mismatch counted apart per route; past this, the rest count as [`OTHER_KIND`].
pub const MAX_KINDS: usize = 32;
/// The kind the mismatches beyond [`MAX_KINDS`] kinds count as.
pub const OTHER_KIND: &str = "other kinds";
/// The largest request body copied to a shadow; a bigger request is skipped.
pub const MAX_COPIED_BODY: u64 = 1 << 20;

/// Where two responses differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Parts {
    status: bool,
    headers: Vec<bool>,
    body: bool,
}

impl Parts {
    fn between(a: &Summary, b: &Summary) -> Self {
        Self {
            status: a.status != b.status,
            headers: a
                .headers
                .iter()
                .zip(&b.headers)
                .map(|(x, y)| x != y)
                .collect(),
            body: a.digest != b.digest,
        }
    }

    fn any(&self) -> bool {
        self.status || self.body || self.headers.iter().any(|h| *h)
    }

    /// Adds `other`'s differing parts to these.
    fn add(&mut self, other: &Parts) {
        self.status |= other.status;
        self.body |= other.body;
        if self.headers.len() < other.headers.len() {
            self.headers.resize(other.headers.len(), false);
        }
        for (mine, theirs) in self.headers.iter_mut().zip(&other.headers) {
            *mine |= *theirs;
        }
    }

    /// Whether every part that differs here also differs in `noise`.
    fn within(&self, noise: &Parts) -> bool {
        (!self.status || noise.status)
            && (!self.body || noise.body)
            && self
                .headers
                .iter()
                .enumerate()
                .all(|(i, differs)| !differs || noise.headers.get(i).copied().unwrap_or(false))
    }
}

/// What the stable version has shown about one path.
#[derive(Debug, Default)]
struct PathNoise {
    /// Second runs of the stable version asked for so far (counted when asked: a second run
    /// whose outbound call was denied still counts, so calibration ends).
    calibrations: u32,
    /// Requests to the path so far.
    seen: u64,
    /// The parts in which the stable version differed from itself.
    noisy: Parts,
}

#[derive(Debug, Default)]
struct Inner {
    /// The shadow these figures are about.
    version: Option<Digest>,
    paths: HashMap<String, PathNoise>,
    /// Requests to paths beyond the first [`MAX_PATHS`] (sampled one in [`RESAMPLE_EVERY`]).
    overflow: u64,
    samples: VecDeque<api::ShadowSample>,
    /// Mismatches by kind (what differed), in the order first seen.
    kinds: Vec<(String, u64)>,
}

impl Inner {
    /// Counts a mismatch of `kind`.
    fn count_kind(&mut self, kind: &str) {
        if let Some((_, count)) = self.kinds.iter_mut().find(|(k, _)| k == kind) {
            *count += 1;
        } else if self.kinds.len() < MAX_KINDS {
            self.kinds.push((kind.to_owned(), 1));
        } else if let Some((_, count)) = self.kinds.iter_mut().find(|(k, _)| k == OTHER_KIND) {
            *count += 1;
        } else {
            self.kinds.push((OTHER_KIND.to_owned(), 1));
        }
    }
}

/// What differed between the stable version's response and the shadow's, in words: the kind
/// mismatches are grouped by.
fn kind(differs: &Parts, compared: &[String], primary: &Summary, shadow: &Summary) -> String {
    let mut parts = Vec::new();
    if differs.status {
        parts.push(format!("status {} → {}", primary.status, shadow.status));
    }
    if differs.body {
        parts.push(if differs.status {
            "body".to_owned()
        } else {
            format!("body (status {})", primary.status)
        });
    }
    for (name, _) in compared
        .iter()
        .zip(&differs.headers)
        .filter(|(_, differs)| **differs)
    {
        parts.push(format!("header {name}"));
    }
    let mut kind = parts.join(", ");
    if shadow.outbound_denied {
        kind.push_str("; its outbound call was denied");
    }
    kind
}

/// A route's shadow figures.
#[derive(Debug, Default)]
pub struct ShadowStats {
    requests: AtomicU64,
    matches: AtomicU64,
    mismatches: AtomicU64,
    noise: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    inner: Mutex<Inner>,
}

impl ShadowStats {
    /// Starts the figures afresh if they are about another shadow than `version`.
    pub fn about(&self, version: &Digest) {
        let mut inner = self.inner.lock().expect("poisoned");
        if inner.version.as_ref() == Some(version) {
            return;
        }
        *inner = Inner {
            version: Some(version.clone()),
            ..Inner::default()
        };
        for counter in [
            &self.requests,
            &self.matches,
            &self.mismatches,
            &self.noise,
            &self.errors,
            &self.skipped,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request that was not copied.
    pub fn skip(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a request to `path` should also run the stable version a second time.
    pub fn calibrate(&self, path: &str) -> bool {
        let mut inner = self.inner.lock().expect("poisoned");
        let full = inner.paths.len() >= MAX_PATHS;
        match inner.paths.get_mut(path) {
            Some(noise) => {
                noise.seen += 1;
                if noise.calibrations < CALIBRATION {
                    noise.calibrations += 1;
                    true
                } else {
                    noise.seen.is_multiple_of(RESAMPLE_EVERY)
                }
            }
            None if full => {
                inner.overflow += 1;
                inner.overflow.is_multiple_of(RESAMPLE_EVERY)
            }
            None => {
                inner.paths.insert(
                    path.to_owned(),
                    PathNoise {
                        seen: 1,
                        calibrations: 1,
                        ..PathNoise::default()
                    },
                );
                true
            }
        }
    }

    /// Counts a copied request: the stable version's response (`primary`), the shadow's
    /// (`shadow`; `None` if it failed), and the stable version's second run, if there was one.
    pub fn record(
        &self,
        method: &str,
        path: &str,
        compared: &[String],
        primary: &Summary,
        shadow: Option<&Summary>,
        secondary: Option<&Summary>,
    ) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Some(shadow) = shadow else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let key = path.split('?').next().unwrap_or(path);
        // A second run whose outbound call was denied says nothing about the stable version's
        // own noise: the client's run made the call.
        let secondary = secondary.filter(|second| !second.outbound_denied);
        let mut inner = self.inner.lock().expect("poisoned");
        let noisy = match (secondary, inner.paths.get_mut(key)) {
            (Some(second), Some(noise)) => {
                noise.noisy.add(&Parts::between(primary, second));
                noise.noisy.clone()
            }
            (Some(second), None) => Parts::between(primary, second),
            (None, Some(noise)) => noise.noisy.clone(),
            (None, None) => Parts::default(),
        };
        let differs = Parts::between(primary, shadow);
        if !differs.any() {
            self.matches.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if differs.within(&noisy) {
            self.noise.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.mismatches.fetch_add(1, Ordering::Relaxed);
        let kind = kind(&differs, compared, primary, shadow);
        inner.count_kind(&kind);
        if inner.samples.len() == MAX_SAMPLES {
            inner.samples.pop_front();
        }
        inner.samples.push_back(api::ShadowSample {
            method: method.to_owned(),
            path: path.to_owned(),
            stable_status: primary.status,
            shadow_status: shadow.status,
            headers: compared
                .iter()
                .zip(&differs.headers)
                .filter(|(_, differs)| **differs)
                .map(|(name, _)| name.clone())
                .collect(),
            stable_size: primary.size,
            shadow_size: shadow.size,
            stable_digest: hex(&primary.digest),
            shadow_digest: hex(&shadow.digest),
            stable_start: String::from_utf8_lossy(&primary.start).into_owned(),
            shadow_start: String::from_utf8_lossy(&shadow.start).into_owned(),
            at_ms: crate::units::unix_ms(),
            outbound_denied: shadow.outbound_denied,
            kind,
        });
    }

    /// The figures as the admin API shows them.
    pub fn status(&self, shadow: &ShadowRecord) -> api::ShadowStatus {
        let version = shadow.version.as_str();
        let inner = self.inner.lock().expect("poisoned");
        let current = inner
            .version
            .as_ref()
            .is_some_and(|v| v.as_str() == version);
        let count = |counter: &AtomicU64| {
            if current {
                counter.load(Ordering::Relaxed)
            } else {
                0
            }
        };
        api::ShadowStatus {
            version: version.to_owned(),
            percent: shadow.percent,
            compare_headers: shadow.compare_headers.clone(),
            allow_outbound: shadow.allow_outbound,
            counts: api::ShadowCounts {
                requests: count(&self.requests),
                matches: count(&self.matches),
                mismatches: count(&self.mismatches),
                noise: count(&self.noise),
                errors: count(&self.errors),
                skipped: count(&self.skipped),
            },
            kinds: if current {
                let mut kinds: Vec<_> = inner
                    .kinds
                    .iter()
                    .map(|(kind, count)| api::ShadowKind {
                        kind: kind.clone(),
                        count: *count,
                    })
                    .collect();
                // The most frequent first; a stable sort keeps ties in the order first seen.
                kinds.sort_by_key(|k| std::cmp::Reverse(k.count));
                kinds
            } else {
                Vec::new()
            },
            samples: if current {
                inner.samples.iter().cloned().collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Counters for `/metrics`: requests, matches, mismatches, noise, errors, skipped.
    pub fn counts(&self) -> [(&'static str, u64); 6] {
        [
            ("requests", self.requests.load(Ordering::Relaxed)),
            ("match", self.matches.load(Ordering::Relaxed)),
            ("mismatch", self.mismatches.load(Ordering::Relaxed)),
            ("noise", self.noise.load(Ordering::Relaxed)),
            ("error", self.errors.load(Ordering::Relaxed)),
            ("skipped", self.skipped.load(Ordering::Relaxed)),
        ]
    }
}

fn hex(bytes: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::copy::START_BYTES;
    use super::*;

    fn summary(status: u16, body: &[u8]) -> Summary {
        use sha2::Digest as _;
        Summary {
            status,
            headers: vec![Some("text/plain".into())],
            size: body.len() as u64,
            digest: sha2::Sha256::digest(body).into(),
            start: body[..body.len().min(START_BYTES)].to_vec(),
            outbound_denied: false,
        }
    }

    fn record(version: &str, compared: &[String]) -> ShadowRecord {
        ShadowRecord {
            version: Digest::of(version.as_bytes()).to_string(),
            settings: Default::default(),
            percent: 100.0,
            compare_headers: compared.to_vec(),
            allow_outbound: false,
        }
    }

    #[test]
    fn second_runs_are_the_first_three_requests_of_a_path_then_one_in_ten() {
        let stats = ShadowStats::default();
        stats.about(&Digest::of(b"shadow"));
        let denied = Summary {
            outbound_denied: true,
            ..summary(200, b"denied")
        };
        let mut second_runs = 0;
        for _ in 0..30 {
            if stats.calibrate("/calls-out") {
                second_runs += 1;
                // Its outbound call denied, the second run measures nothing; it still counts.
                stats.record(
                    "GET",
                    "/calls-out",
                    &[],
                    &denied,
                    Some(&denied),
                    Some(&denied),
                );
            }
        }
        assert_eq!(second_runs, 3 + 3, "3 first, then requests 10, 20, 30");
        // Beyond the paths the table keeps, one in ten.
        for i in 1..MAX_PATHS {
            stats.calibrate(&format!("/p{i}"));
        }
        let overflow = (0..100)
            .filter(|i| stats.calibrate(&format!("/new{i}")))
            .count();
        assert_eq!(overflow, 10);
    }

    #[test]
    fn differences_the_stable_version_makes_with_itself_are_noise() {
        let stats = ShadowStats::default();
        stats.about(&Digest::of(b"shadow"));
        let compared = ["content-type".to_owned()];
        // A deterministic path: same answers match, a different one is a mismatch.
        assert!(stats.calibrate("/same"));
        let same = summary(200, b"hello");
        stats.record("GET", "/same", &compared, &same, Some(&same), Some(&same));
        stats.record(
            "GET",
            "/same",
            &compared,
            &same,
            Some(&summary(200, b"bye")),
            None,
        );
        // A path whose body the stable version itself changes: a body difference is noise,
        // a status difference is not.
        assert!(stats.calibrate("/random"));
        stats.record(
            "GET",
            "/random?x=1",
            &compared,
            &summary(200, b"1"),
            Some(&summary(200, b"2")),
            Some(&summary(200, b"3")),
        );
        stats.record(
            "GET",
            "/random",
            &compared,
            &summary(200, b"4"),
            Some(&summary(500, b"5")),
            None,
        );
        stats.record("GET", "/gone", &compared, &same, None, None);
        // A second run whose outbound call was denied is no measure of noise: the shadow's
        // difference (its own call denied too) stays a mismatch, flagged.
        assert!(stats.calibrate("/calls-out"));
        let denied = Summary {
            outbound_denied: true,
            ..summary(200, b"denied")
        };
        stats.record(
            "GET",
            "/calls-out",
            &compared,
            &summary(200, b"upstream said hi"),
            Some(&denied),
            Some(&denied),
        );
        let status = stats.status(&record("shadow", &compared));
        assert_eq!(
            status.counts,
            api::ShadowCounts {
                requests: 6,
                matches: 1,
                mismatches: 3,
                noise: 1,
                errors: 1,
                skipped: 0
            }
        );
        assert_eq!(status.samples.len(), 3);
        assert!(status.samples[2].outbound_denied);
        assert!(!status.samples[0].outbound_denied);
        assert_eq!(status.samples[0].stable_start, "hello");
        assert_eq!(status.samples[1].shadow_status, 500);
        assert_eq!(status.samples[0].kind, "body (status 200)");
        assert_eq!(status.samples[1].kind, "status 200 → 500, body");
        assert_eq!(
            status.samples[2].kind,
            "body (status 200); its outbound call was denied"
        );
        // Grouped by kind, the most frequent first.
        for _ in 0..3 {
            stats.record(
                "GET",
                "/same",
                &compared,
                &same,
                Some(&summary(503, b"busy")),
                None,
            );
        }
        let kinds: Vec<_> = stats
            .status(&record("shadow", &compared))
            .kinds
            .into_iter()
            .map(|k| (k.kind, k.count))
            .collect();
        assert_eq!(
            kinds,
            [
                ("status 200 → 503, body".to_owned(), 3),
                ("body (status 200)".to_owned(), 1),
                ("status 200 → 500, body".to_owned(), 1),
                (
                    "body (status 200); its outbound call was denied".to_owned(),
                    1
                ),
            ]
        );
        // A new shadow starts afresh.
        stats.about(&Digest::of(b"other"));
        assert_eq!(stats.status(&record("other", &[])).counts.requests, 0);
    }
}
