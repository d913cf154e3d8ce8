//! Fault injection for the tests, compiled in only with the `test-hooks` feature (which CI's test
//! runs enable; a shipped build has none): `NEUROAL_FAULT=POINT` kills the process (as SIGKILL
//! would) when it reaches POINT, or makes the named fault happen; `NEUROAL_PAUSE=POINT` sleeps
//! there for a minute (or `NEUROAL_PAUSE_SECS`) so a test can signal it or change files under
//! it. Without the feature both are nothing.

/// Whether `NEUROAL_FAULT` names this point (for faults other than a kill).
#[cfg(feature = "test-hooks")]
pub fn fault_point(point: &str) -> bool {
    std::env::var("NEUROAL_FAULT").map(|v| v == point).unwrap_or(false)
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn fault_point(_point: &str) -> bool {
    false
}

/// Kills the process at `point` if `NEUROAL_FAULT` names it; pauses if `NEUROAL_PAUSE` does.
#[cfg(feature = "test-hooks")]
pub fn fault(point: &str) {
    if fault_point(point) {
        #[cfg(unix)]
        // SAFETY: raising SIGKILL on ourselves ends the process; nothing runs after it.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
        std::process::abort();
    }
    if std::env::var("NEUROAL_PAUSE").map(|v| v == point).unwrap_or(false) {
        eprintln!("paused at {point}");
        let secs = std::env::var("NEUROAL_PAUSE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn fault(_point: &str) {}
