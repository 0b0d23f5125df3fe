//! Command slots: how many step commands run at once.

use super::*;

/// Command slots: at most `jobs` step commands run at once, while more workers may look up,
/// verify and restore entries concurrently (that work waits on the disk, not on a core).
pub struct Slots {
    free: std::sync::Mutex<usize>,
    cv: std::sync::Condvar,
}

pub struct SlotGuard<'a>(&'a Slots);

impl Slots {
    pub fn new(n: usize) -> Slots {
        Slots { free: std::sync::Mutex::new(n.max(1)), cv: std::sync::Condvar::new() }
    }
    /// Wait for a slot; `None` if the run was interrupted meanwhile.
    pub fn acquire(&self) -> Option<SlotGuard<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if process::interrupted() {
                return None;
            }
            if *free > 0 {
                *free -= 1;
                return Some(SlotGuard(self));
            }
            free = self.cv.wait_timeout(free, Duration::from_millis(50)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}
