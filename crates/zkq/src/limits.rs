//! Every limit zkq enforces, in one place: request and record sizes, names and keys, queue
//! shapes, delays. Each is explained where it is defined; ARCHITECTURE.md ("Size budget") shows
//! how the size limits fit together.

pub use crate::cron::MAX_CATCH_UP;
pub use crate::job::{
    DEFAULT_MAX_PAYLOAD_BYTES, MAX_DELAY, MAX_ERROR_HISTORY, MAX_ERROR_HISTORY_BYTES,
    MAX_ERROR_MESSAGE_BYTES, MAX_HEADERS_BYTES, MAX_KEY_BYTES, MAX_PAYLOAD_BYTES, MAX_RECORD_OVERHEAD_BYTES,
    MAX_REQUEST_BYTES, MAX_WRITE_OVERHEAD_BYTES,
};
pub use crate::layout::MAX_QUEUE_NAME;
pub use crate::liveness::KILL_SHARE;
pub use crate::queue::{MAX_PARTITIONS, MAX_PRIORITIES, MAX_SEGMENT_SIZE};
