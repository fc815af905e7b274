//! Dead letters: listed newest first, shown, sent back to work with the same id, or purged.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use tracing::warn;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::job::{now_ms, Job, JobId};
use crate::producer::Placement;
use crate::queue;
use crate::store::codec;
use crate::store::layout::validate_queue_name;
use crate::store::txn::Op;
use crate::store::znode;

use super::{Admin, STATS_IN_FLIGHT};

/// A job kept in a queue's dead letters: it used up its attempts, was refused as garbage, or
/// was cancelled.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub queue: String,
    /// When the job died (the dead letter's creation), in ms since the Unix epoch.
    pub died_at_ms: u64,
    pub job: Job,
}

/// Which dead letters [`Admin::purge_dead`] deletes.
#[derive(Debug, Clone)]
pub enum Purge {
    /// These ids.
    Ids(Vec<String>),
    /// All of them.
    All,
    /// Those that died longer ago than this.
    OlderThan(Duration),
}

/// The kind of a dead letter made of bytes that were no job ([`Job::undecodable`]).
const UNDECODABLE_KIND: &str = "zkq.undecodable";

/// A dead letter's place: queue, id, and when it died.
struct Letter {
    queue: String,
    id: String,
    ctime: i64,
}

impl Admin {
    /// Dead letters of `queue` (or of every queue) whose kind is `kind` (if given), newest
    /// first, at most `limit`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a queue that does not exist; ZooKeeper errors.
    pub async fn dead_letters(
        &self,
        queue: Option<&str>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let letters = self.letters(queue).await?;
        let mut out = Vec::new();
        for chunk in letters.chunks(64) {
            if out.len() >= limit {
                break;
            }
            for letter in self.read(chunk).await? {
                if out.len() < limit && kind.is_none_or(|k| letter.job.kind == k) {
                    out.push(letter);
                }
            }
        }
        Ok(out)
    }

    /// The dead letter `id`, in whichever queue holds it.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no queue holds it; ZooKeeper errors.
    pub async fn dead_letter(&self, id: &str) -> Result<DeadLetter> {
        let letter = self.find(id).await?;
        self.read(std::slice::from_ref(&letter))
            .await?
            .pop()
            .ok_or_else(|| not_found(id))
    }

    /// Sends dead letters back to work: ready again with the same id, attempts reset to none
    /// used, error history kept. Each moves in one `multi` (the letter deleted, the job
    /// created), so it is never both dead and ready, nor neither. Every id is looked up first:
    /// if one is not found, nothing is sent back.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an id no queue holds; ZooKeeper errors.
    pub async fn retry_dead(&self, ids: &[String]) -> Result<Vec<JobId>> {
        let mut unique: Vec<&String> = Vec::with_capacity(ids.len());
        for id in ids {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        let stopping = self.stopping_ids().await?;
        let mut found = Vec::with_capacity(unique.len());
        for id in unique {
            if stopping.contains(id.as_str()) {
                return Err(Error::InvalidJob(format!(
                    "job {id} was cancelled while running and its worker has not confirmed the attempt stopped; \
                     retry it once it has (within the worker's stop grace)"
                )));
            }
            found.push(self.find(id).await?);
        }
        let mut retried = Vec::with_capacity(found.len());
        for letter in found {
            retried.push(self.retry_one(&letter.queue, &letter.id).await?);
        }
        Ok(retried)
    }

    /// Sends every dead letter of `queue` (or of every queue) whose kind is `kind` (if given)
    /// back to work, as [`Admin::retry_dead`] does, but for jobs cancelled while running whose
    /// worker has not confirmed the stop yet (they are left, with a warning). Returns their ids.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a queue that does not exist; ZooKeeper errors.
    pub async fn retry_all_dead(&self, queue: Option<&str>, kind: Option<&str>) -> Result<Vec<JobId>> {
        let letters = self.letters(queue).await?;
        let stopping = self.stopping_ids().await?;
        let mut retried = Vec::new();
        // A few records in memory at a time: dead letters can be many and large.
        for chunk in letters.chunks(64) {
            for letter in self.read(chunk).await? {
                let asked = match kind {
                    Some(k) => letter.job.kind == k,
                    // Garbage (bytes that were no job) only when asked for by its kind.
                    None => letter.job.kind != UNDECODABLE_KIND,
                };
                if !asked {
                    continue;
                }
                let id = letter.job.id.to_string();
                if stopping.contains(&id) {
                    warn!(%id, "not retried: cancelled while running, and its worker has not confirmed the stop yet");
                    continue;
                }
                match self.retry_one(&letter.queue, &id).await {
                    Ok(id) => retried.push(id),
                    // Retried or purged by someone else meanwhile.
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(retried)
    }

    /// Deletes dead letters of `queue` (or of every queue); returns how many.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a queue that does not exist or an id no queue holds (then nothing
    /// is deleted); ZooKeeper errors.
    pub async fn purge_dead(&self, queue: Option<&str>, purge: Purge) -> Result<usize> {
        let doomed: Vec<Letter> = match purge {
            Purge::Ids(ids) => {
                let mut found = Vec::with_capacity(ids.len());
                for id in &ids {
                    let letter = self.find(id).await?;
                    if queue.is_none_or(|q| q == letter.queue) {
                        found.push(letter);
                    } else {
                        return Err(not_found(id));
                    }
                }
                found
            }
            Purge::All => self.letters(queue).await?,
            Purge::OlderThan(age) => {
                let cutoff = now_ms().saturating_sub(age.as_millis() as u64) as i64;
                let mut letters = self.letters(queue).await?;
                letters.retain(|l| l.ctime < cutoff);
                letters
            }
        };
        let deleted: Vec<Result<bool>> = stream::iter(doomed)
            .map(|l| async move {
                let path = self.layout.dead_job(&l.queue, &l.id);
                match self.client.delete(&path, None).await {
                    Ok(()) => Ok(true),
                    Err(zk::Error::NoNode) => Ok(false),
                    Err(e) => Err(Error::zk("delete dead letter", path, e)),
                }
            })
            .buffer_unordered(STATS_IN_FLIGHT)
            .collect()
            .await;
        let mut count = 0;
        for d in deleted {
            count += usize::from(d?);
        }
        Ok(count)
    }

    /// Moves one dead letter back to its queue's ready jobs. A move whose reply is lost with
    /// the connection is looked up once connected: the letter gone means it committed.
    async fn retry_one(&self, queue: &str, id: &str) -> Result<JobId> {
        let path = self.layout.dead_job(queue, id);
        let config = self.producer.config(queue).await?;
        loop {
            let (data, stat) = match self.client.get_data(&path).await {
                Ok(found) => found,
                Err(zk::Error::NoNode) => return Err(not_found(id)),
                Err(e) => return Err(Error::zk("read dead letter", path, e)),
            };
            let mut job: Job = codec::decode(&path, &data)?;
            job.attempt = 0;
            job.ready_at_ms = now_ms();
            let job_id = job.id;
            let remove = vec![Op::Delete {
                path: path.clone(),
                version: Some(stat.version),
            }];
            match self
                .producer
                .commit(queue, &config, vec![Placement::Ready(job)], remove)
                .await
            {
                Ok(()) => return Ok(job_id),
                Err(e) if e.is_outcome_unknown() => {
                    self.reconnected().await?;
                    // The member answering may not have applied the move yet: sync first.
                    let _ = self.client.sync(&path).await;
                    match self.client.check_stat(&path).await {
                        Ok(None) => return Ok(job_id),
                        Ok(Some(_)) => {}
                        Err(e) => return Err(Error::zk("stat dead letter", path, e)),
                    }
                }
                // Changed meanwhile: read it again.
                Err(e) if e.lost_race().is_some_and(|(p, _)| p == path) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Every dead letter of `queue` (or of every queue), newest first.
    async fn letters(&self, queue: Option<&str>) -> Result<Vec<Letter>> {
        let mut all = Vec::new();
        for q in self.queue_names(queue).await? {
            let dir = self.layout.dead(&q);
            let ids = znode::children(&self.client, &dir).await?;
            let stats = znode::stat_children(&self.client, &dir, ids).await?;
            all.extend(stats.into_iter().map(|(id, stat)| Letter {
                queue: q.clone(),
                id,
                ctime: stat.ctime,
            }));
        }
        all.sort_by(|a, b| b.ctime.cmp(&a.ctime).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    /// The records of `letters`, in order; those gone meanwhile are left out.
    async fn read(&self, letters: &[Letter]) -> Result<Vec<DeadLetter>> {
        let paths: Vec<String> = letters
            .iter()
            .map(|l| self.layout.dead_job(&l.queue, &l.id))
            .collect();
        let records = znode::get_many(&self.client, "read dead letters", &paths).await?;
        let mut out = Vec::with_capacity(letters.len());
        for ((letter, path), record) in letters.iter().zip(&paths).zip(records) {
            if let Some((data, stat)) = record {
                out.push(DeadLetter {
                    queue: letter.queue.clone(),
                    died_at_ms: stat.ctime.max(0) as u64,
                    job: codec::decode(path, &data)?,
                });
            }
        }
        Ok(out)
    }

    /// The dead letter `id`: its queue and when it died.
    async fn find(&self, id: &str) -> Result<Letter> {
        if id.is_empty() || id.contains('/') {
            return Err(not_found(id));
        }
        for q in self.queue_names(None).await? {
            if let Some(stat) = self
                .client
                .check_stat(&self.layout.dead_job(&q, id))
                .await
                .map_err(|e| Error::zk("stat dead letter", self.layout.dead_job(&q, id), e))?
            {
                return Ok(Letter {
                    queue: q,
                    id: id.to_string(),
                    ctime: stat.ctime,
                });
            }
        }
        Err(not_found(id))
    }

    /// `queue` if it exists, or every queue.
    pub(super) async fn queue_names(&self, queue: Option<&str>) -> Result<Vec<String>> {
        match queue {
            Some(q) => {
                validate_queue_name(q)?;
                match self.client.check_stat(&self.layout.queue(q)).await {
                    Ok(Some(_)) => Ok(vec![q.to_string()]),
                    Ok(None) => Err(Error::NotFound(format!("no queue named {q:?}"))),
                    Err(e) => Err(Error::zk("stat queue", self.layout.queue(q), e)),
                }
            }
            None => queue::list(&self.client, &self.layout).await,
        }
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no dead letter with id {id:?}"))
}
