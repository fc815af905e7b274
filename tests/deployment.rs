//! The shipped deployment files say what the README promises: ZooKeeper's data and log on
//! volumes, job commands under an init process and a non-root user, credentials from an env
//! file. (No container engine here: the compose file is checked with a YAML parser.)

use serde_yaml::Value;

fn repo_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    let mut doc: Value = serde_yaml::from_str(&repo_file("docker-compose.yml")).expect("valid YAML");
    doc.apply_merge().expect("merge keys resolve");
    doc
}

#[test]
fn every_zookeeper_keeps_its_data_and_log_on_named_volumes() {
    let doc = compose();
    let volumes = doc["volumes"].as_mapping().expect("named volumes");
    for zk in ["zk1", "zk2", "zk3"] {
        let mounts: Vec<&str> = doc["services"][zk]["volumes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{zk} has volumes"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for dir in ["/data", "/datalog"] {
            let mount = mounts
                .iter()
                .find(|m| m.ends_with(&format!(":{dir}")))
                .unwrap_or_else(|| panic!("{zk} mounts {dir}: {mounts:?}"));
            let name = mount.split(':').next().unwrap();
            assert!(volumes.contains_key(name), "{name} is a named volume");
        }
        let extra = doc["services"][zk]["environment"]["ZOO_AUTOPURGE_PURGEINTERVAL"].as_u64();
        assert_eq!(extra, Some(1), "{zk} purges old logs");
    }
}

#[test]
fn zkq_services_run_under_an_init_with_credentials_from_an_env_file() {
    let doc = compose();
    for service in ["worker", "producer"] {
        let s = &doc["services"][service];
        assert_eq!(
            s["init"].as_bool(),
            Some(true),
            "{service} runs under an init process"
        );
        assert_eq!(s["env_file"].as_str(), Some("zkq.env"), "{service} reads zkq.env");
        let env = serde_yaml::to_string(&s["environment"]).unwrap();
        assert!(
            !env.contains("ZKQ_AUTH"),
            "no credentials in the compose file: {env}"
        );
    }
    let example = repo_file("zkq.env.example");
    assert!(
        example.lines().any(|l| l.starts_with("ZKQ_AUTH=digest:")),
        "{example}"
    );
    assert!(repo_file(".gitignore").lines().any(|l| l == "zkq.env"));
    assert!(repo_file(".dockerignore").lines().any(|l| l == "zkq.env"));
}

#[test]
fn the_image_runs_as_an_unprivileged_user() {
    let dockerfile = repo_file("Dockerfile");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(!user.starts_with("root") && !user.starts_with('0'), "USER {user}");
}
