//! Enqueue stamps: a job's payload starts with the time it was enqueued, so the worker that
//! starts it can tell its enqueue-to-start latency without asking anyone.

use std::time::{SystemTime, UNIX_EPOCH};

/// Digits of a stamp: microseconds since the Unix epoch, zero-padded.
const DIGITS: usize = 20;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A payload of `size` bytes stamped with now (unstamped filler when `size` has no room).
pub fn payload(size: usize) -> Vec<u8> {
    let mut payload = format!("{:0DIGITS$}", now_us()).into_bytes();
    payload.resize(size, b'x');
    payload
}

/// The stamp at the start of `payload`, if it has one.
pub fn read(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.get(..DIGITS)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back_and_short_payloads_have_none() {
        let p = payload(100);
        assert_eq!(p.len(), 100);
        let t = read(&p).unwrap();
        assert!(t <= now_us() && t > now_us() - 60_000_000);
        assert_eq!(read(&payload(10)), None);
    }
}
