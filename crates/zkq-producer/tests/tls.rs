//! zkq-producer over TLS with --tls-ca, --tls-cert and --tls-key (and their environment
//! variables), against a ZooKeeper serving TLS with certificates made in the test; and the
//! errors for files that cannot be used.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use zkq_testkit::{Ensemble, TestCerts};

fn producer(address: &str, root: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkq-producer"))
        .args(["--zk", address, "--root", root, "--connect-timeout", "3s"])
        .args(args)
        .env_remove("ZKQ_TLS_CA")
        .env_remove("ZKQ_TLS_CERT")
        .env_remove("ZKQ_TLS_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("zkq-producer runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_producer_enqueues_over_tls_with_its_certificate_files() {
    let certs = TestCerts::generate("producer").unwrap();
    let server = Ensemble::standalone_tls(&certs).unwrap();
    let address = server.secure_connect_string();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_string_lossy().into_owned()
    };
    let ca = write("ca.pem", &certs.ca, 0o644);
    let cert = write("client.pem", &certs.client_cert, 0o644);
    let key = write("client-key.pem", &certs.client_key, 0o600);
    let root = zkq_testkit::unique_root("producer-tls");
    let tls = [
        "--tls-ca",
        ca.as_str(),
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
    ];

    let out = producer(
        &address,
        &root,
        &[&tls[..], &["create-queue", "--queue", "q"]].concat(),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The same files from the environment.
    let env = [
        ("ZKQ_TLS_CA", ca.as_str()),
        ("ZKQ_TLS_CERT", cert.as_str()),
        ("ZKQ_TLS_KEY", key.as_str()),
    ];
    let out = producer(
        &address,
        &root,
        &["enqueue", "--queue", "q", "--kind", "k", "hi"],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Without TLS, the secure port gives no session.
    let out = producer(
        &address,
        &root,
        &["enqueue", "--queue", "q", "--kind", "k", "hi"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach ZooKeeper"),
        "{}",
        text(&out.stderr)
    );

    // A key every local user may read is refused, naming the file and not its contents.
    let shared = write("shared-key.pem", &certs.client_key, 0o644);
    let out = producer(
        &address,
        &root,
        &[
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &shared,
            "enqueue",
            "--queue",
            "q",
            "--kind",
            "k",
            "x",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("shared-key.pem") && err.contains("readable by every local user"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    // A CA file with no certificate in it, and a missing file, are named.
    let junk = write("junk.pem", "not a certificate\n", 0o644);
    for (bad, expected) in [
        (junk.as_str(), "junk.pem"),
        ("/nonexistent/ca.pem", "/nonexistent/ca.pem"),
    ] {
        let out = producer(
            &address,
            &root,
            &["--tls-ca", bad, "enqueue", "--queue", "q", "--kind", "k", "x"],
            &[],
        );
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains(expected) && err.contains("TLS"), "{err}");
    }
}
