//! Wall-clock time, injectable: the system's in production, one driven by tokio's paused clock in
//! tests and simulations, a fixed one for logic that only compares times. Every part of the mesh
//! that reads wall time (token expiry, signed generations, gossip failure times) reads it here.

use std::sync::Arc;

use tokio::time::Instant;

/// A source of wall-clock time in unix milliseconds. Tests drive it from tokio's paused clock.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        }))
    }

    /// Wall time that starts at `start_ms` and advances with tokio's (possibly paused) clock.
    pub fn tokio(start_ms: u64) -> Self {
        let origin = Instant::now();
        Self(Arc::new(move || {
            start_ms + origin.elapsed().as_millis() as u64
        }))
    }

    /// A clock that always reads `ms` (unit tests of logic that only compares times).
    pub fn fixed(ms: u64) -> Self {
        Self(Arc::new(move || ms))
    }

    /// This clock, `ms` ahead (or behind, when negative): a node whose wall clock is skewed.
    pub fn skewed(&self, ms: i64) -> Self {
        let base = self.clone();
        Self(Arc::new(move || base.now_ms().saturating_add_signed(ms)))
    }

    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }

    /// Now, both ways: tokio's monotonic instant and this clock's wall time.
    pub fn now(&self) -> Now {
        Now {
            mono: Instant::now(),
            unix_ms: self.now_ms(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

/// The time of an event as the state machines see it: monotonic (for silences, deadlines and
/// graces) and wall (for signed times and token expiry).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: u64,
}
