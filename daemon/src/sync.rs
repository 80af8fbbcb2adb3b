//! Locks that outlive a panic of their holder. What they guard is left consistent by every
//! critical section (counters, queues, caches), so a poisoned lock is taken as it is; the one
//! lock whose data a panic can leave half updated, the workspace's, is mended by
//! [`WsHandle::workspace`](crate::engine::WsHandle::workspace) instead.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `m`, poisoned or not.
pub fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks `m`, poisoned or not.
pub fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}
