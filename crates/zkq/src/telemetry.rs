//! Metric names. zkq records through the `metrics` facade; attach any exporter (Prometheus,
//! StatsD, ...) in the binary to publish them. Job metrics carry a `queue` label.

/// Counter: jobs committed by producers.
pub const ENQUEUED: &str = "zkq_jobs_enqueued_total";
/// Counter: attempts claimed by workers.
pub const CLAIMED: &str = "zkq_jobs_claimed_total";
/// Counter: jobs that finished successfully.
pub const DONE: &str = "zkq_jobs_done_total";
/// Counter: failed attempts scheduled to run again.
pub const RETRIED: &str = "zkq_jobs_retried_total";
/// Counter: jobs moved to the dead letters.
pub const DEAD: &str = "zkq_jobs_dead_total";
/// Counter: delayed jobs promoted to ready.
pub const PROMOTED: &str = "zkq_jobs_promoted_total";
/// Counter: attempts whose claim was lost before they could settle (session loss).
pub const LOST: &str = "zkq_jobs_claim_lost_total";
/// Histogram: handler run time, seconds.
pub const RUN_SECONDS: &str = "zkq_job_run_seconds";
/// Histogram: time from ready (enqueue or due) to claim, seconds.
pub const LATENCY_SECONDS: &str = "zkq_job_start_latency_seconds";
/// Counter: ticks fired by periodic jobs (label `schedule`).
pub const CRON_FIRED: &str = "zkq_cron_ticks_fired_total";
/// Counter: dead letters removed by trimming.
pub const TRIMMED: &str = "zkq_dead_letters_trimmed_total";
