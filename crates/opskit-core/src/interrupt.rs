//! Ctrl-C (SIGINT) and SIGTERM as a request to stop at the next safe point.
//!
//! A long runbook step (an export, an upload, a purge of millions of rows) must not die in the
//! middle of a batch: it checks [`check`] at each batch boundary and, when a signal arrived,
//! stops there with an [`Interrupted`] error that says how to resume. [`install`] sets the
//! handlers once per process; a second signal of the same kind ends the process at once, as
//! an operator pressing Ctrl-C twice expects.

use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static INSTALL: Once = Once::new();

extern "C" fn on_signal(sig: libc::c_int) {
    if RECEIVED.swap(sig, Ordering::SeqCst) != 0 {
        // SAFETY: signal and raise are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Makes SIGINT and SIGTERM set the stop request instead of ending the process. Idempotent.
pub fn install() {
    INSTALL.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only touches an atomic and calls async-signal-safe functions;
            // `sa` is fully initialised before use.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

/// The signal that asked the process to stop, if one arrived (`"SIGINT"` or `"SIGTERM"`).
pub fn requested() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}

/// A run stopped on request at a safe point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stopped by {signal} {at}; {resume}")]
pub struct Interrupted {
    /// `SIGINT` or `SIGTERM`.
    pub signal: &'static str,
    /// Where it stopped (`after batch 4 (1000 of 3000 documents deleted)`).
    pub at: String,
    /// How to go on (`run the same command again to resume`).
    pub resume: String,
}

/// `Err(Interrupted)` when a stop was requested: call it at each batch boundary.
pub fn check(
    at: impl FnOnce() -> String,
    resume: impl FnOnce() -> String,
) -> Result<(), Interrupted> {
    match requested() {
        None => Ok(()),
        Some(signal) => Err(Interrupted {
            signal,
            at: at(),
            resume: resume(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_becomes_a_stop_request_that_names_itself() {
        install();
        assert_eq!(requested(), None);
        assert!(check(|| unreachable!(), || unreachable!()).is_ok());
        // SAFETY: raising a handled signal in our own process.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(requested(), Some("SIGTERM"));
        let e = check(|| "after batch 3".into(), || "re-run to resume".into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "stopped by SIGTERM after batch 3; re-run to resume"
        );
        RECEIVED.store(0, Ordering::SeqCst);
    }
}
