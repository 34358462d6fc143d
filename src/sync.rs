//! Locks that never poison the manager: a panic while one was held (caught at the N-API
//! boundary) must not turn every later call into another panic. The data behind these locks is
//! left consistent by every critical section (plain inserts, removals and swaps), so the guard
//! of a poisoned lock is used as it is.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub trait Locked<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
