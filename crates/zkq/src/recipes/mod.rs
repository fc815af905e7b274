//! ZooKeeper recipes zkq is built from, each usable on its own: waiting in line without a herd
//! effect, leader election with an epoch as fencing token, locks with fencing tokens, the
//! session heartbeat that tells when a process must fence itself, and the watchdog process that
//! stops a command its frozen runner cannot stop.

pub mod election;
pub(crate) mod line;
pub mod liveness;
pub mod lock;
pub mod watchdog;
