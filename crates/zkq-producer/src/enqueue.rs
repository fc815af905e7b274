//! `enqueue`: one job, or a file of many checked whole before the first is sent, in ordered
//! batches with their committed ids printed exactly.

use std::io::Write;
use std::time::Instant;

use futures::StreamExt;
use zkq::{NewJob, Producer, QueueConfig};

use crate::input::Payloads;
use crate::{Cli, EnqueueArgs, Failure};

fn job_for(args: &EnqueueArgs, payload: Vec<u8>) -> NewJob {
    let mut job = args.options.apply(NewJob::new(args.kind.clone(), payload));
    if let Some(d) = args.delay {
        job = job.delay(d);
    }
    if let Some(k) = &args.partition_key {
        job = job.partition_key(k.clone());
    }
    if let Some(k) = &args.lock_key {
        job = job.lock_key(k.clone());
    }
    job
}

pub(crate) async fn enqueue(cli: &Cli, args: &EnqueueArgs) -> Result<(), Failure> {
    // Read and check all input before connecting: bad input never leaves half a file enqueued.
    let payloads = Payloads::read(args.payload.as_deref(), args.file.as_deref()).map_err(Failure::Input)?;
    let producer = Producer::connect(&cli.connect.zk_config()?, &cli.connect.root).await?;
    // Load (or create) the queue once, so batches below go out in order without extra reads.
    producer
        .create_queue(&args.queue, &QueueConfig::default())
        .await?;

    let total = payloads.len();
    // Every job is checked against the queue's limits before the first one is sent: bad input
    // enqueues nothing.
    let jobs: Vec<NewJob> = payloads.into_jobs(|p| job_for(args, p));
    for (n, job) in jobs.iter().enumerate() {
        if let Err(e) = producer.check(&args.queue, job).await {
            producer.close().await;
            return Err(match &args.file {
                Some(file) => Failure::Refused {
                    line: n + 1,
                    file: file.clone(),
                    source: e,
                },
                None => e.into(),
            });
        }
    }
    let headers: usize = args.options.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    let batches = Payloads::batches(jobs, args.batch_size as usize, headers);
    let progress = progress_bar(total as u64, cli.quiet);
    let started = Instant::now();
    let producer_ref = &producer;
    // Up to 4 batches in flight, committed in file order (the producer orders its commits).
    // After a failure no new batch is sent, but those already in flight are heard out: their
    // jobs may have committed, and every committed id is printed.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let failed = &failed;
    let mut committed = futures::stream::iter(batches)
        .map(|jobs| async move {
            if failed.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            let ids: Vec<String> = jobs.iter().map(|j| j.id().to_string()).collect();
            let result = producer_ref.enqueue_batch(&args.queue, jobs).await;
            if result.is_err() {
                failed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Some((ids, result))
        })
        .buffered(4);
    let mut done = 0usize;
    let mut first_error = None;
    let mut unknown: Vec<String> = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while let Some(sent) = committed.next().await {
        let Some((ids, result)) = sent else { continue };
        let ids = match result {
            Ok(ids) => ids,
            Err(e) => {
                if e.is_outcome_unknown() {
                    unknown.extend(ids);
                }
                first_error.get_or_insert(e);
                continue;
            }
        };
        for id in &ids {
            let line = if args.json {
                serde_json::json!({"id": id.to_string(), "queue": args.queue, "kind": args.kind}).to_string()
            } else {
                id.to_string()
            };
            writeln!(out, "{line}")?;
        }
        done += ids.len();
        progress.set_position(done as u64);
    }
    drop(committed);
    if let Some(e) = first_error {
        progress.abandon();
        producer.close().await;
        let mut report = Vec::new();
        if total > 1 {
            report.push(format!(
                "{done} of {total} jobs were enqueued; the ids printed are exactly those"
            ));
        }
        if !unknown.is_empty() {
            report.push(format!(
                "{} jobs may or may not have been enqueued (the connection dropped with them in flight); look for these ids before sending them again:\n{}",
                unknown.len(),
                unknown.join("\n")
            ));
        }
        return Err(if report.is_empty() {
            e.into()
        } else {
            Failure::Partial {
                source: e,
                report: report.join("\n"),
            }
        });
    }
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if !cli.quiet && total > 1 {
        eprintln!(
            "enqueued {total} jobs into {} in {secs:.2}s ({:.0} jobs/s)",
            args.queue,
            total as f64 / secs
        );
    }
    producer.close().await;
    Ok(())
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet || total < 2 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs ({per_sec}, eta {eta})")
    {
        bar.set_style(style);
    }
    bar
}
