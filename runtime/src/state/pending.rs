//! Digests a change is working on: a change marks its digest before it reads or writes
//! anything for it and unmarks it when it is done (committed or failed), so garbage collection
//! never removes a module a change is about to reference. Counted, so two changes of one digest
//! hold it twice.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::digest::Digest;

/// Digests changes are working on, counted (two deploys of one digest hold it twice).
#[derive(Default)]
pub struct Pending {
    digests: Mutex<HashMap<Digest, usize>>,
}

impl Pending {
    /// Holds `digest` until the returned guard is dropped.
    pub fn hold(&self, digest: &Digest) -> PendingGuard<'_> {
        *self
            .digests
            .lock()
            .expect("pending poisoned")
            .entry(digest.clone())
            .or_default() += 1;
        PendingGuard {
            pending: self,
            digest: digest.clone(),
        }
    }

    /// Whether a change holds `digest`.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.digests
            .lock()
            .expect("pending poisoned")
            .contains_key(digest)
    }
}

/// Keeps a digest safe from garbage collection while alive.
pub struct PendingGuard<'a> {
    pending: &'a Pending,
    digest: Digest,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut digests = self.pending.digests.lock().expect("pending poisoned");
        if let Some(count) = digests.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                digests.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_held_twice_stays_held_until_both_let_go() {
        let pending = Pending::default();
        let digest = Digest::of(b"component");
        let first = pending.hold(&digest);
        let second = pending.hold(&digest);
        drop(first);
        assert!(
            pending.contains(&digest),
            "the second deploy still holds it"
        );
        drop(second);
        assert!(!pending.contains(&digest));
    }
}
