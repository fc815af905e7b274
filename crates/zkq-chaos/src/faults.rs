//! Faults, injected at random but reproducibly from the seed, each undone after a while:
//! kill -9 of a worker (or of the one leading the scheduler election) or a master, SIGSTOP past
//! the session timeout then SIGCONT, a worker cut off from every ZooKeeper member, and kill and
//! restart of a ZooKeeper follower or of the leader (one member down at a time, so a quorum
//! always survives), and bursts of dropped connections of a worker (it reconnects at once,
//! within its session, and loses the replies of whatever it had in flight).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use zkq_testkit::Ensemble;
use zookeeper_client as zk;

use crate::fleet::{Role, Setup, Slot};
use crate::ledger::now_ns;

/// One fault, for the report and for explaining duplicates.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: &'static str,
    /// The slot (`w2`, `m0`) or ZooKeeper member (`zk1`).
    pub target: String,
    pub at_ns: u128,
    pub end_ns: Option<u128>,
}

enum Undo {
    Restart(usize),
    Thaw(usize),
    Heal(usize),
    RestartMember(usize),
}

struct Pending {
    due: Instant,
    undo: Undo,
    record: usize,
}

pub struct Injector<'a> {
    rng: StdRng,
    slots: &'a mut [Slot],
    ensemble: &'a Ensemble,
    setup: &'a Setup,
    client: zk::Client,
    pending: Vec<Pending>,
    pub records: Vec<FaultRecord>,
}

impl<'a> Injector<'a> {
    pub fn new(
        rng: StdRng,
        slots: &'a mut [Slot],
        ensemble: &'a Ensemble,
        setup: &'a Setup,
        client: zk::Client,
    ) -> Injector<'a> {
        Injector {
            rng,
            slots,
            ensemble,
            setup,
            client,
            pending: Vec::new(),
            records: Vec::new(),
        }
    }

    /// Injects faults every 2 to 6 s until `until`, then undoes every fault still in force.
    pub async fn run(&mut self, until: Instant) {
        let mut next = Instant::now() + self.pause();
        while Instant::now() < until {
            self.undo_due(false);
            if Instant::now() >= next {
                self.inject().await;
                next = Instant::now() + self.pause();
            }
            self.watch_exits();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.undo_due(true);
    }

    fn pause(&mut self) -> Duration {
        Duration::from_millis(self.rng.gen_range(2_000..6_000))
    }

    /// Whether slot `i` has a fault in force.
    fn busy(&self, i: usize) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p.undo, Undo::Restart(j) | Undo::Thaw(j) | Undo::Heal(j) if j == i))
    }

    /// A slot that has no fault in force.
    fn healthy(&mut self, role: Role) -> Option<usize> {
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].role == role && !self.busy(*i))
            .collect();
        // Keep one process of each role unharmed, so the fleet can make progress.
        if free.len() <= 1 {
            return None;
        }
        Some(free[self.rng.gen_range(0..free.len())])
    }

    fn member_down(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p.undo, Undo::RestartMember(_)))
    }

    fn session_multiple(&mut self) -> Duration {
        self.setup.session_timeout.mul_f64(self.rng.gen_range(1.5..2.5))
    }

    /// How long a killed process stays down.
    fn downtime(&mut self) -> Duration {
        Duration::from_millis(self.rng.gen_range(300..2_000))
    }

    async fn inject(&mut self) {
        let roll = self.rng.gen_range(0..115);
        let (kind, undo, after) = match roll {
            100.. => {
                let Some(i) = self.healthy(Role::Worker) else {
                    return;
                };
                self.cut_burst(i).await;
                return;
            }
            0..=14 => {
                let Some(i) = self.healthy(Role::Worker) else {
                    return;
                };
                self.slots[i].kill();
                ("kill -9 worker", Undo::Restart(i), self.downtime())
            }
            15..=24 => {
                let Some(i) = self.scheduler_leader().await else {
                    return;
                };
                self.slots[i].kill();
                ("kill -9 scheduler leader", Undo::Restart(i), self.downtime())
            }
            25..=39 => {
                let Some(i) = self.healthy(Role::Worker) else {
                    return;
                };
                self.slots[i].signal(libc::SIGSTOP);
                ("SIGSTOP worker", Undo::Thaw(i), self.session_multiple())
            }
            40..=54 => {
                let Some(i) = self.healthy(Role::Worker) else {
                    return;
                };
                self.slots[i].partition();
                ("partition worker", Undo::Heal(i), self.session_multiple())
            }
            55..=64 => {
                let Some(i) = self.healthy(Role::Master) else {
                    return;
                };
                self.slots[i].kill();
                ("kill -9 master", Undo::Restart(i), self.downtime())
            }
            65..=74 => {
                let Some(i) = self.healthy(Role::Master) else {
                    return;
                };
                self.slots[i].signal(libc::SIGSTOP);
                ("SIGSTOP master", Undo::Thaw(i), self.session_multiple())
            }
            _ => {
                if self.member_down() {
                    return;
                }
                let leader = self.ensemble.leader();
                let want_leader = roll >= 88;
                let candidates: Vec<usize> = (0..self.ensemble.members().len())
                    .filter(|m| (Some(*m) == leader) == want_leader)
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let m = candidates[self.rng.gen_range(0..candidates.len())];
                self.ensemble.member(m).kill();
                let kind = if want_leader {
                    "kill -9 ZooKeeper leader"
                } else {
                    "kill -9 ZooKeeper follower"
                };
                let after = Duration::from_millis(self.rng.gen_range(1_000..4_000));
                (kind, Undo::RestartMember(m), after)
            }
        };
        let (target, label) = match undo {
            Undo::Restart(i) | Undo::Thaw(i) | Undo::Heal(i) => {
                let slot = &self.slots[i];
                (slot.name(), format!("{} ({})", slot.name(), slot.id()))
            }
            Undo::RestartMember(m) => (format!("zk{m}"), format!("zk{m}")),
        };
        self.records.push(FaultRecord {
            kind,
            target,
            at_ns: now_ns(),
            end_ns: None,
        });
        eprintln!("chaos: fault {}: {kind} {label}", self.records.len());
        self.pending.push(Pending {
            due: Instant::now() + after,
            undo,
            record: self.records.len() - 1,
        });
    }

    /// Drops worker `i`'s connections to ZooKeeper 3 to 8 times, 100 to 600 ms apart: each time
    /// it reconnects at once, within its session, and whatever it had in flight (claims, acks,
    /// retries) loses its reply.
    async fn cut_burst(&mut self, i: usize) {
        let cuts = self.rng.gen_range(3..=8);
        self.records.push(FaultRecord {
            kind: "connection cuts",
            target: self.slots[i].name(),
            at_ns: now_ns(),
            end_ns: None,
        });
        eprintln!(
            "chaos: fault {}: connection cuts {} ({}) x{cuts}",
            self.records.len(),
            self.slots[i].name(),
            self.slots[i].id()
        );
        for _ in 0..cuts {
            self.slots[i].cut();
            let pause = Duration::from_millis(self.rng.gen_range(100..600));
            tokio::time::sleep(pause).await;
        }
        if let Some(record) = self.records.last_mut() {
            record.end_ns = Some(now_ns());
        }
    }

    /// The worker slot whose process leads the scheduler election, if it can be told.
    async fn scheduler_leader(&mut self) -> Option<usize> {
        let dir = format!("{}/scheduler/candidates", self.setup.root);
        let mut children = self.client.list_children(&dir).await.ok()?;
        children.sort_by_key(|c| c.rsplit('-').next().and_then(|s| s.parse::<i64>().ok()));
        let first = children.first()?;
        let (data, _) = self.client.get_data(&format!("{dir}/{first}")).await.ok()?;
        let id = String::from_utf8_lossy(&data).into_owned();
        let i = self.slots.iter().position(|s| s.id() == id)?;
        (!self.busy(i)).then_some(i)
    }

    /// Undoes the faults that are due, or all of them.
    fn undo_due(&mut self, all: bool) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| all || p.due <= now);
        self.pending = later;
        for p in due {
            match p.undo {
                Undo::Restart(i) => {
                    if let Err(e) = self.slots[i].start(self.setup) {
                        eprintln!("chaos: cannot restart {}: {e}", self.slots[i].name());
                    }
                }
                Undo::Thaw(i) => self.slots[i].signal(libc::SIGCONT),
                Undo::Heal(i) => self.slots[i].heal(),
                Undo::RestartMember(m) => {
                    if let Err(e) = self.ensemble.member(m).restart() {
                        eprintln!("chaos: cannot restart ZooKeeper member {m}: {e}");
                    }
                }
            }
            self.records[p.record].end_ns = Some(now_ns());
        }
    }

    /// A process that exited on its own is a finding: report it and start it again.
    fn watch_exits(&mut self) {
        for slot in self.slots.iter_mut() {
            if let Some(status) = slot.exited() {
                eprintln!("chaos: {} exited on its own ({status}); restarting it", slot.id());
                if let Err(e) = slot.start(self.setup) {
                    eprintln!("chaos: cannot restart {}: {e}", slot.name());
                }
            }
        }
    }
}
