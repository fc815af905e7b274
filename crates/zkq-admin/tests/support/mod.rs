//! What the zkq-admin tests share: the shared ZooKeeper, and the binary run with or without
//! `--json`.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use zkq::ZkConfig;

/// How long a test waits for something that should happen in well under a second.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn zk() -> ZkConfig {
    ZkConfig::new(zkq_testkit::shared().connect_string())
}

/// Runs zkq-admin with `args` on the zkq under `root`.
pub fn admin(root: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkq-admin"))
        .args(["--zk", &zkq_testkit::shared().connect_string(), "--root", root])
        .args(args)
        .output()
        .expect("zkq-admin runs")
}

/// Runs `args` with `--json`, expects success, and parses the output.
pub fn admin_json(root: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = admin(root, &all);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
