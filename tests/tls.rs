//! TLS to ZooKeeper's secure client port, with certificates made in the test: a producer and a
//! worker run jobs over it; a client that speaks plaintext to that port, or trusts another CA,
//! gets no session, and says why.

use std::time::Duration;

use zkq::{Error, NewJob, Outcome, Producer, TlsConfig, Worker, ZkConfig};
use zkq_testkit::{Ensemble, TestCerts};
use zkq_tests::{recording, small_queue, spawn_worker, take, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_over_tls_and_clients_without_the_right_ca_get_no_session() {
    let certs = TestCerts::generate("zkq").unwrap();
    let server = Ensemble::standalone_tls(&certs).unwrap();
    let env = Env::new("tls");
    let tls = TlsConfig::from_pem(&certs.ca, Some((&certs.client_cert, &certs.client_key))).unwrap();
    let zk = ZkConfig {
        address: server.secure_connect_string(),
        tls: Some(tls),
        ..env.zk.clone()
    };
    let producer = Producer::connect(&zk, &env.root).await.unwrap();
    producer.create_queue("q", &small_queue()).await.unwrap();
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let worker = Worker::new(zk.clone(), &env.root, env.worker_config("q", 2))
        .unwrap()
        .handle("k", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    producer.enqueue("q", NewJob::new("k", "over tls")).await.unwrap();
    assert_eq!(take(&mut runs, 1).await[0].text(), "over tls");
    let _ = stop.send(());
    assert_eq!(handle.await.unwrap().unwrap().done, 1);
    producer.close().await;
    // With credentials too, znodes belong to the credentials' identity only: not also to the
    // client certificate's (`x509:CN=...`), which ZooKeeper adds to a TLS session's identities.
    let authed = ZkConfig {
        auth: vec![zkq::Credentials::parse("digest:zkq:pw").unwrap()],
        ..zk.clone()
    };
    let root = format!("{}-acl", env.root);
    let with_credentials = Producer::connect(&authed, &root).await.unwrap();
    with_credentials.create_queue("q", &small_queue()).await.unwrap();
    let (acl, _) = with_credentials
        .client()
        .get_acl(&format!("{root}/queues/q"))
        .await
        .unwrap();
    let ids: Vec<String> = acl.iter().map(|a| format!("{}:{}", a.scheme(), a.id())).collect();
    assert_eq!(ids, ["digest:zkq:uPhTktmrlIeEg30WtBX/hL3eskM="]);
    with_credentials.close().await;

    let quick = |config: ZkConfig| ZkConfig {
        connect_timeout: Duration::from_secs(3),
        ..config
    };
    // Plaintext to the TLS port: the server never completes a handshake.
    let plain = quick(ZkConfig {
        tls: None,
        ..zk.clone()
    });
    match plain.connect().await {
        Err(Error::Unreachable { .. }) => {}
        other => panic!("a plaintext client got {other:?}"),
    }
    // A client trusting another CA refuses the server's certificate.
    let other = TestCerts::generate("other").unwrap();
    let stranger = quick(ZkConfig {
        tls: Some(TlsConfig::from_pem(&other.ca, Some((&other.client_cert, &other.client_key))).unwrap()),
        ..zk.clone()
    });
    match stranger.connect().await {
        Err(Error::Unreachable { .. }) => {}
        other => panic!("a client trusting another CA got {other:?}"),
    }
    // A client without a certificate is refused by the server (it asks for one).
    let anonymous = quick(ZkConfig {
        tls: Some(TlsConfig::from_pem(&certs.ca, None).unwrap()),
        ..zk.clone()
    });
    match anonymous.connect().await {
        Err(Error::Unreachable { .. }) => {}
        other => panic!("a client without a certificate got {other:?}"),
    }
    // PEMs without a certificate or a key are refused when the config is made.
    assert!(TlsConfig::from_pem("not a pem", None).is_err());
    assert!(TlsConfig::from_pem(&certs.ca, Some((&certs.client_cert, "no key"))).is_err());
}
