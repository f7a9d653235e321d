//! The resource limiter of one request's `Store`: `max-memory` is the total of all of the
//! instance's linear memories, not a cap on each one, and the instance may create only as many
//! core instances, memories and tables as a real guest needs.
//!
//! A component can instantiate one small core module with a memory many times; with a cap per
//! memory it could commit that many times its route's `max-memory`. This limiter sums the
//! memories of the store (one store serves one request, so one component instance) and refuses
//! a growth that would take the sum past the cap. A refused growth traps, so the request fails
//! (500) instead of the guest carrying on with less memory than it asked for.
//!
//! It never allocates and never blocks: wasmtime calls it synchronously on the guest's thread.

use wasmtime::ResourceLimiter;

/// Core module instances one component instance may create. Measured: Rust guests (`wasip2`,
/// the SDK) need 3, a componentize-js 0.23 guest 4, a componentize-py 0.25.1 guest 14. The pool
/// also refuses a component over this at deploy.
pub const MAX_CORE_INSTANCES: usize = 32;
/// Linear memories one component instance may create. Measured: 1 for Rust, componentize-py and
/// componentize-js guests; room for a few composed components. Their sum is capped by
/// `max-memory` whatever their number.
pub const MAX_MEMORIES: usize = 8;
/// Tables one component instance may create. Measured: 2 for Rust, componentize-py and
/// componentize-js guests.
pub const MAX_TABLES: usize = 8;
/// Elements per table (also the pool's size of a table slot); interpreters built into
/// components need many.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Caps the total bytes of all linear memories of one store.
pub struct TotalMemory {
    /// The cap: the route's `max-memory`.
    limit: usize,
    /// Bytes of every memory created or grown so far, as the limiter allowed them. A growth
    /// allowed here that then fails traps (`memory_grow_failed`), which ends the instance, so
    /// the total never needs taking back.
    total: usize,
}

impl TotalMemory {
    /// A limiter for an instance whose memories may total `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit, total: 0 }
    }

    /// Bytes of linear memory the instance holds now.
    #[cfg(test)]
    pub fn total(&self) -> usize {
        self.total
    }
}

impl ResourceLimiter for TotalMemory {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.total.saturating_add(growth);
        if total > self.limit {
            // A refused growth is a trap, never a quiet `-1` (what `trap_on_grow_failure` did).
            wasmtime::bail!(
                "growing a memory to {desired} bytes would take the instance's memories to \
                 {total} bytes, over its limit of {} bytes",
                self.limit
            );
        }
        if maximum.is_some_and(|max| desired > max) {
            wasmtime::bail!("growing a memory to {desired} bytes exceeds its maximum");
        }
        self.total = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("growing a memory failed"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS || maximum.is_some_and(|max| desired > max) {
            wasmtime::bail!(
                "growing a table to {desired} elements exceeds its limit of {MAX_TABLE_ELEMENTS}"
            );
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("growing a table failed"))
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 << 10;

    #[test]
    fn memories_are_capped_in_total() {
        let mut limiter = TotalMemory::new(10 * PAGE);
        // Three memories of 3 pages each: 9 pages in all.
        for _ in 0..3 {
            assert!(limiter.memory_growing(0, PAGE, None).unwrap());
            assert!(limiter.memory_growing(PAGE, 3 * PAGE, None).unwrap());
        }
        assert_eq!(limiter.total(), 9 * PAGE);
        // A fourth memory of 2 pages would make 11: refused, and nothing is counted.
        assert!(limiter.memory_growing(0, 2 * PAGE, None).is_err());
        assert_eq!(limiter.total(), 9 * PAGE);
        // One more page fits.
        assert!(limiter.memory_growing(0, PAGE, None).unwrap());
        assert_eq!(limiter.total(), 10 * PAGE);
    }

    #[test]
    fn growth_past_a_maximum_or_a_table_limit_traps() {
        let mut limiter = TotalMemory::new(10 * PAGE);
        assert!(limiter.memory_growing(0, 4 * PAGE, Some(8 * PAGE)).unwrap());
        assert!(
            limiter
                .memory_growing(4 * PAGE, 9 * PAGE, Some(8 * PAGE))
                .is_err()
        );
        assert_eq!(limiter.total(), 4 * PAGE);
        assert!(
            limiter
                .memory_grow_failed(wasmtime::format_err!("no memory"))
                .is_err()
        );
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
                .is_err()
        );
        assert!(limiter.table_growing(0, 10, None).unwrap());
    }
}
