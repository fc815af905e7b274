//! Every limit zkq enforces, in one place: request and record sizes, names and keys, queue
//! shapes, delays. Each is explained where it is defined; ARCHITECTURE.md ("Size budget") shows
//! how the size limits fit together.

use std::time::Duration;

pub use crate::periodic::MAX_CATCH_UP;
pub use crate::queue::{MAX_PARTITIONS, MAX_PRIORITIES, MAX_SEGMENT_SIZE};
pub use crate::recipes::liveness::KILL_SHARE;
pub use crate::store::layout::MAX_QUEUE_NAME;

/// Default limit on a job's payload. Queues can lower or raise it up to [`MAX_PAYLOAD_BYTES`].
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 512 * 1024;

/// Largest request zkq sends to ZooKeeper, well under the server's `jute.maxbuffer` (1 MiB): a
/// request over that makes the server drop the connection, and the client send it again forever.
pub const MAX_REQUEST_BYTES: usize = 960 * 1024;

/// Most bytes a job record holds besides its payload, whatever its life: kind, keys and ids
/// (under 1 KiB), headers ([`MAX_HEADERS_BYTES`]), error history ([`MAX_ERROR_HISTORY_BYTES`])
/// and the record's own framing.
pub const MAX_RECORD_OVERHEAD_BYTES: usize = 48 * 1024;

/// Most bytes a single-job write adds around the record: the paths and framing of the few
/// operations beside it (claim, claim delete, lock check, delayed entry or dead letter).
pub const MAX_WRITE_OVERHEAD_BYTES: usize = 8 * 1024;

/// Hard ceiling on a payload: the largest job record, written with the operations of its
/// largest single-job write (a claim, a retry, a dead letter), must fit one request. So whatever
/// a queue accepts can also be claimed, retried with its full error history and dead-lettered.
pub const MAX_PAYLOAD_BYTES: usize = MAX_REQUEST_BYTES - MAX_RECORD_OVERHEAD_BYTES - MAX_WRITE_OVERHEAD_BYTES;

/// Most bytes of headers (keys and values together) a job may carry.
pub const MAX_HEADERS_BYTES: usize = 16 * 1024;

/// Longest error message kept per attempt in the error history.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 2048;

/// How many failed attempts the error history keeps (the newest ones).
pub const MAX_ERROR_HISTORY: usize = 20;

/// Most bytes of error messages the history keeps (the newest ones): 20 messages of the
/// longest size would be 40 KiB.
pub const MAX_ERROR_HISTORY_BYTES: usize = 24 * 1024;

/// Longest lock key or partition key.
pub const MAX_KEY_BYTES: usize = 256;

/// Longest delay a job can be enqueued with: 100 years of 365.25 days. A due time further out
/// is refused.
pub const MAX_DELAY: Duration = Duration::from_secs(36_525 * 24 * 3600);
