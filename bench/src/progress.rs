//! A progress line every 2 s: the phase, its count and its rate so far.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared progress of the running phase.
#[derive(Debug, Clone)]
pub struct Progress {
    state: Arc<State>,
    ticker: Arc<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct State {
    phase: Mutex<(String, Instant)>,
    count: AtomicU64,
}

impl Progress {
    /// Starts printing every 2 s.
    pub fn start() -> Progress {
        let state = Arc::new(State {
            phase: Mutex::new(("starting".into(), Instant::now())),
            count: AtomicU64::new(0),
        });
        let s = state.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                let (phase, since) = s
                    .phase
                    .lock()
                    .map(|p| p.clone())
                    .unwrap_or_else(|p| p.into_inner().clone());
                let n = s.count.load(Ordering::Relaxed);
                let secs = since.elapsed().as_secs_f64();
                println!(
                    "  [{phase}] {n} in {secs:.1}s ({:.0}/s)",
                    n as f64 / secs.max(1e-9)
                );
            }
        });
        Progress {
            state,
            ticker: Arc::new(ticker),
        }
    }

    /// Begins a phase: resets the count and the clock.
    pub fn phase(&self, name: &str) -> Instant {
        let now = Instant::now();
        if let Ok(mut p) = self.state.phase.lock() {
            *p = (name.to_string(), now);
        }
        self.state.count.store(0, Ordering::Relaxed);
        now
    }

    /// Counts `n` more done in this phase.
    pub fn add(&self, n: u64) {
        self.state.count.fetch_add(n, Ordering::Relaxed);
    }

    /// Stops printing.
    pub fn stop(&self) {
        self.ticker.abort();
    }
}

/// Items per second since `started`, printing a summary line for the phase.
pub fn rate(name: &str, items: usize, started: Instant) -> f64 {
    let secs = started.elapsed().as_secs_f64();
    let per_s = items as f64 / secs.max(1e-9);
    println!("{name}: {items} in {secs:.2}s = {per_s:.0}/s");
    per_s
}
