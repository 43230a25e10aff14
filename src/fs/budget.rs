//! One memory budget for every buffer of a mount (prefetched parts, parts being uploaded):
//! `--memory-limit`. Readers stop prefetching when it is spent and wait for it only for the
//! bytes they must return; writers wait for it, which slows them down instead of growing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes per permit.
const UNIT: u64 = 1024;

/// The budget, shared by all handles of a mount.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total: u32,
}

/// Bytes held from the budget; given back when dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] OwnedSemaphorePermit);

fn units(bytes: u64, total: u32) -> u32 {
    (bytes.div_ceil(UNIT)).min(total as u64).max(1) as u32
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Budget {
        let total = (bytes / UNIT).clamp(1, u32::MAX as u64 / 2) as u32;
        Budget {
            sem: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Take `bytes` if they are free now.
    pub fn try_take(&self, bytes: u64) -> Option<Held> {
        self.sem
            .clone()
            .try_acquire_many_owned(units(bytes, self.total))
            .ok()
            .map(Held)
    }

    /// Take `bytes`, waiting until they are free.
    pub async fn take(&self, bytes: u64) -> Held {
        Held(
            self.sem
                .clone()
                .acquire_many_owned(units(bytes, self.total))
                .await
                .expect("the budget's semaphore is never closed"),
        )
    }

    /// Bytes held now.
    pub fn in_use(&self) -> u64 {
        (self.total as u64 - self.sem.available_permits() as u64) * UNIT
    }
}
