//! SASL DIGEST-MD5 (`--auth sasl:user:password`) against a ZooKeeper that checks users from a
//! JAAS file: a producer and a worker run jobs with the session identity `sasl:<user>`, every
//! znode they make is creator-all for that identity, and a wrong password gets no session.

use std::time::Duration;

use zkq::zookeeper_client as zk;
use zkq::{Credentials, Error, NewJob, Outcome, Producer, Worker, ZkConfig};
use zkq_testkit::Ensemble;
use zkq_tests::{recording, small_queue, spawn_worker, take, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_with_sasl_credentials_and_znodes_belong_to_the_sasl_identity() {
    let server = Ensemble::standalone_sasl(&[("zkq", "pw-sasl-1")]).unwrap();
    let env = Env::new("sasl");
    let zk = ZkConfig {
        address: server.connect_string(),
        auth: vec![Credentials::parse("sasl:zkq:pw-sasl-1").unwrap()],
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
    producer
        .enqueue("q", NewJob::new("k", "over sasl"))
        .await
        .unwrap();
    assert_eq!(take(&mut runs, 1).await[0].text(), "over sasl");
    let _ = stop.send(());
    assert_eq!(handle.await.unwrap().unwrap().done, 1);

    let (acl, _) = producer
        .client()
        .get_acl(&format!("{}/queues/q", env.root))
        .await
        .unwrap();
    assert_eq!(acl.len(), 1, "{acl:?}");
    assert_eq!((acl[0].scheme(), acl[0].id()), ("sasl", "zkq"));
    assert_eq!(acl[0].permission(), zk::Permission::ALL);
    let outsider = zk::Client::connector()
        .connect(&server.connect_string())
        .await
        .unwrap();
    assert!(matches!(
        outsider.list_children(&env.root).await,
        Err(zk::Error::NoAuth)
    ));
    producer.close().await;

    let wrong = ZkConfig {
        auth: vec![Credentials::parse("sasl:zkq:wrong").unwrap()],
        connect_timeout: Duration::from_secs(5),
        ..zk.clone()
    };
    match wrong.connect().await {
        Err(e @ Error::Unreachable { .. }) => assert!(!e.to_string().contains("wrong"), "{e}"),
        other => panic!("a wrong SASL password got {other:?}"),
    }
}
