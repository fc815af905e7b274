//! Credentials in the library: a producer and a worker on a root that only their identity may
//! use, across dropped connections; a worker without them is refused.

use std::time::Duration;

use zkq::zookeeper_client as zk;
use zkq::{Credentials, Error, NewJob, Outcome, Producer, Worker, ZkConfig};
use zkq_tests::{recording, small_queue, spawn_worker, take, Env};

const OWNER: &str = "digest:owner:pw-8Jq2";

/// `env`'s root, made by a session holding [`OWNER`] with creator-all: nobody else may use it.
async fn protect(env: &Env) {
    let (scheme, secret) = OWNER.split_once(':').unwrap();
    let owner = zk::Client::connector()
        .with_auth(scheme, secret.as_bytes())
        .connect(&zkq_testkit::shared().connect_string())
        .await
        .unwrap();
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all());
    owner.create(&env.root, b"", &options).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_credentials_across_dropped_connections_and_a_worker_runs_jobs_with_them() {
    let env = Env::new("auth-worker");
    protect(&env).await;
    let credentials = Credentials::parse(OWNER).unwrap();
    let direct = ZkConfig {
        auth: vec![credentials.clone()],
        ..env.zk.clone()
    };
    let producer = Producer::connect(&direct, &env.root).await.unwrap();
    producer.create_queue("q", &small_queue()).await.unwrap();

    // The worker reaches ZooKeeper through a proxy that drops its connections.
    let proxy = zkq_testkit::Proxy::start(&zkq_testkit::shared().connect_string()).unwrap();
    let through_proxy = ZkConfig {
        address: proxy.address(),
        session_timeout: Duration::from_secs(6),
        ..direct.clone()
    };
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let worker = Worker::new(through_proxy.clone(), &env.root, env.worker_config("q", 4))
        .unwrap()
        .handle("k", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    producer.enqueue("q", NewJob::new("k", "before")).await.unwrap();
    assert_eq!(take(&mut runs, 1).await[0].text(), "before");
    // ZooKeeper keeps credentials per connection: after each reconnect the client sends them
    // again before any request. A session through the same proxy shows it by creating a child
    // of the root, which only the owner's identity may do; the worker keeps running jobs.
    let session = through_proxy.connect().await.unwrap();
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    for i in 0..3 {
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let child = format!("{}/after-cut-{i}", env.root);
        let created = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match session.create(&child, b"", &options).await {
                    Ok(_) | Err(zk::Error::NodeExists) => return,
                    Err(zk::Error::NoAuth) => panic!("the reconnected session lost its credentials"),
                    // The connection is coming back: try again.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        created.await.expect("created within 20 s");
        producer
            .enqueue("q", NewJob::new("k", format!("after cut {i}")))
            .await
            .unwrap();
        let run = take(&mut runs, 1).await.remove(0);
        assert_eq!(run.text(), format!("after cut {i}"));
        assert_eq!(run.attempt, 1);
    }
    let _ = stop.send(());
    let summary = handle.await.unwrap().unwrap();
    assert_eq!(summary.done, 4, "{summary:?}");
    producer.close().await;

    // Without the credentials, a worker on a fresh protected root is refused at once, with the
    // path it could not use.
    let fresh = Env::new("auth-bare");
    protect(&fresh).await;
    let (handler, _runs) = recording(|_| Outcome::Done);
    let bare = Worker::new(fresh.zk.clone(), &fresh.root, fresh.worker_config("q", 1))
        .unwrap()
        .handle("k", handler)
        .unwrap();
    let (_stop, handle) = spawn_worker(bare);
    match handle.await.unwrap() {
        Err(Error::NotAuthorized { path, .. }) => assert!(path.starts_with(&fresh.root), "{path}"),
        other => panic!("expected NotAuthorized, got {other:?}"),
    }
}
