//! Periodic jobs: a cron schedule (with seconds) that enqueues a job per tick, exactly once
//! across scheduler failovers.
//!
//! A schedule lives in `<root>/cron/<name>`: the cron expression, the job to enqueue, and the
//! last tick fired. The elected scheduler fires a tick in one `multi`: `check(epoch)` +
//! `set_data(schedule, last tick = T, expected version)` + `create(job)`. The job exists if and
//! only if the schedule says tick T was fired, and two schedulers can never both advance the
//! same version, so no tick fires twice, whoever leads and however often leadership changes.
//! Ticks caught up together share a `multi` as far as one request holds them with the
//! schedule record (which holds the payload too); a payload too large for that is refused when
//! the schedule is written.
//!
//! # Expressions
//! Six or seven fields, seconds first, evaluated in UTC: `sec min hour day-of-month month
//! day-of-week [year]`. `*/5 * * * * *` fires every five seconds; `0 30 9 * * Mon-Fri` at 09:30
//! on weekdays.
//!
//! # Catch-up after a gap
//! While no scheduler leads (a failover takes up to the session timeout), ticks pass unfired.
//! The new leader looks at the ticks between the last one fired and now:
//! - [`CatchUp::Latest`] (the default) fires only the most recent of them, once: a job that
//!   reports on "now" runs once after the gap, not once per missed tick;
//! - [`CatchUp::All`] fires every missed tick, oldest first (at most [`MAX_CATCH_UP`] per pass),
//!   for jobs where each tick matters (billing periods, partitions of a day).
//!
//! A new schedule fires its first tick after it was created. Each job carries the headers
//! `zkq-cron` (the schedule's name) and `zkq-cron-tick` (the tick, Unix milliseconds), and an
//! id derived from both, so the same tick always names the same job.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tracing::info;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::job::{now_ms, Job, JobId, NewJob};
use crate::limits::MAX_REQUEST_BYTES;
use crate::producer::Producer;
use crate::store::codec::{self, Record};
use crate::store::layout;
use crate::store::znode;

/// Most missed ticks fired in one pass under [`CatchUp::All`].
pub const MAX_CATCH_UP: usize = 100;

/// Which missed ticks fire after a gap with no scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Only the most recent missed tick.
    #[default]
    Latest,
    /// Every missed tick, oldest first.
    All,
}

impl FromStr for CatchUp {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "latest" => Ok(CatchUp::Latest),
            "all" => Ok(CatchUp::All),
            _ => Err(format!("expected latest or all, got {s:?}")),
        }
    }
}

/// A periodic job: what to enqueue, where, and when. Stored in `<root>/cron/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodicJob {
    pub v: u8,
    pub queue: String,
    /// The cron expression, seconds first, in UTC.
    pub cron: String,
    pub kind: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub priority: u8,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub lock_key: Option<String>,
    #[serde(default)]
    pub partition_key: Option<String>,
    pub catch_up: CatchUp,
    pub created_at_ms: u64,
    /// The last tick fired (Unix ms), set by the scheduler.
    pub last_tick_ms: Option<u64>,
}

impl Record for PeriodicJob {
    const WHAT: &'static str = "periodic job";
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.v
    }
}

impl PeriodicJob {
    /// Enqueues a copy of `job` into `queue` at every tick of `cron` (each copy with an id of
    /// its own).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an expression that does not parse; [`Error::InvalidName`]
    /// for a bad queue name or kind; [`Error::InvalidJob`] for a job with a delay (the schedule
    /// says when it runs).
    pub fn new(queue: impl Into<String>, cron: impl Into<String>, job: NewJob) -> Result<PeriodicJob> {
        if job.run_at_ms.is_some() {
            return Err(Error::InvalidJob(
                "a periodic job cannot have a delay: its schedule says when it runs".into(),
            ));
        }
        let periodic = PeriodicJob {
            v: Self::VERSION,
            queue: queue.into(),
            cron: cron.into(),
            kind: job.kind,
            payload: job.payload,
            priority: job.priority,
            max_attempts: job.max_attempts,
            timeout_ms: job.timeout.map(|t| t.as_millis() as u64),
            headers: job.headers,
            lock_key: job.lock_key,
            partition_key: job.partition_key,
            catch_up: CatchUp::default(),
            created_at_ms: now_ms(),
            last_tick_ms: None,
        };
        layout::validate_queue_name(&periodic.queue)?;
        layout::validate_kind(&periodic.kind)?;
        parse(&periodic.cron)?;
        Ok(periodic)
    }

    pub fn catch_up(mut self, catch_up: CatchUp) -> PeriodicJob {
        self.catch_up = catch_up;
        self
    }

    /// The ticks to fire now (Unix ms, oldest first), per the catch-up policy.
    pub fn due_ticks(&self, now_ms: u64) -> Result<Vec<u64>> {
        let schedule = parse(&self.cron)?;
        let from = to_datetime(self.last_tick_ms.unwrap_or(self.created_at_ms));
        let now = to_datetime(now_ms);
        Ok(match self.catch_up {
            CatchUp::Latest => {
                // The latest tick at or before now, if it is after the last one fired.
                let latest = schedule
                    .after(&(now + chrono::Duration::milliseconds(1)))
                    .next_back()
                    .filter(|t| *t > from && *t <= now);
                latest.map(|t| t.timestamp_millis() as u64).into_iter().collect()
            }
            CatchUp::All => schedule
                .after(&from)
                .take_while(|t| *t <= now)
                .take(MAX_CATCH_UP)
                .map(|t| t.timestamp_millis() as u64)
                .collect(),
        })
    }

    /// The first tick after the last one fired (or after `now_ms` if that is later).
    pub fn next_tick(&self, now_ms: u64) -> Result<Option<u64>> {
        let schedule = parse(&self.cron)?;
        let from = self.last_tick_ms.unwrap_or(self.created_at_ms).max(now_ms);
        Ok(schedule
            .after(&to_datetime(from))
            .next()
            .map(|t| t.timestamp_millis() as u64))
    }

    /// The job for `tick` of schedule `name`.
    pub(crate) fn job_for(&self, name: &str, tick: u64) -> NewJob {
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("zkq-cron/{name}/{tick}").as_bytes(),
        );
        let mut job = NewJob::new(self.kind.clone(), self.payload.clone())
            .with_id(JobId(id))
            .priority(self.priority)
            .header("zkq-cron", name)
            .header("zkq-cron-tick", tick.to_string());
        if let Some(attempts) = self.max_attempts {
            job = job.max_attempts(attempts);
        }
        if let Some(ms) = self.timeout_ms {
            job = job.timeout(Duration::from_millis(ms));
        }
        if let Some(key) = &self.lock_key {
            job = job.lock_key(key.clone());
        }
        if let Some(key) = &self.partition_key {
            job = job.partition_key(key.clone());
        }
        for (k, v) in &self.headers {
            job = job.header(k.clone(), v.clone());
        }
        job
    }
}

fn parse(expression: &str) -> Result<cron::Schedule> {
    cron::Schedule::from_str(expression).map_err(|e| {
        Error::InvalidConfig(format!(
            "bad cron expression {expression:?}: {e} (six or seven fields, seconds first: \
             'sec min hour day-of-month month day-of-week [year]')"
        ))
    })
}

fn to_datetime(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms as i64).single().unwrap_or_default()
}

impl Producer {
    /// Creates or replaces the periodic job `name`. A replaced schedule keeps its last fired
    /// tick, so changing a schedule never re-fires a tick.
    ///
    /// # Errors
    /// Bad names or a job the queue would refuse (payload size, priority); a payload too large
    /// to fire: a tick's job and the schedule, which holds the payload too, must fit one request.
    pub async fn schedule(&self, name: &str, job: PeriodicJob) -> Result<()> {
        layout::validate_name("schedule name", name)?;
        parse(&job.cron)?;
        let config = self.config(&job.queue).await?;
        let (sample, _) = job.job_for(name, u64::MAX).into_job(
            config.priorities,
            config.max_attempts,
            config.max_payload_bytes as usize,
        )?;
        tick_batches(self, &job, vec![(u64::MAX, sample)])?;
        znode::ensure_path(self.client(), self.layout().acl(), &self.layout().schedules()).await?;
        let path = self.layout().schedule(name);
        loop {
            let mut record = job.clone();
            let (op, previous) = match self.client().get_data(&path).await {
                Ok((data, stat)) => {
                    let old = codec::decode::<PeriodicJob>(&path, &data).ok();
                    (Some(stat.version), old)
                }
                Err(zk::Error::NoNode) => (None, None),
                Err(e) => return Err(Error::zk("read schedule", path, e)),
            };
            if let Some(old) = previous {
                record.created_at_ms = old.created_at_ms;
                record.last_tick_ms = old.last_tick_ms;
            }
            let data = codec::encode(&record)?;
            let result = match op {
                Some(version) => self
                    .client()
                    .set_data(&path, &data, Some(version))
                    .await
                    .map(drop),
                None => self
                    .client()
                    .create(
                        &path,
                        &data,
                        &self.layout().acl().options(zk::CreateMode::Persistent),
                    )
                    .await
                    .map(drop),
            };
            match result {
                Ok(()) => {
                    info!(name, cron = %record.cron, queue = %record.queue, "periodic job scheduled");
                    return Ok(());
                }
                // Fired or edited meanwhile: read it again.
                Err(zk::Error::BadVersion | zk::Error::NodeExists) => continue,
                Err(e) => {
                    let what = if op.is_some() {
                        "write schedule"
                    } else {
                        "create schedule"
                    };
                    return Err(Error::zk(what, path, e));
                }
            }
        }
    }

    /// Removes the periodic job `name`; returns whether it existed.
    pub async fn unschedule(&self, name: &str) -> Result<bool> {
        layout::validate_name("schedule name", name)?;
        let path = self.layout().schedule(name);
        match self.client().delete(&path, None).await {
            Ok(()) => Ok(true),
            Err(zk::Error::NoNode) => Ok(false),
            Err(e) => Err(Error::zk("delete schedule", path, e)),
        }
    }

    /// Every periodic job, by name.
    pub async fn schedules(&self) -> Result<Vec<(String, PeriodicJob)>> {
        Ok(read_all(self.client(), &self.layout().schedules())
            .await?
            .into_iter()
            .filter_map(|(name, record, _)| record.ok().map(|r| (name, r)))
            .collect())
    }
}

/// Every schedule under `dir`: name, record (or why it cannot be read), version.
pub(crate) async fn read_all(
    client: &zk::Client,
    dir: &str,
) -> Result<Vec<(String, Result<PeriodicJob>, i32)>> {
    let mut names = match client.list_children(dir).await {
        Ok(n) => n,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(Error::zk("list schedules", dir, e)),
    };
    names.sort();
    let paths: Vec<String> = names.iter().map(|n| format!("{dir}/{n}")).collect();
    let results = znode::get_many(client, "read schedule", &paths).await?;
    let out = names
        .into_iter()
        .zip(paths)
        .zip(results)
        .filter_map(|((name, path), r)| {
            r.map(|(data, stat)| (name, codec::decode(&path, &data), stat.version))
        })
        .collect();
    Ok(out)
}

/// Room in one request for a schedule's `multi` besides its jobs: the fence, the op headers.
const FIRE_OVERHEAD_BYTES: usize = 1024;

/// Splits the jobs of due ticks into batches that each fit one request together with the
/// schedule record (which holds the job's template, payload included).
///
/// # Errors
/// [`Error::InvalidJob`] when not even one job fits with its schedule.
pub(crate) fn tick_batches(
    producer: &Producer,
    record: &PeriodicJob,
    jobs: Vec<(u64, Job)>,
) -> Result<Vec<Vec<(u64, Job)>>> {
    let mut sized = record.clone();
    sized.last_tick_ms = Some(u64::MAX);
    let room = MAX_REQUEST_BYTES
        .saturating_sub(codec::encode(&sized)?.len() + producer.layout().schedules().len() + 64)
        .saturating_sub(FIRE_OVERHEAD_BYTES);
    let mut batches: Vec<Vec<(u64, Job)>> = Vec::new();
    let mut used = 0;
    for (tick, job) in jobs {
        let size = producer.placement_bytes(&record.queue, codec::encode(&job)?.len());
        if size > room {
            return Err(Error::InvalidJob(format!(
                "a periodic job of {size} bytes does not fit one request together with its schedule \
                 ({MAX_REQUEST_BYTES} bytes for both, and the schedule holds the payload too): use a \
                 smaller payload"
            )));
        }
        match batches.last_mut() {
            Some(batch) if used + size <= room => batch.push((tick, job)),
            _ => {
                batches.push(vec![(tick, job)]);
                used = 0;
            }
        }
        used += size;
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_second(created: u64, last: Option<u64>, catch_up: CatchUp) -> PeriodicJob {
        let mut job = PeriodicJob::new("q", "* * * * * *", NewJob::new("tick", b"".to_vec()))
            .unwrap()
            .catch_up(catch_up);
        job.created_at_ms = created;
        job.last_tick_ms = last;
        job
    }

    #[test]
    fn nothing_is_due_before_the_first_tick_after_creation() {
        let job = every_second(10_500, None, CatchUp::Latest);
        assert_eq!(job.due_ticks(10_900).unwrap(), Vec::<u64>::new());
        assert_eq!(job.due_ticks(11_000).unwrap(), vec![11_000]);
        assert_eq!(job.next_tick(10_900).unwrap(), Some(11_000));
    }

    #[test]
    fn a_fired_tick_is_not_due_again() {
        let job = every_second(0, Some(11_000), CatchUp::Latest);
        assert_eq!(job.due_ticks(11_999).unwrap(), Vec::<u64>::new());
        assert_eq!(job.due_ticks(12_000).unwrap(), vec![12_000]);
    }

    #[test]
    fn after_a_gap_latest_fires_once_and_all_fires_each_missed_tick() {
        let latest = every_second(0, Some(10_000), CatchUp::Latest);
        assert_eq!(latest.due_ticks(14_500).unwrap(), vec![14_000]);
        let all = every_second(0, Some(10_000), CatchUp::All);
        assert_eq!(
            all.due_ticks(14_500).unwrap(),
            vec![11_000, 12_000, 13_000, 14_000]
        );
    }

    #[test]
    fn catch_up_all_is_bounded_per_pass() {
        let all = every_second(0, Some(0), CatchUp::All);
        assert_eq!(all.due_ticks(1_000_000).unwrap().len(), MAX_CATCH_UP);
    }

    #[test]
    fn bad_expressions_are_refused_with_the_format() {
        let e = PeriodicJob::new("q", "every minute", NewJob::new("k", b"".to_vec())).unwrap_err();
        assert!(e.to_string().contains("seconds first"), "{e}");
    }

    #[test]
    fn a_delayed_template_is_refused() {
        let job = NewJob::new("k", b"".to_vec()).delay(Duration::from_secs(5));
        let e = PeriodicJob::new("q", "* * * * * *", job).unwrap_err();
        assert!(e.to_string().contains("cannot have a delay"), "{e}");
    }

    #[test]
    fn the_same_tick_names_the_same_job() {
        let job = every_second(0, None, CatchUp::Latest);
        assert_eq!(job.job_for("n", 5).id(), job.job_for("n", 5).id());
        assert_ne!(job.job_for("n", 5).id(), job.job_for("n", 6).id());
    }
}
