//! Polling for a condition with an upper bound, failing with what was
//! awaited and why it is not there yet.

use std::time::{Duration, Instant};

/// Poll interval of [`wait_until`], [`wait_for`], [`assert_holds`] and
/// [`Daemon::wait_exit`](crate::Daemon::wait_exit).
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `f` until it gives `Some`, for at most `limit`; panics naming
/// `what` otherwise.
#[track_caller]
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Polls `f` until true, for at most `limit`; panics naming `what`, with
/// `detail()` (the state that explains the failure) otherwise.
#[track_caller]
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {limit:?} waiting for: {what}\n{}",
                detail()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Checks `f` again and again until `window` has passed since `since`, and
/// panics as soon as it is false, saying how long after `since` `what`
/// stopped holding, with `detail()`. For lower bounds: what a correct
/// program must not change before a moment.
#[track_caller]
pub fn assert_holds(
    what: &str,
    since: Instant,
    window: Duration,
    mut f: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) {
    while since.elapsed() < window {
        if !f() {
            panic!(
                "{what} stopped holding {:?} after the start (it must hold for {window:?})\n{}",
                since.elapsed(),
                detail()
            );
        }
        std::thread::sleep(POLL);
    }
}
