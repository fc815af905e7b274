//! When a failed job runs again: exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Exponential backoff: attempt `n` (1-based) waits `base * factor^(n-1)`, capped at `max`, with
/// up to `jitter` (a fraction) of that added or removed at random so that a burst of failures
/// does not come back as a burst.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Delay after the first failure. Defaults to 1 s.
    pub base_ms: u64,
    /// Growth per attempt. Defaults to 2.
    pub factor: f64,
    /// Longest delay. Defaults to 10 minutes.
    pub max_ms: u64,
    /// Random spread, as a fraction of the delay (0.0 to 1.0). Defaults to 0.2.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The default policy: 1 s, 2 s, 4 s, ... up to 10 minutes, +-20 %.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        base_ms: 1_000,
        factor: 2.0,
        max_ms: 600_000,
        jitter: 0.2,
    };

    /// The delay before the run after failed attempt `attempt` (1-based), without jitter.
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let ms = (self.base_ms as f64) * self.factor.max(1.0).powi(exponent);
        Duration::from_millis(ms.min(self.max_ms as f64) as u64)
    }

    /// The delay before the run after failed attempt `attempt`, with jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal_delay(attempt).as_millis() as f64;
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = if jitter > 0.0 {
            rand::thread_rng().gen_range(-jitter..=jitter)
        } else {
            0.0
        };
        Duration::from_millis((nominal * (1.0 + spread)).max(0.0) as u64)
    }

    /// Checks that the numbers make sense.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(format!("retry factor must be >= 1, got {}", self.factor));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "retry jitter must be between 0 and 1, got {}",
                self.jitter
            ));
        }
        if self.max_ms < self.base_ms {
            return Err("retry max must not be below retry base".into());
        }
        Ok(())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::DEFAULT
        };
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(2), Duration::from_secs(2));
        assert_eq!(p.delay(4), Duration::from_secs(8));
        assert_eq!(p.delay(30), Duration::from_secs(600));
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = RetryPolicy::DEFAULT;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = p.delay(3).as_millis();
            assert!((3200..=4800).contains(&d), "{d}");
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter should spread delays");
    }

    #[test]
    fn nonsense_policies_are_refused() {
        assert!(RetryPolicy {
            factor: 0.5,
            ..RetryPolicy::DEFAULT
        }
        .validate()
        .is_err());
        assert!(RetryPolicy {
            jitter: 2.0,
            ..RetryPolicy::DEFAULT
        }
        .validate()
        .is_err());
        assert!(RetryPolicy {
            max_ms: 1,
            ..RetryPolicy::DEFAULT
        }
        .validate()
        .is_err());
        assert!(RetryPolicy::DEFAULT.validate().is_ok());
    }
}
