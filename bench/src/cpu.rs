//! CPU time per job: what a workload cost the ZooKeeper servers and the workers, read from
//! `/proc/<pid>/stat` (user and system time of all of a process's threads).
//!
//! A server's request pipeline (read, prepare, log and apply, answer) passes each request through
//! a few threads, in order, so a rate is the CPU the server gets divided by the CPU one job costs
//! it. These figures tell the two apart: a drain slower than raw creates is either a server with
//! less CPU (the workers took it) or jobs that cost it more than creates do.

/// Processes whose CPU time is counted together.
#[derive(Debug, Clone, Default)]
pub struct Processes(Vec<u32>);

impl Processes {
    pub fn new(pids: Vec<u32>) -> Processes {
        Processes(pids)
    }

    /// Whether there is anything to count (not when the bench uses a ZooKeeper it did not start).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// CPU seconds used so far by every process still running.
    pub fn seconds(&self) -> f64 {
        self.0.iter().filter_map(|pid| process_seconds(*pid)).sum()
    }

    /// Starts measuring a workload.
    pub fn start(&self) -> Measure<'_> {
        Measure {
            processes: self,
            seconds: self.seconds(),
            at: std::time::Instant::now(),
        }
    }
}

/// CPU time from a [`Processes::start`] on.
#[derive(Debug)]
pub struct Measure<'a> {
    processes: &'a Processes,
    seconds: f64,
    at: std::time::Instant,
}

/// What a workload cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    /// CPU µs per job.
    pub us_per_job: f64,
    /// CPU used over the workload's time, in cores.
    pub cores: f64,
}

impl Measure<'_> {
    /// The cost of `jobs` since the start, `None` with nothing to count.
    pub fn per_job(&self, jobs: usize) -> Option<Cost> {
        if self.processes.is_empty() || jobs == 0 {
            return None;
        }
        let used = self.processes.seconds() - self.seconds;
        Some(Cost {
            us_per_job: used * 1e6 / jobs as f64,
            cores: used / self.at.elapsed().as_secs_f64().max(1e-9),
        })
    }
}

/// User plus system CPU seconds of process `pid`, all threads, or `None` if it is gone.
fn process_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_ticks(&stat)? as f64 / ticks_per_second())
}

/// User plus system clock ticks from the text of a `/proc/<pid>/stat`.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name, in parentheses, may hold spaces and parentheses: fields are counted
    // after its last closing parenthesis, where the state is field 3 and utime, stime are
    // fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's CPU time as the kernel's clock tells it, seconds.
    fn own_cpu_seconds() -> f64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }

    #[test]
    fn user_and_system_ticks_follow_the_command_name_whatever_it_holds() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 9 0";
        assert_eq!(stat_ticks(stat), Some(1234 + 56));
        assert_eq!(stat_ticks("4242 (java"), None);
        assert_eq!(stat_ticks("4242 (java) S 1"), None);
    }

    #[test]
    fn a_process_cpu_time_is_read_as_the_kernel_counts_it() {
        let me = Processes::new(vec![std::process::id()]);
        let measure = me.start();
        let clock = own_cpu_seconds();
        let mut spin = 0u64;
        while own_cpu_seconds() - clock < 0.3 {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let spent = own_cpu_seconds() - clock;
        let cost = measure.per_job(1000).unwrap();
        // /proc counts in ticks (10 ms); the other tests of this binary may run meanwhile.
        let seen = cost.us_per_job * 1000.0 / 1e6;
        assert!(
            seen > spent - 0.03 && seen < spent + 0.3,
            "{seen} s seen, {spent} s spent"
        );
        assert!(cost.cores > 0.0, "{cost:?}");
        assert!(Processes::default().start().per_job(1000).is_none());
        assert_eq!(Processes::new(vec![u32::MAX]).seconds(), 0.0);
    }
}
