//! zkq-producer with ZooKeeper credentials, against a root that only an authenticated identity
//! may use: flags, the environment and the auth file, and the errors without them.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use zkq::zookeeper_client as zk;

const SECRET: &str = "s3cr3t-pw";

/// Runs zkq-producer on `root` with `args` and the extra environment `env`.
fn producer(root: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkq-producer"))
        .args(["--zk", &zkq_testkit::shared().connect_string(), "--root", root])
        .args(args)
        .env_remove("ZKQ_AUTH")
        .env_remove("ZKQ_AUTH_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("zkq-producer runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A root that only `digest:owner:SECRET` may read or change (created with creator-all by a
/// session holding those credentials), and that session.
async fn protected_root(name: &str) -> (String, zk::Client) {
    let root = zkq_testkit::unique_root(name);
    let owner = zk::Client::connector()
        .with_auth("digest", format!("owner:{SECRET}").as_bytes())
        .connect(&zkq_testkit::shared().connect_string())
        .await
        .unwrap();
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all());
    owner.create(&root, b"", &options).await.unwrap();
    (root, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_root_is_used_with_its_credentials_and_refused_without_them() {
    let (root, owner) = protected_root("auth-producer").await;
    let enqueue = ["enqueue", "--queue", "q", "--kind", "k", "hello"];

    // No credentials, and the wrong password: refused, with a clear message, nothing written.
    for env in [vec![], vec![("ZKQ_AUTH", "digest:owner:wrong")]] {
        let out = producer(&root, &enqueue, &env);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains("not authorized") && err.contains("--auth"), "{err}");
        assert!(!err.contains("wrong"), "credentials are never printed: {err}");
        assert!(
            owner.list_children(&root).await.unwrap().is_empty(),
            "nothing written"
        );
    }

    // The right credentials, by flag and by environment.
    let flag = format!("digest:owner:{SECRET}");
    let mut with_flag = vec!["--auth", flag.as_str()];
    with_flag.extend(enqueue);
    let out = producer(&root, &with_flag, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = producer(&root, &enqueue, &[("ZKQ_AUTH", flag.as_str())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains(SECRET) && !text(&out.stdout).contains(SECRET));
    assert!(!owner.list_children(&root).await.unwrap().is_empty());

    // Malformed credentials are refused without being repeated.
    let mut malformed = vec!["--auth", "digest:owner-nocolon-s3cr3t"];
    malformed.extend(enqueue);
    let out = producer(&root, &malformed, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("digest:user:password"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains("s3cr3t"), "{}", text(&out.stderr));

    // --help never shows the environment's credentials.
    let help = producer(&root, &["--help"], &[("ZKQ_AUTH", flag.as_str())]);
    assert!(!text(&help.stdout).contains(SECRET), "{}", text(&help.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_file_must_be_private() {
    let (root, _owner) = protected_root("auth-file").await;
    let dir = std::env::temp_dir().join(format!("zkq-auth-test-{}", zkq::JobId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("credentials");
    std::fs::write(&file, format!("# zkq\ndigest:owner:{SECRET}\n")).unwrap();
    let path = file.to_str().unwrap();
    let enqueue = ["--auth-file", path, "enqueue", "--queue", "q", "--kind", "k", "x"];

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = producer(&root, &enqueue, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("open to group or others (mode 644)"), "{err}");
    assert!(!err.contains(SECRET), "{err}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = producer(&root, &enqueue, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}
