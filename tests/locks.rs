//! The lock recipe: exclusion across sessions, try-lock, timeouts, fencing tokens, no herd
//! effect, and guarded writes after the holder's session is gone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zkq::zookeeper_client as zk;
use zkq::{Layout, Lock};
use zkq_tests::{within, Env};

fn lock(env: &Env, client: &zk::Client, key: &str) -> Lock {
    Lock::new(client.clone(), &Layout::new(&env.root).unwrap(), key, "test").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_on_different_sessions_never_overlap_and_all_get_their_turn() {
    let env = Env::new("lock-exclusion");
    let inside = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let turns = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = env.client().await;
        let lock = lock(&env, &client, "shared");
        let (inside, overlaps, turns) = (inside.clone(), overlaps.clone(), turns.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let guard = lock.acquire().await.unwrap();
                if inside.swap(true, Ordering::SeqCst) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.store(false, Ordering::SeqCst);
                turns.fetch_add(1, Ordering::SeqCst);
                guard.release().await.unwrap();
            }
        }));
    }
    within(futures::future::try_join_all(tasks)).await.unwrap();
    assert_eq!(turns.load(Ordering::SeqCst), 20);
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_waiters_of_one_session_exclude_each_other() {
    let env = Env::new("lock-same-session");
    let client = env.client().await;
    let first = lock(&env, &client, "k").acquire().await.unwrap();
    let second = lock(&env, &client, "k");
    assert!(second.try_acquire().await.unwrap().is_none());
    let waiting = tokio::spawn(async move { second.acquire().await.map(|g| g.token()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the second waiter took a held lock");
    let first_token = first.token();
    drop(first);
    let second_token = within(waiting).await.unwrap().unwrap();
    assert!(second_token > first_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_and_timeouts_give_up_without_leaving_a_node_in_line() {
    let env = Env::new("lock-try");
    let (a, b) = (env.client().await, env.client().await);
    let held = lock(&env, &a, "k").acquire().await.unwrap();
    let other = lock(&env, &b, "k");
    assert!(other.try_acquire().await.unwrap().is_none());
    let started = std::time::Instant::now();
    assert!(other
        .acquire_timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Only the holder's node is in line: the failed attempts left nothing behind.
    let dir = Layout::new(&env.root).unwrap().lock("k");
    assert_eq!(b.list_children(&dir).await.unwrap().len(), 1);
    held.release().await.unwrap();
    let taken = other.try_acquire().await.unwrap().expect("free after release");
    assert!(taken.is_held());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_only_the_next_waiter() {
    let env = Env::new("lock-herd");
    let holder = env.client().await;
    let guard = lock(&env, &holder, "k").acquire().await.unwrap();
    let dir = Layout::new(&env.root).unwrap().lock("k");
    let (mut locks, mut tasks, mut clients) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..4 {
        let client = env.client().await;
        let lock = lock(&env, &client, "k");
        let waiter = lock.clone();
        tasks.push(tokio::spawn(async move { waiter.acquire().await.unwrap() }));
        // In line one after another, so that the order is known.
        within(async {
            while holder.list_children(&dir).await.unwrap().len() < i + 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        locks.push(lock);
        clients.push(client);
    }
    let mut previous = guard;
    for (i, task) in tasks.into_iter().enumerate() {
        previous.release().await.unwrap();
        previous = within(task).await.unwrap();
        // Each release woke exactly one waiter: the one right behind it.
        let woken: Vec<u64> = locks.iter().map(Lock::wakeups).collect();
        let mut expected = vec![0; 4];
        expected[..=i].fill(1);
        assert_eq!(woken, expected, "after release {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_holder_is_cut_off_its_guard_reports_it_and_after_expiry_its_guarded_writes_fail() {
    let env = Env::new("lock-expiry");
    // The holder reaches ZooKeeper through a proxy that can partition it.
    let proxy = zkq_testkit::Proxy::start(&env.zk.address).unwrap();
    let cut_off = zkq::ZkConfig {
        address: proxy.address(),
        ..env.zk.clone()
    };
    let holder = cut_off.connect().await.unwrap();
    let guard = lock(&env, &holder, "k").acquire().await.unwrap();
    let resource = env.client().await;
    let record = format!("{}/record", env.root);
    resource
        .create(
            &record,
            b"",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .unwrap();
    let guarded_write = |data: &'static [u8]| {
        let mut multi = resource.new_multi_writer();
        guard.check(&mut multi).unwrap();
        multi.add_set_data(&record, data, None).unwrap();
        multi.commit()
    };
    guarded_write(b"first")
        .await
        .expect("a guarded write while the lock is held lands");

    proxy.partition();
    // The guard counts the lock as lost as soon as the connection is in doubt...
    within(guard.lost().cancelled()).await;
    assert!(!guard.is_held());
    // ...and once the server expired the session, the lock node is gone.
    within(async {
        loop {
            let (stat, watcher) = resource.check_and_watch_stat(guard.node()).await.unwrap();
            if stat.is_none() {
                return;
            }
            watcher.changed().await;
        }
    })
    .await;

    let err = guarded_write(b"stale")
        .await
        .expect_err("a stale guarded write is rejected");
    assert!(
        matches!(
            err,
            zk::MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::NoNode
            }
        ),
        "the lock node's check fails: {err:?}"
    );
    let (data, _) = resource.get_data(&record).await.unwrap();
    assert_eq!(data, b"first");

    let next = lock(&env, &env.client().await, "k")
        .try_acquire()
        .await
        .unwrap()
        .expect("the lock is free once the holder's session expired");
    assert!(next.token() > guard.token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused_and_any_other_key_works() {
    let env = Env::new("lock-keys");
    let client = env.client().await;
    let layout = Layout::new(&env.root).unwrap();
    for bad in ["", &"k".repeat(257)] {
        let err = Lock::new(client.clone(), &layout, bad, "test").expect_err("refused");
        assert!(err.to_string().contains("lock key"), "{err}");
    }
    for key in ["a/b", "..", "user 42", "ü"] {
        let guard = Lock::new(client.clone(), &layout, key, "test")
            .unwrap()
            .acquire()
            .await
            .unwrap();
        guard.release().await.unwrap();
    }
}

/// One run of a keyed job, as the handler saw it.
#[derive(Debug, Clone)]
struct Span {
    key: String,
    start: std::time::Instant,
    end: std::time::Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_sharing_a_lock_key_never_overlap_across_workers_retries_included() {
    let env = Env::new("lock-key-exclusion");
    let mut config = zkq_tests::small_queue();
    config.partitions = 4;
    let producer = env.producer_for("q", &config).await;
    let spans = Arc::new(std::sync::Mutex::new(Vec::<Span>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (spans, done) = (spans.clone(), done.clone());
        let handler = move |ctx: zkq::JobContext| {
            let (spans, done) = (spans.clone(), done.clone());
            async move {
                let start = std::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let n: usize = String::from_utf8_lossy(&ctx.job.payload).parse().unwrap();
                spans.lock().unwrap().push(Span {
                    key: ctx.job.lock_key.clone().unwrap(),
                    start,
                    end: std::time::Instant::now(),
                });
                // Every fourth job fails its first attempt: its retry must keep the exclusion.
                if n.is_multiple_of(4) && ctx.job.attempt == 1 {
                    return zkq::Outcome::retry_after("first attempt fails", Duration::ZERO);
                }
                done.fetch_add(1, Ordering::SeqCst);
                zkq::Outcome::Done
            }
        };
        let worker = env
            .worker(env.worker_config("q", 4))
            .handle("keyed", handler)
            .unwrap();
        workers.push(zkq_tests::spawn_worker(worker));
    }
    let jobs: Vec<_> = (0..40u32)
        .map(|n| {
            zkq::NewJob::new("keyed", n.to_string()).lock_key(if n.is_multiple_of(2) { "a" } else { "b" })
        })
        .collect();
    producer.enqueue_batch("q", jobs).await.unwrap();
    within(async {
        while done.load(Ordering::SeqCst) < 40 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 50, "40 jobs, 10 of them twice");
    let mut across_keys = false;
    for (i, x) in spans.iter().enumerate() {
        for y in &spans[i + 1..] {
            let overlap = x.start < y.end && y.start < x.end;
            assert!(
                !(overlap && x.key == y.key),
                "two runs of key {} overlap: {x:?} {y:?}",
                x.key
            );
            across_keys |= overlap;
        }
    }
    assert!(across_keys, "jobs of different keys should run at the same time");
    for (stop, handle) in workers {
        let _ = stop.send(());
        handle.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_lock_key_holds_up_neither_slots_nor_other_jobs() {
    let env = Env::new("lock-key-parking");
    let producer = env.producer_for("q", &zkq_tests::small_queue()).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, u32)>();
    let handler = {
        let release = release.clone();
        move |ctx: zkq::JobContext| {
            let (release, tx) = (release.clone(), tx.clone());
            async move {
                let name = String::from_utf8_lossy(&ctx.job.payload).into_owned();
                let _ = tx.send((name.clone(), ctx.job.attempt));
                if name == "holder" {
                    release.notified().await;
                }
                zkq::Outcome::Done
            }
        }
    };
    // Two slots: the holder takes one; jobs waiting for its key must not take the other.
    let worker = env
        .worker(env.worker_config("q", 2))
        .handle("j", handler)
        .unwrap();
    let (stop, handle) = zkq_tests::spawn_worker(worker);
    producer
        .enqueue("q", zkq::NewJob::new("j", "holder").lock_key("k"))
        .await
        .unwrap();
    assert_eq!(within(rx.recv()).await.unwrap().0, "holder");
    let keyed: Vec<_> = (1..=3)
        .map(|n| zkq::NewJob::new("j", format!("k{n}")).lock_key("k"))
        .collect();
    producer.enqueue_batch("q", keyed).await.unwrap();
    let free: Vec<_> = (1..=4)
        .map(|n| zkq::NewJob::new("j", format!("free{n}")))
        .collect();
    producer.enqueue_batch("q", free).await.unwrap();
    let mut early = Vec::new();
    for _ in 0..4 {
        early.push(within(rx.recv()).await.unwrap().0);
    }
    assert_eq!(
        early,
        ["free1", "free2", "free3", "free4"],
        "only unkeyed jobs run while k is held"
    );
    release.notify_one();
    let mut late = Vec::new();
    for _ in 0..3 {
        late.push(within(rx.recv()).await.unwrap());
    }
    let expected: Vec<_> = (1..=3).map(|n| (format!("k{n}"), 1)).collect();
    assert_eq!(
        late, expected,
        "the key's jobs run after the holder, in order, on their first attempt"
    );
    let _ = stop.send(());
    let summary = handle.await.unwrap().unwrap();
    assert_eq!(summary.done, 8);
}

/// A guard dropped once its client's session task is gone (its runtime shut down first, as at
/// the end of a test or of a process) must leave the runtime free: its delete fails at once,
/// and retrying it without waiting kept a worker thread busy forever, so that the runtime could
/// never shut down.
#[test]
fn a_guard_dropped_after_its_client_stopped_leaves_the_runtime_free() {
    let env = Env::new("lock-drop-after-stop");
    let runtime = |threads| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    };
    // The client's session task runs on a runtime of its own.
    let client_runtime = runtime(1);
    let client = client_runtime.block_on(env.client());
    let work = runtime(1);
    let guard = work.block_on(lock(&env, &client, "k").acquire()).unwrap();
    client_runtime.shutdown_timeout(Duration::from_secs(1));

    let (free, freed) = std::sync::mpsc::channel();
    work.spawn(async move {
        drop(guard);
        tokio::task::yield_now().await;
        tokio::spawn(async move {
            let _ = free.send(());
        });
    });
    let result = freed.recv_timeout(Duration::from_secs(5));
    work.shutdown_background();
    assert!(
        result.is_ok(),
        "the dropped guard kept the only worker thread busy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_the_callers_own_that_it_never_heard_of_does_not_hold_the_key() {
    // A create whose reply was lost with the connection can commit unseen: the caller looks for
    // its node by id, misses it (the member it reconnected to had not applied it yet), and
    // creates another. The first one, ahead in line, then held the key for as long as the
    // session lived, and every job of that key waited (a chaos run left 69 jobs so).
    let env = Env::new("lock-ghost");
    let client = env.client().await;
    let layout = Layout::new(&env.root).unwrap();
    // The key's directory, made by a first holder.
    drop(lock(&env, &client, "k").acquire().await.unwrap());
    let id = "0123456789abcdef0123456789abcdef";
    let ghost = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    client
        .create(&format!("{}/l-{id}-", layout.lock("k")), b"test", &ghost)
        .await
        .unwrap();

    let guard = lock(&env, &client, "k")
        .with_node_id(id)
        .try_acquire()
        .await
        .unwrap();
    assert!(
        guard.is_some(),
        "its own unknown node ahead in line kept the lock from it"
    );
    drop(guard);
    // Let go: another session takes the key, and no node of the first caller is left.
    let other = env.client().await;
    within(async {
        while lock(&env, &other, "k").try_acquire().await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let left = client.list_children(&layout.lock("k")).await.unwrap_or_default();
    assert!(
        left.iter().all(|n| !n.contains(id)),
        "nodes of the first caller left: {left:?}"
    );
}
