//! Rate limits for log lines a guest can trigger at will (a malformed request, a refused
//! name): a guest must not be able to fill the host's log. [`warn_limited!`] allows
//! [`BURST`] lines per call site in each [`WINDOW`]-second window and says how many it
//! suppressed in the first line it allows afterwards.
//!
//! [`warn_limited!`]: crate::warn_limited

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Lines per call site per window.
pub const BURST: u64 = 10;
/// Window length in seconds.
pub const WINDOW: u64 = 10;

/// One call site's budget.
pub struct RateLimit {
    window: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimit {
    /// A fresh budget (usable in a `static`).
    pub const fn new() -> Self {
        RateLimit {
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last allowed one)` when this line may be logged.
    pub fn allow(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_secs();
        self.allow_at(now)
    }

    /// As [`RateLimit::allow`], at `now` seconds.
    pub fn allow_at(&self, now: u64) -> Option<u64> {
        let window = now / WINDOW + 1;
        let seen = self.window.load(Relaxed);
        if seen != window
            && self
                .window
                .compare_exchange(seen, window, Relaxed, Relaxed)
                .is_ok()
        {
            self.used.store(0, Relaxed);
        }
        if self.used.fetch_add(1, Relaxed) < BURST {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

/// `tracing::warn!` with a per-call-site [`RateLimit`]; the first line after suppressed ones
/// carries `suppressed = N`.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        match LIMIT.allow() {
            Some(0) => ::tracing::warn!($($arg)+),
            Some(suppressed) => ::tracing::warn!(suppressed, $($arg)+),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_per_window_and_counts_the_rest() {
        let l = RateLimit::new();
        let allowed: Vec<Option<u64>> = (0..15).map(|_| l.allow_at(3)).collect();
        assert_eq!(
            allowed.iter().filter(|a| a.is_some()).count(),
            BURST as usize
        );
        assert!(allowed[10..].iter().all(Option::is_none));
        // The next window's first line says how many were dropped.
        assert_eq!(l.allow_at(WINDOW + 3), Some(5));
        assert_eq!(l.allow_at(WINDOW + 4), Some(0));
    }
}
