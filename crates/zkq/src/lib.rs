//! zkq
