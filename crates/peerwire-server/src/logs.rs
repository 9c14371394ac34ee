//! What peers control never reaches the logs raw, and no peer can flood them.
//!
//! - [`Untrusted`] shows a peer's string (method, topic, client name, reason, token field, or a
//!   status message that quotes one) escaped and length-capped: a newline cannot start a forged
//!   log line, and an ANSI escape reaches a terminal as visible text (`\u{1b}`).
//! - [`Limiter`] rate-limits the lines a uid's refusals and slow consumers cause: at most
//!   [`BURST`] lines per uid per [`WINDOW`], then a summary of how many were left out. The
//!   statistics counters are not rate-limited: they count every event exactly.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Characters of a peer's string shown in a log line; the rest is counted, not shown.
pub(crate) const MAX_SHOWN: usize = 160;

/// A string a peer controls, displayed escaped (Rust's `escape_debug` for control and other
/// unprintable characters; quotes and backslashes left alone) and cut to [`MAX_SHOWN`]
/// characters.
pub(crate) struct Untrusted<'a>(pub(crate) &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.char_indices();
        for (_, c) in chars.by_ref().take(MAX_SHOWN) {
            match c {
                // Printable as they are; a backslash stays one, so text that a message already
                // escaped (`{:?}` of a name) is not escaped twice.
                '"' | '\'' | '\\' => f.write_fmt(format_args!("{c}"))?,
                c => f.write_fmt(format_args!("{}", c.escape_debug()))?,
            }
        }
        if let Some((at, _)) = chars.next() {
            write!(f, "... ({} more bytes)", self.0.len() - at)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Lines a uid's refusals may log per [`WINDOW`] before they are summarised.
pub(crate) const BURST: u32 = 10;
/// The rate limiter's window.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// Uids tracked at once; past it, windows that ended are forgotten (and, failing that, all).
const MAX_UIDS: usize = 4096;

/// Per-uid rate limit of log lines (see the module docs).
#[derive(Default)]
pub(crate) struct Limiter {
    windows: Mutex<HashMap<u32, Window>>,
}

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Whether a line may be logged now.
pub(crate) enum Verdict {
    /// Log it; `suppressed` lines of this uid were left out before it (say so).
    Log { suppressed: u64 },
    /// Leave it out (counted for the next summary).
    Quiet,
}

impl Limiter {
    /// Asks whether uid `uid` may log one more line now.
    pub(crate) fn check(&self, uid: u32) -> Verdict {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_UIDS && !windows.contains_key(&uid) {
            windows.retain(|_, w| now.duration_since(w.start) < WINDOW);
            if windows.len() >= MAX_UIDS {
                windows.clear();
            }
        }
        let w = windows.entry(uid).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            let suppressed = std::mem::take(&mut w.suppressed);
            w.start = now;
            w.logged = 1;
            return Verdict::Log { suppressed };
        }
        if w.logged < BURST {
            w.logged += 1;
            return Verdict::Log { suppressed: 0 };
        }
        w.suppressed += 1;
        Verdict::Quiet
    }

    /// Runs `log` (which writes one line) unless uid `uid` is over its rate; writes the summary
    /// of the lines left out before it first.
    pub(crate) fn log(&self, uid: u32, log: impl FnOnce()) {
        if let Verdict::Log { suppressed } = self.check(uid) {
            if suppressed > 0 {
                tracing::warn!(
                    uid,
                    "{suppressed} similar lines suppressed (at most {BURST} per uid per {WINDOW:?}; the stats counters count every one)"
                );
            }
            log();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_strings_are_escaped_and_capped() {
        let forged = "ok\n2026-12-04T00:00:00Z  INFO forged line\x1b[31m red \t\u{7}";
        let shown = Untrusted(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\x1b') && !shown.contains('\x07'));
        assert!(
            shown.contains("\\n2026") && shown.contains("\\u{1b}[31m"),
            "{shown}"
        );
        let long = "a".repeat(10_000);
        let shown = Untrusted(&long).to_string();
        assert!(shown.len() < MAX_SHOWN + 40, "{}", shown.len());
        assert!(shown.ends_with(&format!("({} more bytes)", 10_000 - MAX_SHOWN)));
        assert_eq!(Untrusted("display.Touch").to_string(), "display.Touch");
    }

    #[test]
    fn a_uid_logs_a_burst_then_is_counted_not_logged() {
        let l = Limiter::default();
        let logged = (0..1000)
            .filter(|_| matches!(l.check(7), Verdict::Log { .. }))
            .count();
        assert_eq!(logged, BURST as usize);
        // Another uid has its own budget.
        assert!(matches!(l.check(8), Verdict::Log { suppressed: 0 }));
    }
}
