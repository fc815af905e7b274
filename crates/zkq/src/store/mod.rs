//! The store layer: how zkq talks to ZooKeeper. Sessions and [`ZkConfig`](session::ZkConfig),
//! the znode layout, MessagePack records, transactions (`multi`) with their error attribution
//! and the lost-race predicate, and group commit. Nothing here knows what a job's life is.

pub mod acl;
pub(crate) mod batcher;
pub(crate) mod codec;
pub mod layout;
pub mod session;
pub mod tls;
pub(crate) mod txn;
pub mod znode;
