//! The memory cache's budget: small files keep their bytes in their cache
//! entry (one `writev` of head and body, DESIGN.md decision 3), within a
//! bound on resident memory shared by every entry.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntGauge;

/// What a file of `len` bytes costs the memory budget: whole 4 KiB pages,
/// since the budget bounds resident memory, and an allocator keeps blocks of
/// a few KiB with slack (26 MiB of it over 64 MiB of tiles, in the benchmark).
pub(super) fn charge(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

/// The memory cache's budget, shared by every entry.
#[derive(Debug)]
pub struct MemoryBudget {
    pub(super) used: AtomicU64,
    pub(super) limit: u64,
    pub(super) max_file: u64,
    pub(super) gauge: IntGauge,
}

impl MemoryBudget {
    pub(super) fn reserve(&self, n: u64) -> bool {
        let before = self.used.fetch_add(n, Ordering::AcqRel);
        if before + n > self.limit {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(super) fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}
