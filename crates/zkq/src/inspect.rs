//! Read-only views of a running zkq: who is registered, who owns which partitions, and where a
//! partition key sends its jobs. Each reads znodes directly; nothing here writes.

pub use crate::assignment::{read as assignment, Assignment};
pub use crate::claim::claim_name;
pub use crate::producer::partition_of_key;
pub use crate::registry::{list as workers, WorkerInfo};
