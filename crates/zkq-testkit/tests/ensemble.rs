use std::time::Duration;

use zkq_testkit::server::{four_letter, Mode};
use zkq_testkit::Ensemble;

#[test]
fn standalone_server_serves_and_stops_on_kill() {
    let zk = Ensemble::standalone().expect("start");
    let member = zk.member(0);
    assert_eq!(member.mode(), Some(Mode::Standalone));
    assert_eq!(four_letter(member.client_port, "ruok").expect("ruok"), "imok");
    member.kill();
    assert!(!member.is_running());
    assert_eq!(member.mode(), None);
    member.start().expect("restart");
    zk.wait_ready(Duration::from_secs(30)).expect("ready again");
    assert_eq!(member.mode(), Some(Mode::Standalone));
}

#[test]
fn quorum_elects_one_leader_and_reelects_after_leader_kill() {
    let zk = Ensemble::quorum(3).expect("start quorum");
    let modes: Vec<Option<Mode>> = zk.members().iter().map(|m| m.mode()).collect();
    assert_eq!(
        modes.iter().filter(|m| **m == Some(Mode::Leader)).count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| **m == Some(Mode::Follower)).count(),
        2,
        "{modes:?}"
    );
    let old = zk.leader().expect("a leader");
    zk.member(old).kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let new = loop {
        if let Some(l) = zk.leader() {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "no new leader");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(new, old);
}

#[test]
fn frozen_member_answers_nothing_until_thawed() {
    let zk = Ensemble::standalone().expect("start");
    let member = zk.member(0);
    member.freeze();
    assert_eq!(member.mode(), None, "a frozen server must not answer");
    member.thaw();
    zk.wait_ready(Duration::from_secs(10)).expect("serves after thaw");
    assert_eq!(member.mode(), Some(Mode::Standalone));
}
