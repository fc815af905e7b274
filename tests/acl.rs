//! ACLs on every znode zkq creates: with credentials, an outsider (a client holding none, the
//! zookeeper-client crate and ZooKeeper's own zkCli) can neither read nor change anything in
//! the tree; read-only identities read and still cannot write; a tree made without credentials
//! is checked and fixed; a root zkq may not use is named with the permission it lacks.

use std::sync::Arc;
use std::time::Duration;

use zkq::zookeeper_client as zk;
use zkq::{Admin, Credentials, Error, NewJob, Outcome, Permission, Producer, Worker, ZkConfig};
use zkq_tests::{small_queue, spawn_worker, within, Env};

const ZKQ: &str = "digest:zkq:pw-3Ks9q";

fn with_credentials(env: &Env) -> ZkConfig {
    ZkConfig {
        auth: vec![Credentials::parse(ZKQ).unwrap()],
        ..env.zk.clone()
    }
}

/// A session holding no credentials.
async fn outsider() -> zk::Client {
    zk::Client::connector()
        .connect(&zkq_testkit::shared().connect_string())
        .await
        .unwrap()
}

/// Every znode under `root` (the root included), parents before children.
async fn tree(client: &zk::Client, root: &str) -> Vec<String> {
    let mut all = vec![root.to_string()];
    let mut i = 0;
    while i < all.len() {
        let children = client.list_children(&all[i]).await.unwrap_or_default();
        let parent = all[i].clone();
        all.extend(children.into_iter().map(|c| format!("{parent}/{c}")));
        i += 1;
    }
    all
}

fn find<'a>(paths: &'a [String], what: &str, test: impl Fn(&str) -> bool) -> &'a str {
    paths
        .iter()
        .find(|p| test(p))
        .unwrap_or_else(|| panic!("no {what} in {paths:#?}"))
}

fn is_job(path: &str) -> bool {
    path.contains("/p/") && path.rsplit('/').next().is_some_and(|n| n.starts_with("j-"))
}

fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, zk::Error>) {
    assert!(
        matches!(result, Err(zk::Error::NoAuth)),
        "{what}: expected NoAuth, got {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_can_neither_read_nor_change_anything_in_a_tree_made_with_credentials() {
    let env = Env::new("acl-outsider");
    let zk = with_credentials(&env);
    let producer = Producer::connect(&zk, &env.root).await.unwrap();
    producer.create_queue("q", &small_queue()).await.unwrap();

    // A worker with the credentials runs jobs; one of them holds a lock key and stays running,
    // so that claims, lock nodes and registrations exist while the outsider looks.
    let release = Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handler = {
        let release = release.clone();
        move |ctx: zkq::JobContext| {
            let (release, started_tx) = (release.clone(), started_tx.clone());
            async move {
                let text = String::from_utf8_lossy(&ctx.job.payload).into_owned();
                let _ = started_tx.send(text.clone());
                if text == "hold" {
                    release.notified().await;
                }
                Outcome::Done
            }
        }
    };
    let worker = Worker::new(zk.clone(), &env.root, env.worker_config("q", 2))
        .unwrap()
        .handle("k", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    producer.enqueue("q", NewJob::new("k", "first")).await.unwrap();
    assert_eq!(within(started.recv()).await.unwrap(), "first");
    producer
        .enqueue("q", NewJob::new("k", "hold").lock_key("key"))
        .await
        .unwrap();
    assert_eq!(within(started.recv()).await.unwrap(), "hold");
    producer
        .enqueue("q", NewJob::new("k", "later").delay(Duration::from_secs(3600)))
        .await
        .unwrap();

    let insider = zk.connect().await.unwrap();
    let paths = tree(&insider, &env.root).await;
    let job = find(&paths, "job", is_job);
    let claim = find(&paths, "claim", |p| p.contains("/claims/"));
    let config = format!("{}/queues/q", env.root);
    let worker_node = find(&paths, "worker registration", |p| {
        p.starts_with(&format!("{}/workers/", env.root))
    });
    let lock_node = find(&paths, "lock node", |p| {
        p.contains("/locks/") && p.contains("/l-")
    });
    let delayed_dir = format!("{}/queues/q/delayed/", env.root);
    let delayed = find(&paths, "delayed job", |p| {
        p.strip_prefix(&delayed_dir)
            .is_some_and(|rest| rest.contains('/'))
    });
    let segment = job.rsplit_once('/').unwrap().0;

    // Every znode zkq made, ephemerals included, carries one ACL: all permissions for the
    // identity of the credentials (the server expanded creator-all into it), nothing for others.
    let (root_acl, _) = insider.get_acl(&env.root).await.unwrap();
    assert_eq!(root_acl.len(), 1, "{root_acl:?}");
    assert_eq!(root_acl[0].scheme(), "digest");
    assert!(root_acl[0].id().starts_with("zkq:"), "{root_acl:?}");
    assert_eq!(root_acl[0].permission(), zk::Permission::ALL);
    for path in &paths {
        match insider.get_acl(path).await {
            Ok((acl, _)) => assert_eq!(acl, root_acl, "{path}"),
            Err(zk::Error::NoNode) => {}
            Err(e) => panic!("{path}: {e}"),
        }
    }

    let outsider = outsider().await;
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    assert_refused("list the root", outsider.list_children(&env.root).await);
    assert_refused("read a job", outsider.get_data(job).await);
    assert_refused("read a delayed job", outsider.get_data(delayed).await);
    assert_refused("read a claim", outsider.get_data(claim).await);
    assert_refused("read the queue config", outsider.get_data(&config).await);
    assert_refused("read a worker registration", outsider.get_data(worker_node).await);
    assert_refused("read a lock node", outsider.get_data(lock_node).await);
    assert_refused(
        "create a job",
        outsider.create(&format!("{segment}/j-"), b"x", &open).await,
    );
    assert_refused("delete a job", outsider.delete(job, None).await);
    assert_refused("rewrite a job", outsider.set_data(job, b"x", None).await);
    assert_refused("delete a claim", outsider.delete(claim, None).await);
    let claims = claim.rsplit_once('/').unwrap().0;
    assert_refused(
        "claim a job",
        outsider
            .create(&format!("{claims}/l0.s-0.0000000001"), b"", &open)
            .await,
    );
    assert_refused(
        "change the queue config",
        outsider.set_data(&config, b"x", None).await,
    );
    assert_refused("delete a lock node", outsider.delete(lock_node, None).await);
    assert_refused(
        "change an ACL",
        outsider.set_acl(job, &zk::Acls::anyone_all(), None).await,
    );

    // ZooKeeper's own command-line client, without credentials, is refused the same way.
    let address = zkq_testkit::shared().connect_string();
    for command in [
        vec!["get", job],
        vec!["delete", job],
        vec!["set", config.as_str(), "x"],
    ] {
        let (ok, output) = zkq_testkit::zk_cli(&address, &command).unwrap();
        assert!(
            !ok && output.contains("Insufficient permission"),
            "zkCli {command:?}: {output}"
        );
    }

    // The insiders are unaffected: the held job finishes, and the tree is as configured.
    release.notify_one();
    let _ = stop.send(());
    let summary = handle.await.unwrap().unwrap();
    assert_eq!(summary.done, 2, "{summary:?}");
    let admin = Admin::connect(&zk, &env.root).await.unwrap();
    let report = admin.acl_check().await.unwrap();
    assert_eq!(report.differing, 0, "{report:?}");
    assert!(report.checked > 20, "{report:?}");
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_identity_reads_everything_and_still_writes_nothing() {
    let env = Env::new("acl-reader");
    let zk = ZkConfig {
        acl_read: vec![zkq::parse_acl_id("world:anyone").unwrap()],
        ..with_credentials(&env)
    };
    let producer = Producer::connect(&zk, &env.root).await.unwrap();
    producer.create_queue("q", &small_queue()).await.unwrap();
    let id = producer
        .enqueue("q", NewJob::new("k", "the payload"))
        .await
        .unwrap();

    let outsider = outsider().await;
    let paths = tree(&outsider, &env.root).await;
    let job = find(&paths, "job", is_job);
    let (data, _) = outsider.get_data(job).await.expect("readable by world:anyone");
    let record = zkq::Job::decode(job, &data).unwrap();
    assert_eq!((record.id, record.payload.as_slice()), (id, &b"the payload"[..]));
    let config = format!("{}/queues/q", env.root);
    outsider.get_data(&config).await.expect("the config is readable");

    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let segment = job.rsplit_once('/').unwrap().0;
    assert_refused(
        "create a job",
        outsider.create(&format!("{segment}/j-"), b"x", &open).await,
    );
    assert_refused("delete a job", outsider.delete(job, None).await);
    assert_refused("rewrite a job", outsider.set_data(job, b"x", None).await);
    assert_refused(
        "change the queue config",
        outsider.set_data(&config, b"x", None).await,
    );
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_made_before_credentials_is_listed_by_acl_check_and_closed_by_acl_apply() {
    let env = Env::new("acl-apply");
    let open = Producer::connect(&env.zk, &env.root).await.unwrap();
    open.create_queue("q", &small_queue()).await.unwrap();
    for n in 0..3 {
        open.enqueue("q", NewJob::new("k", format!("job {n}")))
            .await
            .unwrap();
    }
    open.close().await;

    let zk = with_credentials(&env);
    let admin = Admin::connect(&zk, &env.root).await.unwrap();
    let before = admin.acl_check().await.unwrap();
    assert!(before.checked >= 10, "{before:?}");
    assert_eq!(
        before.differing, before.checked,
        "every znode is open: {before:?}"
    );
    assert_eq!(before.examples[0].path, env.root);
    assert_eq!(before.examples[0].acl[0].to_string(), "world:anyone:cdrwa");
    assert_eq!(before.expected.len(), 1);
    assert!(before.expected[0].id.starts_with("zkq:"), "{before:?}");

    let applied = admin.acl_apply().await.unwrap();
    assert_eq!(applied.fixed, before.differing, "{applied:?}");
    let after = admin.acl_check().await.unwrap();
    assert_eq!((after.checked, after.differing), (before.checked, 0), "{after:?}");

    let outsider = outsider().await;
    assert_refused("list the root", outsider.list_children(&env.root).await);
    // The jobs run as before for a worker with the credentials.
    let (handler, mut runs) = zkq_tests::recording(|_| Outcome::Done);
    let worker = Worker::new(zk.clone(), &env.root, env.worker_config("q", 2))
        .unwrap()
        .handle("k", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    zkq_tests::take(&mut runs, 3).await;
    let _ = stop.send(());
    assert_eq!(handle.await.unwrap().unwrap().done, 3);
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_zkq_may_not_use_is_named_with_the_permission_it_lacks() {
    let env = Env::new("acl-foreign");
    // Someone else's znode, readable by all, writable by its owner only.
    let owner = zk::Client::connector()
        .with_auth("digest", b"owner:pw-owner")
        .connect(&zkq_testkit::shared().connect_string())
        .await
        .unwrap();
    let mut acl = zk::Acls::creator_all().to_vec();
    acl.extend(zk::Acls::anyone_read().iter().cloned());
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::new(&acl));
    owner.create(&env.root, b"", &options).await.unwrap();

    let zk = with_credentials(&env);
    let root = format!("{}/zkq", env.root);
    let producer = Producer::connect(&zk, &root).await.unwrap();
    let err = producer.create_queue("q", &small_queue()).await.unwrap_err();
    match &err {
        Error::NotAuthorized { permission, on, .. } => {
            assert_eq!(
                (*permission, on.as_str()),
                (Permission::Create, env.root.as_str())
            )
        }
        other => panic!("expected NotAuthorized, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&env.root) && message.contains("CREATE"),
        "{message}"
    );

    // A root zkq may create under but not read: the first listing names it and READ.
    let hidden = format!("{}-hidden", env.root);
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::new(&acl[..1]));
    owner.create(&hidden, b"", &options).await.unwrap();
    owner
        .create(&format!("{hidden}/queues"), b"", &options)
        .await
        .unwrap();
    let admin = Admin::connect(&zk, &hidden).await.unwrap();
    let err = admin.stats(None).await.unwrap_err();
    match &err {
        Error::NotAuthorized { permission, on, .. } => {
            assert_eq!(*permission, Permission::Read, "{err}");
            assert!(on.starts_with(&hidden), "{err}");
        }
        other => panic!("expected NotAuthorized, got {other:?}"),
    }
}
