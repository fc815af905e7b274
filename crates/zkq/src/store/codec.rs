//! MessagePack encoding of everything zkq stores in znodes.
//!
//! Records are maps with named fields (`rmp_serde::to_vec_named`), so any ZooKeeper client with a
//! MessagePack library can read and write them, and fields can be added without breaking old
//! readers. Every record carries a format version `v`; a reader refuses versions it does not know
//! instead of guessing.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// A record stored in a znode.
pub(crate) trait Record: Serialize + DeserializeOwned {
    /// What the record is, for error messages ("job", "queue config", ...).
    const WHAT: &'static str;
    /// The newest format version this code writes and reads.
    const VERSION: u8;
    /// The version the decoded record says it has.
    fn version(&self) -> u8;
}

/// Encodes a record as a MessagePack map.
pub(crate) fn encode<T: Record>(record: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(record).map_err(|e| Error::Decode {
        what: T::WHAT,
        path: String::new(),
        reason: format!("cannot encode: {e}"),
    })
}

/// Decodes a record read from `path`, refusing garbage and unknown versions.
pub(crate) fn decode<T: Record>(path: &str, bytes: &[u8]) -> Result<T> {
    let fail = |reason: String| Error::Decode {
        what: T::WHAT,
        path: path.to_string(),
        reason,
    };
    if bytes.is_empty() {
        return Err(fail("the znode is empty".into()));
    }
    let record: T = rmp_serde::from_slice(bytes).map_err(|e| fail(format!("not a valid record: {e}")))?;
    if record.version() != T::VERSION {
        return Err(fail(format!(
            "format version {} is not supported (this build reads version {})",
            record.version(),
            T::VERSION
        )));
    }
    Ok(record)
}
