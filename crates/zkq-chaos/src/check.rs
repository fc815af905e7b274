//! The checker: reads the ledgers, what the producers were told, and what is left in
//! ZooKeeper, and holds them against the invariants.
//!
//! - **lost** (I1): acknowledged jobs with no successful execution, no dead letter, and no
//!   longer in the queue.
//! - **stuck** (I2): acknowledged jobs still in the queue (ready, claimed or delayed and due)
//!   when the drain window is over. Far-future delayed jobs are expected to stay, and count as
//!   lost if they are gone.
//! - **duplicated**: acknowledged jobs that ran to success more than once. zkq is at-least-once:
//!   an attempt that finished but whose ack did not commit before its claim was gone (worker
//!   killed, frozen or cut off after the command ended; ZooKeeper unreachable with the ack in
//!   flight) runs again. Each one is listed with the fault that explains it.
//! - **exclusion_violations** (I3): pairs of executions that overlap in time, of one job or of
//!   two jobs with the same lock key. An execution is its command's lifetime as the command
//!   itself logged it.
//! - **leader_overlaps** (I4, batch-job master failover): master runs of different runners that
//!   overlap in time.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::faults::FaultRecord;

/// One command execution.
#[derive(Debug, Clone)]
pub struct Execution {
    pub job: String,
    pub attempt: u32,
    pub worker: String,
    pub token: String,
    pub start: u128,
    /// None: no end was logged (counted as running until the end of the run).
    pub end: Option<u128>,
    /// Exit status when it ended on its own; None when stopped.
    pub status: Option<i32>,
}

/// One acknowledged enqueue, as the producer made it.
#[derive(Debug, Clone, Default)]
pub struct Acked {
    pub lock_key: Option<String>,
    /// Delayed far into the future: must still be waiting at the end, and must not hold up
    /// anything else.
    pub far_future: bool,
}

/// What the producers were told: acknowledged job ids.
pub type Acknowledged = HashMap<String, Acked>;

#[derive(Debug, Default)]
pub struct Report {
    pub acknowledged: usize,
    pub completed: usize,
    pub lost: usize,
    pub stuck: usize,
    pub duplicated: usize,
    pub exclusion_violations: usize,
    pub leader_overlaps: usize,
    pub dead: usize,
    pub faults: usize,
    pub far_future: usize,
    /// Jobs left whose record could not be read, and claims without a job.
    pub unaccounted: usize,
    /// Fleet processes that did not exit within their shutdown grace.
    pub hung: usize,
    pub unexplained_duplicates: usize,
    pub executions: usize,
    pub unended: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.stuck == 0
            && self.exclusion_violations == 0
            && self.leader_overlaps == 0
            && self.unaccounted == 0
            && self.hung == 0
            && self.unexplained_duplicates == 0
    }

    pub fn last_line(&self) -> String {
        format!(
            "chaos: acknowledged={} completed={} lost={} stuck={} duplicated={} exclusion_violations={} leader_overlaps={} dead={} faults={} hung={}",
            self.acknowledged,
            self.completed,
            self.lost,
            self.stuck,
            self.duplicated,
            self.exclusion_violations,
            self.leader_overlaps,
            self.dead,
            self.faults,
            self.hung
        )
    }
}

pub fn read_executions(path: &Path) -> Vec<Execution> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    let mut runs: Vec<Execution> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 {
            eprintln!("chaos: torn ledger line {line:?}");
            continue;
        }
        let (job, attempt, worker, token, pid) = (f[1], f[2], f[3], f[4], f[5]);
        let at: u128 = f[6].parse().unwrap_or(0);
        let key = (job.to_string(), pid.to_string());
        match f[0] {
            "S" => {
                open.insert(key, runs.len());
                runs.push(Execution {
                    job: job.to_string(),
                    attempt: attempt.parse().unwrap_or(0),
                    worker: worker.to_string(),
                    token: token.to_string(),
                    start: at,
                    end: None,
                    status: None,
                });
            }
            "E" | "T" => {
                if let Some(i) = open.remove(&key) {
                    runs[i].end = Some(at);
                    runs[i].status = if f[0] == "E" {
                        f.get(7).and_then(|s| s.parse().ok())
                    } else {
                        None
                    };
                }
            }
            _ => eprintln!("chaos: bad ledger line {line:?}"),
        }
    }
    runs
}

/// Overlapping pairs among `runs` (start, end), ends missing counted as never.
fn overlaps(mut runs: Vec<(u128, u128, String)>) -> Vec<(String, String)> {
    runs.sort();
    let mut found = Vec::new();
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            if b.0 >= a.1 {
                break;
            }
            found.push((a.2.clone(), b.2.clone()));
        }
    }
    found
}

pub struct Inputs<'a> {
    pub executions: &'a [Execution],
    pub masters: &'a Path,
    pub acknowledged: &'a Acknowledged,
    pub dead: &'a HashSet<String>,
    /// Ids of the jobs still in the queue after the drain.
    pub in_tree: &'a HashSet<String>,
    pub unaccounted: usize,
    pub hung: usize,
    pub faults: &'a [FaultRecord],
    pub started_ns: u128,
}

pub fn check(inputs: &Inputs<'_>) -> Report {
    let Inputs {
        executions,
        acknowledged,
        faults,
        ..
    } = inputs;
    let never = u128::MAX;
    let mut report = Report {
        acknowledged: acknowledged.len(),
        faults: faults.len(),
        unaccounted: inputs.unaccounted,
        hung: inputs.hung,
        executions: executions.len(),
        unended: executions.iter().filter(|e| e.end.is_none()).count(),
        ..Report::default()
    };
    let mut by_job: HashMap<&str, Vec<&Execution>> = HashMap::new();
    for e in executions.iter() {
        by_job.entry(&e.job).or_default().push(e);
    }
    let describe = |e: &Execution| {
        format!(
            "{} attempt {} on {} (token {}) at +{:.3}s",
            e.job,
            e.attempt,
            e.worker,
            e.token,
            e.start.saturating_sub(inputs.started_ns) as f64 / 1e9
        )
    };

    // Lost, stuck, completed, dead, duplicated.
    for (id, acked) in acknowledged.iter() {
        let runs = by_job.get(id.as_str()).cloned().unwrap_or_default();
        let mut ok: Vec<&Execution> = runs.iter().copied().filter(|e| e.status == Some(0)).collect();
        ok.sort_by_key(|e| e.start);
        let waiting = inputs.in_tree.contains(id);
        if acked.far_future {
            if waiting && runs.is_empty() {
                report.far_future += 1;
            } else {
                report.lost += 1;
                eprintln!(
                    "chaos: LOST far-future job {id}: {} executions, still waiting: {waiting}",
                    runs.len()
                );
            }
            continue;
        }
        if !ok.is_empty() {
            report.completed += 1;
        } else if inputs.dead.contains(id) {
            report.dead += 1;
        } else if waiting {
            report.stuck += 1;
            eprintln!(
                "chaos: STUCK {id}: {} executions, none successful, still in the queue",
                runs.len()
            );
        } else {
            report.lost += 1;
            eprintln!(
                "chaos: LOST {id}: {} executions, none successful, no dead letter, not in the queue",
                runs.len()
            );
        }
        if ok.len() > 1 {
            report.duplicated += 1;
            let (first, again) = (ok[0], ok[1]);
            let cause = explain(first, again, faults);
            if cause.is_none() {
                report.unexplained_duplicates += 1;
            }
            eprintln!(
                "chaos: duplicate {id}: {} succeeded, then {}; cause: {}",
                describe(first),
                describe(again),
                cause.unwrap_or_else(|| "UNEXPLAINED".to_string())
            );
        }
    }

    // Exclusion: per job, and per lock key.
    for (job, runs) in &by_job {
        let spans = runs
            .iter()
            .map(|e| (e.start, e.end.unwrap_or(never), describe(e)))
            .collect();
        for (a, b) in overlaps(spans) {
            report.exclusion_violations += 1;
            eprintln!("chaos: EXCLUSION job {job}: {a} overlaps {b}");
        }
    }
    let mut by_key: HashMap<&str, Vec<(u128, u128, String)>> = HashMap::new();
    for e in executions.iter() {
        if let Some(Some(key)) = acknowledged.get(&e.job).map(|a| &a.lock_key) {
            by_key
                .entry(key)
                .or_default()
                .push((e.start, e.end.unwrap_or(never), describe(e)));
        }
    }
    for (key, spans) in by_key {
        for (a, b) in overlaps(spans) {
            if a.split(' ').next() != b.split(' ').next() {
                report.exclusion_violations += 1;
                eprintln!("chaos: EXCLUSION key {key}: {a} overlaps {b}");
            }
        }
    }

    // Masters.
    let text = std::fs::read_to_string(inputs.masters).unwrap_or_default();
    let mut runs: Vec<(String, String, u128, u128)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, what, token, runner, at] = f[..] else {
            continue;
        };
        let at: u128 = at.parse().unwrap_or(0);
        match what {
            "start" => runs.push((token.to_string(), runner.to_string(), at, never)),
            "end" => {
                if let Some(r) = runs.iter_mut().rev().find(|r| r.0 == token && r.1 == runner) {
                    r.3 = at;
                }
            }
            _ => {}
        }
    }
    let spans = runs
        .iter()
        .map(|(token, runner, start, end)| (*start, *end, format!("{runner} (token {token})")))
        .collect();
    for (a, b) in overlaps(spans) {
        report.leader_overlaps += 1;
        eprintln!("chaos: LEADER OVERLAP: {a} and {b}");
    }
    eprintln!("chaos: {} master runs", runs.len());
    report
}

/// The fault that made `first` (successful) run again as `again`: one that hit the worker of
/// `first`, or ZooKeeper, between the time `first` started and `again` started.
fn explain(first: &Execution, again: &Execution, faults: &[FaultRecord]) -> Option<String> {
    let slot = first.worker.split('-').next().unwrap_or_default();
    faults
        .iter()
        .filter(|f| f.at_ns <= again.start && f.end_ns.unwrap_or(u128::MAX) >= first.start)
        .find(|f| f.target == slot || f.target.starts_with("zk"))
        .map(|f| {
            format!(
                "{} {} (the attempt finished, its ack did not commit before its claim was gone)",
                f.kind, f.target
            )
        })
}
