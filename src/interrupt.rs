//! Ctrl-C and SIGTERM: one flag every waiting loop checks (dispatch, command slots, services,
//! downloads, the workspace lock), set by a handler that does nothing else. A second signal
//! exits at once. A leaf module: any layer may ask whether the run was interrupted.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT/SIGTERM; every waiting loop checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // A second Ctrl-C means now: skip the orderly stop.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Route SIGINT and SIGTERM to [`INTERRUPTED`]. Children run in their own process groups, so
/// a terminal's Ctrl-C reaches only cairn, which then stops them.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
