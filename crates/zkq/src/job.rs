//! The job record: what a producer enqueues and a worker runs.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::limits::{
    MAX_DELAY, MAX_ERROR_HISTORY, MAX_ERROR_HISTORY_BYTES, MAX_ERROR_MESSAGE_BYTES, MAX_HEADERS_BYTES,
    MAX_KEY_BYTES, MAX_PAYLOAD_BYTES,
};
use crate::store::codec::Record;
use crate::store::layout;

/// A job's unique id (a UUID), printed in its hyphenated form. zkq makes time-ordered ones
/// (UUIDv7: the creation millisecond, then random bits); any UUID a caller supplies works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh id: a UUIDv7 (time-ordered, random below the millisecond).
    pub fn new() -> JobId {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.hyphenated())
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One failed attempt, kept in the job's error history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt that failed (1 for the first run).
    pub attempt: u32,
    /// When it failed, in ms since the Unix epoch.
    pub at_ms: u64,
    /// What went wrong (truncated to [`MAX_ERROR_MESSAGE_BYTES`]).
    pub message: String,
}

/// A job as stored in its znode (format version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Format version of the record.
    pub v: u8,
    pub id: JobId,
    /// Chooses the handler.
    pub kind: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Priority level: the lane index, 0 lowest. Higher lanes drain first.
    #[serde(default)]
    pub priority: u8,
    /// Attempts started so far. A claim counts the attempt before the job runs, so a job that
    /// crashes its worker still uses up attempts.
    #[serde(default)]
    pub attempt: u32,
    pub max_attempts: u32,
    /// Lock key: no two jobs with the same key run at the same time anywhere in the fleet,
    /// retries included.
    #[serde(default)]
    pub lock_key: Option<String>,
    /// Jobs sharing a partition key land in the same partition.
    #[serde(default)]
    pub partition_key: Option<String>,
    /// Per-job run time limit; the worker's default applies when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// When the producer enqueued the job, in ms since the Unix epoch.
    pub enqueued_at_ms: u64,
    /// When the job became ready to run (enqueue time, or the due time of a delayed job or a
    /// retry). Enqueue-to-start latency is measured from here.
    #[serde(default)]
    pub ready_at_ms: u64,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Failed attempts, oldest first, at most [`MAX_ERROR_HISTORY`] and
    /// [`MAX_ERROR_HISTORY_BYTES`] of messages.
    #[serde(default)]
    pub errors: Vec<AttemptError>,
}

impl Record for Job {
    const WHAT: &'static str = "job";
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.v
    }
}

/// The longest a worker waits for the due time of a job it claimed early
/// ([`Job::early_by`]), whatever the clocks say; also the most a scheduler promotes ahead.
pub const MAX_EARLY: Duration = Duration::from_secs(60);

impl Job {
    /// How long, by this machine's clock, until this job's due time, when it was moved to its
    /// lane ahead of it (the scheduler's `promote_ahead`); `None` when it may start now.
    ///
    /// Only a job that went through the delayed entries (a delayed enqueue or a retry: its
    /// `ready_at_ms` is past its `enqueued_at_ms`) waits, so that a worker whose clock runs
    /// behind a producer's never holds back a job enqueued to run at once; and never longer
    /// than [`MAX_EARLY`].
    pub fn early_by(&self, now_ms: u64) -> Option<Duration> {
        if self.ready_at_ms <= self.enqueued_at_ms || self.ready_at_ms <= now_ms {
            return None;
        }
        Some(Duration::from_millis(self.ready_at_ms - now_ms).min(MAX_EARLY))
    }

    /// A dead-letter record for bytes that are not a job: kind `zkq.undecodable`, the raw bytes
    /// as payload, and the decode error as its history.
    pub(crate) fn undecodable(data: Vec<u8>, reason: &str) -> Job {
        let now = now_ms();
        let mut job = Job {
            v: 1,
            id: JobId::new(),
            kind: "zkq.undecodable".into(),
            payload: data,
            priority: 0,
            attempt: 0,
            max_attempts: 0,
            lock_key: None,
            partition_key: None,
            timeout_ms: None,
            enqueued_at_ms: now,
            ready_at_ms: now,
            headers: Default::default(),
            errors: Vec::new(),
        };
        job.record_error(reason);
        job
    }

    /// Decodes a job record read from the znode at `path` (used in error messages).
    pub fn decode(path: &str, bytes: &[u8]) -> Result<Job> {
        crate::store::codec::decode(path, bytes)
    }

    /// Encodes the record as stored in a job znode.
    pub fn encode(&self) -> Result<Vec<u8>> {
        crate::store::codec::encode(self)
    }

    /// Whether another attempt is allowed after the current one.
    pub fn has_attempts_left(&self) -> bool {
        self.attempt < self.max_attempts
    }

    /// Records a failure of the current attempt, bounding message size and history length.
    pub(crate) fn record_error(&mut self, message: &str) {
        self.errors.push(AttemptError {
            attempt: self.attempt,
            at_ms: now_ms(),
            message: truncate(message, MAX_ERROR_MESSAGE_BYTES),
        });
        let excess = self.errors.len().saturating_sub(MAX_ERROR_HISTORY);
        self.errors.drain(..excess);
        while self.errors.len() > 1
            && self.errors.iter().map(|e| e.message.len()).sum::<usize>() > MAX_ERROR_HISTORY_BYTES
        {
            self.errors.remove(0);
        }
    }
}

/// A job to enqueue: what the caller chooses; the producer fills in the rest.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub(crate) id: JobId,
    pub(crate) kind: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) priority: u8,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) lock_key: Option<String>,
    pub(crate) partition_key: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) run_at_ms: Option<u64>,
    pub(crate) headers: BTreeMap<String, String>,
}

impl NewJob {
    /// A job of `kind` carrying `payload`, with a fresh id, priority 0 and the queue's defaults.
    pub fn new(kind: impl Into<String>, payload: impl Into<Vec<u8>>) -> NewJob {
        NewJob {
            id: JobId::new(),
            kind: kind.into(),
            payload: payload.into(),
            ..NewJob::default()
        }
    }

    /// Uses `id` instead of a random one. A delayed job with the id of one already waiting for
    /// the same due time is refused, so callers can make delayed enqueues idempotent.
    pub fn with_id(mut self, id: JobId) -> NewJob {
        self.id = id;
        self
    }

    /// The job's id, known before it is enqueued.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Priority level (lane), 0 lowest; must be below the queue's `priorities`.
    pub fn priority(mut self, priority: u8) -> NewJob {
        self.priority = priority;
        self
    }

    /// Attempts before the job is dead-lettered; the queue's default when not set.
    pub fn max_attempts(mut self, attempts: u32) -> NewJob {
        self.max_attempts = Some(attempts);
        self
    }

    /// Sets a lock key: jobs with the same key never run at the same time anywhere in the
    /// fleet, retries included. A job whose key is busy waits without holding a worker slot.
    pub fn lock_key(mut self, key: impl Into<String>) -> NewJob {
        self.lock_key = Some(key.into());
        self
    }

    /// Jobs with the same partition key land in the same partition (and keep their order).
    pub fn partition_key(mut self, key: impl Into<String>) -> NewJob {
        self.partition_key = Some(key.into());
        self
    }

    /// Run time limit for this job; the worker's default otherwise.
    pub fn timeout(mut self, timeout: Duration) -> NewJob {
        self.timeout = Some(timeout);
        self
    }

    /// Do not run before `delay` from now. At most [`MAX_DELAY`]: the producer refuses more.
    pub fn delay(mut self, delay: Duration) -> NewJob {
        self.run_at_ms = Some(now_ms().saturating_add(millis(delay)));
        self
    }

    /// Do not run before `at`, at most [`MAX_DELAY`] from now.
    pub fn run_at(mut self, at: SystemTime) -> NewJob {
        self.run_at_ms = Some(at.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0));
        self
    }

    /// Adds a header (metadata the handler can read).
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> NewJob {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Validates the job against a queue's limits and builds its record.
    pub(crate) fn into_job(
        self,
        priorities: u8,
        default_max_attempts: u32,
        max_payload: usize,
    ) -> Result<(Job, Option<u64>)> {
        layout::validate_kind(&self.kind)?;
        let max_payload = max_payload.min(MAX_PAYLOAD_BYTES);
        if self.payload.len() > max_payload {
            return Err(Error::PayloadTooLarge {
                size: self.payload.len(),
                limit: max_payload,
            });
        }
        if self.priority >= priorities {
            return Err(Error::InvalidJob(format!(
                "priority {} is out of range: the queue has {} levels (0..={})",
                self.priority,
                priorities,
                priorities - 1
            )));
        }
        let max_attempts = self.max_attempts.unwrap_or(default_max_attempts);
        if max_attempts == 0 {
            return Err(Error::InvalidJob("max attempts must be at least 1".into()));
        }
        for (what, key) in [
            ("lock key", &self.lock_key),
            ("partition key", &self.partition_key),
        ] {
            if key
                .as_ref()
                .is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_BYTES)
            {
                return Err(Error::InvalidJob(format!(
                    "{what} must be 1 to {MAX_KEY_BYTES} bytes"
                )));
            }
        }
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if headers > MAX_HEADERS_BYTES {
            return Err(Error::InvalidJob(format!(
                "headers take {headers} bytes, over the limit of {MAX_HEADERS_BYTES}"
            )));
        }
        let now = now_ms();
        if let Some(at) = self.run_at_ms {
            if at.saturating_sub(now) > millis(MAX_DELAY) {
                return Err(Error::InvalidJob(format!(
                    "a delay of {} days is over the maximum of {} days (100 years)",
                    (at - now) / 86_400_000,
                    MAX_DELAY.as_secs() / 86_400
                )));
            }
        }
        let ready_at_ms = self.run_at_ms.unwrap_or(now).max(now);
        let delayed = self.run_at_ms.filter(|at| *at > now);
        let job = Job {
            v: Job::VERSION,
            id: self.id,
            kind: self.kind,
            payload: self.payload,
            priority: self.priority,
            attempt: 0,
            max_attempts,
            lock_key: self.lock_key,
            partition_key: self.partition_key,
            timeout_ms: self.timeout.map(millis),
            enqueued_at_ms: now,
            ready_at_ms,
            headers: self.headers,
            errors: Vec::new(),
        };
        Ok((job, delayed))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `d` in whole milliseconds; durations past `u64::MAX` ms (584 million years) saturate.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_RECORD_OVERHEAD_BYTES;
    use crate::store::codec;

    #[test]
    fn only_a_job_that_went_through_the_delayed_entries_waits_for_its_due_time() {
        let mut job = Job::undecodable(Vec::new(), "x");
        job.enqueued_at_ms = 1_000;
        // Enqueued to run at once, by a producer whose clock runs ahead: no wait.
        job.ready_at_ms = 1_000;
        assert_eq!(job.early_by(900), None);
        // Promoted 250 ms ahead of its due time.
        job.ready_at_ms = 5_000;
        assert_eq!(job.early_by(4_750), Some(Duration::from_millis(250)));
        assert_eq!(job.early_by(5_000), None);
        assert_eq!(job.early_by(6_000), None);
        // Never longer than MAX_EARLY, whatever the clocks say.
        job.ready_at_ms = 10_000_000;
        assert_eq!(job.early_by(1_000), Some(MAX_EARLY));
    }

    #[test]
    fn job_round_trips_through_messagepack() {
        let (job, delayed) = NewJob::new("email", b"hi".to_vec())
            .priority(2)
            .lock_key("user-1")
            .header("trace", "abc")
            .into_job(3, 5, 1024)
            .unwrap();
        assert_eq!(delayed, None);
        let bytes = codec::encode(&job).unwrap();
        let back: Job = codec::decode("/x", &bytes).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn garbage_and_unknown_versions_are_refused_with_the_path() {
        let err = codec::decode::<Job>("/zkq/q/j-1", b"\xc1garbage").unwrap_err();
        assert!(err.to_string().contains("/zkq/q/j-1"), "{err}");
        let (mut job, _) = NewJob::new("k", vec![]).into_job(1, 1, 10).unwrap();
        job.v = 9;
        let bytes = codec::encode(&job).unwrap();
        let err = codec::decode::<Job>("/p", &bytes).unwrap_err();
        assert!(err.to_string().contains("format version 9"), "{err}");
    }

    #[test]
    fn oversized_payload_and_bad_priority_are_refused() {
        let err = NewJob::new("k", vec![0; 11]).into_job(3, 5, 10).unwrap_err();
        assert!(
            matches!(err, Error::PayloadTooLarge { size: 11, limit: 10 }),
            "{err}"
        );
        let err = NewJob::new("k", vec![])
            .priority(3)
            .into_job(3, 5, 10)
            .unwrap_err();
        assert!(err.to_string().contains("priority 3 is out of range"), "{err}");
        assert!(NewJob::new("bad kind", vec![]).into_job(3, 5, 10).is_err());
    }

    #[test]
    fn error_history_is_bounded() {
        let (mut job, _) = NewJob::new("k", vec![]).into_job(1, 100, 10).unwrap();
        for attempt in 1..=30 {
            job.attempt = attempt;
            job.record_error(&"x".repeat(10_000));
        }
        let kept: usize = job.errors.iter().map(|e| e.message.len()).sum();
        assert!(kept <= MAX_ERROR_HISTORY_BYTES, "{kept}");
        assert_eq!(
            job.errors.len(),
            MAX_ERROR_HISTORY_BYTES / MAX_ERROR_MESSAGE_BYTES
        );
        assert_eq!(job.errors.last().map(|e| e.attempt), Some(30));
        assert!(job
            .errors
            .iter()
            .all(|e| e.message.len() <= MAX_ERROR_MESSAGE_BYTES));
        for attempt in 31..=60 {
            job.attempt = attempt;
            job.record_error("short");
        }
        assert_eq!(job.errors.len(), MAX_ERROR_HISTORY);
        assert_eq!(job.errors[0].attempt, 41);
    }

    #[test]
    fn the_largest_job_fits_every_write_of_its_life() {
        let headers = (0..16).map(|i| (format!("h{i:02}"), "v".repeat(MAX_HEADERS_BYTES / 16 - 3)));
        let mut new = NewJob::new("k".repeat(128), vec![0xa5; MAX_PAYLOAD_BYTES])
            .lock_key("l".repeat(MAX_KEY_BYTES))
            .partition_key("p".repeat(MAX_KEY_BYTES));
        for (k, v) in headers {
            new = new.header(k, v);
        }
        let (mut job, _) = new.into_job(1, 1000, MAX_PAYLOAD_BYTES).unwrap();
        for attempt in 1..=100 {
            job.attempt = attempt;
            job.record_error(&"e".repeat(MAX_ERROR_MESSAGE_BYTES * 2));
        }
        let record = codec::encode(&job).unwrap();
        let overhead = record.len() - MAX_PAYLOAD_BYTES;
        assert!(overhead <= MAX_RECORD_OVERHEAD_BYTES, "{overhead}");
        let err = NewJob::new("k", vec![])
            .header("big", "x".repeat(MAX_HEADERS_BYTES))
            .into_job(1, 1, 10)
            .unwrap_err();
        assert!(err.to_string().contains("headers"), "{err}");
    }
}
