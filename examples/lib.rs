//! Runnable examples of the zkq library: see the `[[example]]` targets in Cargo.toml.
