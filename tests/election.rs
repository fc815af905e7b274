//! Leader election: one leader, no herd, epochs that fence deposed leaders.

use std::time::Duration;

use zkq::zookeeper_client as zk;
use zkq::{Election, Leadership};
use zkq_tests::{within, Env};

async fn candidates(env: &Env, n: usize) -> Vec<(zk::Client, Election)> {
    let mut out = Vec::new();
    for i in 0..n {
        let client = env.client().await;
        let election = Election::new(client.clone(), format!("{}/scheduler", env.root), format!("c{i}"));
        out.push((client, election));
    }
    out
}

/// Starts campaigns one after another, so the line is in index order.
async fn line_up(
    env: &Env,
    elections: &[(zk::Client, Election)],
) -> Vec<tokio::task::JoinHandle<zkq::Result<Leadership>>> {
    let client = env.client().await;
    let dir = format!("{}/scheduler/candidates", env.root);
    let mut campaigns = Vec::new();
    for (i, (_, e)) in elections.iter().enumerate() {
        let e = e.clone();
        campaigns.push(tokio::spawn(async move { e.campaign().await }));
        within(async {
            loop {
                match client.get_and_watch_children(&dir).await {
                    Ok((children, _, _)) if children.len() > i => return,
                    Ok((_, _, watcher)) => {
                        watcher.changed().await;
                    }
                    // The directory is created by the first campaign.
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        })
        .await;
    }
    campaigns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_wakes_only_its_successor() {
    let ensemble = zkq_testkit::Ensemble::quorum(3).unwrap();
    let env = Env::on(&ensemble, "no-herd");
    let elections = candidates(&env, 5).await;
    let mut campaigns = line_up(&env, &elections).await;
    let first = within(campaigns.remove(0)).await.unwrap().unwrap();
    let first_epoch = first.epoch();
    for c in &campaigns {
        assert!(!c.is_finished(), "only one leader");
    }

    // The leader resigns: exactly one other candidate is woken, and it leads.
    first.resign().await;
    let second = within(campaigns.remove(0)).await.unwrap().unwrap();
    assert!(second.epoch() > first_epoch, "{} > {first_epoch}", second.epoch());
    let wakeups: Vec<u64> = elections.iter().map(|(_, e)| e.wakeups()).collect();
    assert_eq!(wakeups, vec![0, 1, 0, 0, 0]);

    // A candidate in the middle leaves: only the one behind it wakes, and it does not lead.
    campaigns.remove(0).abort();
    elections[2].1.withdraw().await.unwrap();
    within(async {
        while elections[3].1.wakeups() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        elections.iter().map(|(_, e)| e.wakeups()).collect::<Vec<_>>(),
        vec![0, 1, 0, 1, 0]
    );
    assert!(!campaigns[0].is_finished() && !campaigns[1].is_finished());
    second.resign().await;
    let third = within(campaigns.remove(0)).await.unwrap().unwrap();
    // Candidate 3 is woken once more, unless the leader was already gone when it re-armed its
    // watch after the first wake-up; the last candidate is never woken.
    let wakeups: Vec<u64> = elections.iter().map(|(_, e)| e.wakeups()).collect();
    assert!(
        wakeups == [0, 1, 0, 2, 0] || wakeups == [0, 1, 0, 1, 0],
        "{wakeups:?}"
    );
    third.resign().await;
    within(campaigns.remove(0)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_epoch_fails_its_guarded_writes() {
    let env = Env::new("fencing");
    let elections = candidates(&env, 2).await;
    let mut campaigns = line_up(&env, &elections).await;
    let old = within(campaigns.remove(0)).await.unwrap().unwrap();
    let (old_epoch, epoch_path) = (old.epoch(), old.epoch_path().to_string());
    let writer = env.client().await;
    let guarded = |epoch: i32, name: &str| {
        let mut multi = writer.new_multi_writer();
        multi.add_check_version(&epoch_path, epoch).unwrap();
        let path = format!("{}/{name}", env.root);
        multi
            .add_create(
                &path,
                b"",
                &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
            )
            .unwrap();
        multi.commit()
    };
    guarded(old_epoch, "by-old-while-leader")
        .await
        .expect("the leader's guarded write lands");

    // The old leader's session is closed (it crashed): the standby takes over in a new epoch.
    drop(old);
    drop(elections);
    let new = within(campaigns.remove(0)).await.unwrap().unwrap();
    assert!(new.epoch() > old_epoch);
    let err = guarded(old_epoch, "by-old-after").await.unwrap_err();
    assert_eq!(zk::Error::from(err), zk::Error::BadVersion);
    guarded(new.epoch(), "by-new")
        .await
        .expect("the new leader's guarded write lands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_lost_as_soon_as_the_connection_is_in_doubt() {
    // Its own server, so that freezing it affects nobody else.
    let server = zkq_testkit::Ensemble::standalone().unwrap();
    let zk = zkq::ZkConfig {
        address: server.connect_string(),
        session_timeout: Duration::from_secs(4),
        connect_timeout: Duration::from_secs(10),
        ..zkq::ZkConfig::default()
    };
    let client = zk.connect().await.unwrap();
    let leadership = within(Election::new(client, "/scheduler", "only").campaign())
        .await
        .unwrap();
    assert!(!leadership.lost().is_cancelled());
    let frozen_at = std::time::Instant::now();
    server.member(0).freeze();
    within(leadership.lost().cancelled()).await;
    let noticed = frozen_at.elapsed();
    server.member(0).thaw();
    assert!(
        noticed < Duration::from_secs(4),
        "lost after {noticed:?}, not before the session could expire"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_connection_returns_keeps_its_place_in_line() {
    let server = zkq_testkit::Ensemble::standalone().unwrap();
    let zk = zkq::ZkConfig {
        address: server.connect_string(),
        session_timeout: Duration::from_secs(6),
        connect_timeout: Duration::from_secs(10),
        ..zkq::ZkConfig::default()
    };
    let (a, b) = (zk.connect().await.unwrap(), zk.connect().await.unwrap());
    let leader = Election::new(a.clone(), "/scheduler", "a");
    let standby = Election::new(b.clone(), "/scheduler", "b");
    let first = within(leader.campaign()).await.unwrap();
    let waiting = tokio::spawn(async move { standby.campaign().await });

    // Both lose their connection for a moment, well within the session timeout.
    server.member(0).freeze();
    within(first.lost().cancelled()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.member(0).thaw();

    // The same session campaigns again: it takes up its own node, still first in line, and
    // leads in a new epoch; the standby stays a standby and no node is left behind.
    let again = within(leader.campaign()).await.unwrap();
    assert!(again.epoch() > first.epoch());
    if waiting.is_finished() {
        panic!(
            "the standby must not lead while the leader's session lives: {:?}",
            waiting.await.unwrap().map(|l| l.epoch())
        );
    }
    let (line, _) = a.get_children("/scheduler/candidates").await.unwrap();
    assert_eq!(line.len(), 2, "{line:?}");
    let resigned_epoch = again.epoch();
    again.resign().await;
    let standby_leads = within(waiting).await.unwrap().unwrap();
    assert!(standby_leads.epoch() > resigned_epoch);
}

/// One term of leadership as its holder saw it.
#[derive(Debug, Clone)]
struct Term {
    candidate: usize,
    epoch: i32,
    start: std::time::Instant,
    end: Option<std::time::Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_zookeeper_leader_does_not_create_a_second_leader() {
    use std::sync::{Arc, Mutex};
    let ensemble = zkq_testkit::Ensemble::quorum(3).unwrap();
    let zk = zkq::ZkConfig {
        address: ensemble.connect_string(),
        session_timeout: Duration::from_secs(4),
        connect_timeout: Duration::from_secs(30),
        ..zkq::ZkConfig::default()
    };
    let terms: Arc<Mutex<Vec<Term>>> = Arc::default();
    let mut candidates = Vec::new();
    for candidate in 0..3 {
        let (zk, terms) = (zk.clone(), terms.clone());
        candidates.push(tokio::spawn(async move {
            loop {
                let Ok(client) = zk.connect().await else { continue };
                let election = Election::new(client, "/scheduler", format!("c{candidate}"));
                loop {
                    let Ok(leadership) = election.campaign().await else {
                        break;
                    };
                    let index = {
                        let mut terms = terms.lock().unwrap();
                        terms.push(Term {
                            candidate,
                            epoch: leadership.epoch(),
                            start: std::time::Instant::now(),
                            end: None,
                        });
                        terms.len() - 1
                    };
                    leadership.lost().cancelled().await;
                    terms.lock().unwrap()[index].end = Some(std::time::Instant::now());
                }
            }
        }));
    }
    let first_term = || async {
        within(async {
            while terms.lock().unwrap().iter().all(|t| t.end.is_some()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    };
    first_term().await;
    for _ in 0..2 {
        let zk_leader = ensemble.leader().expect("the ensemble has a leader");
        ensemble.member(zk_leader).kill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensemble.member(zk_leader).restart().unwrap();
        ensemble.wait_ready(Duration::from_secs(30)).unwrap();
        // A leader again, after the ensemble recovered.
        first_term().await;
    }
    for c in &candidates {
        c.abort();
    }
    let mut terms = terms.lock().unwrap().clone();
    terms.sort_by_key(|t| t.start);
    let origin = terms[0].start;
    for t in &terms {
        eprintln!(
            "c{} led in epoch {} from {:?} to {:?}",
            t.candidate,
            t.epoch,
            t.start - origin,
            t.end.map(|e| e - origin)
        );
    }
    assert!(
        terms.len() >= 2,
        "leadership was in doubt at least once: {terms:?}"
    );
    for pair in terms.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let a_end = a.end.expect("an earlier term ended before a later one began");
        assert!(a_end <= b.start, "two leaders at once: {a:?} and {b:?}");
        assert!(a.epoch < b.epoch, "epochs grow: {a:?} then {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_node_of_its_own_session_it_never_saw_does_not_keep_it_waiting() {
    // A create whose reply was lost with the connection can commit after the candidate looked
    // for its session's nodes: it makes another, behind the first, and would wait on its own
    // node for as long as the session lives, with nobody leading (the lock had the same race).
    let env = Env::new("election-unseen");
    let client = env.client().await;
    let dir = format!("{}/scheduler", env.root);
    // The election's folders, made by a first term.
    let first = Election::new(client.clone(), dir.clone(), "a");
    drop(within(first.campaign()).await.unwrap());
    first.withdraw().await.unwrap();
    let unseen = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let (_, seq) = client
        .create(&format!("{dir}/candidates/c-"), b"a", &unseen)
        .await
        .unwrap();
    let unseen = format!("c-{seq}");

    let election = Election::new(client.clone(), dir.clone(), "a").not_seeing(&unseen);
    let leadership = tokio::time::timeout(Duration::from_secs(10), election.campaign())
        .await
        .expect("waited on a candidate node of its own session")
        .unwrap();
    assert!(!leadership.lost().is_cancelled());
    let line = client.list_children(&format!("{dir}/candidates")).await.unwrap();
    assert!(
        !line.contains(&unseen),
        "its unseen node is still in line: {line:?}"
    );
}
