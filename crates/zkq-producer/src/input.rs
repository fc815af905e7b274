//! Where job payloads come from: an argument, a file, stdin, or JSON lines.

use std::io::Read;

use zkq::limits::MAX_REQUEST_BYTES;
use zkq::NewJob;

/// Job payloads read and checked, ready to send.
#[derive(Debug)]
pub struct Payloads(Vec<Vec<u8>>);

impl Payloads {
    /// Reads one payload (`PAYLOAD`, `@PATH`, `-`) or many (`--file PATH|-`, JSON lines).
    pub fn read(payload: Option<&str>, file: Option<&str>) -> Result<Payloads, String> {
        match (payload, file) {
            (Some("-"), None) => {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("cannot read stdin: {e}"))?;
                Ok(Payloads(vec![bytes]))
            }
            (Some(p), None) => match p.strip_prefix('@') {
                Some(path) => std::fs::read(path)
                    .map(|b| Payloads(vec![b]))
                    .map_err(|e| format!("cannot read payload file {path}: {e}")),
                None => Ok(Payloads(vec![p.as_bytes().to_vec()])),
            },
            (None, Some(path)) => {
                let text = if path == "-" {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(|e| format!("cannot read stdin: {e}"))?;
                    s
                } else {
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
                };
                Self::from_json_lines(path, &text)
            }
            (None, None) => Err("nothing to enqueue: give a PAYLOAD, @FILE, - (stdin) or --file PATH".into()),
            (Some(_), Some(_)) => Err("give either a PAYLOAD or --file, not both".into()),
        }
    }

    /// One payload per non-empty line; every line must be valid JSON.
    fn from_json_lines(name: &str, text: &str) -> Result<Payloads, String> {
        let mut payloads = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line) {
                return Err(format!(
                    "line {} of {name} is not valid JSON ({e}); nothing was enqueued",
                    n + 1
                ));
            }
            payloads.push(line.as_bytes().to_vec());
        }
        if payloads.is_empty() {
            return Err(format!("{name} holds no jobs"));
        }
        Ok(Payloads(payloads))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// One job per payload, made by `job`.
    pub fn into_jobs(self, job: impl Fn(Vec<u8>) -> NewJob) -> Vec<NewJob> {
        self.0.into_iter().map(job).collect()
    }

    /// Splits `jobs` into batches of at most `size` jobs that each fit in one ZooKeeper request,
    /// each job carrying `headers` bytes of headers besides its payload.
    pub fn batches(jobs: Vec<NewJob>, size: usize, headers: usize) -> Vec<Vec<NewJob>> {
        // Room per job for its record's other fields and its path (kind and keys are at most
        // 640 bytes together).
        const OVERHEAD: usize = 1024;
        let budget = MAX_REQUEST_BYTES * 3 / 4;
        let mut batches: Vec<Vec<NewJob>> = Vec::new();
        let mut bytes = 0;
        for job in jobs {
            let cost = job.payload().len() + headers + OVERHEAD;
            let full = batches
                .last()
                .is_none_or(|b| b.len() >= size || bytes + cost > budget);
            if full {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += cost;
            if let Some(batch) = batches.last_mut() {
                batch.push(job);
            }
        }
        batches
    }

    /// The single payload read (the first, if there are several).
    pub fn into_first(self) -> Vec<u8> {
        self.0.into_iter().next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_checked_and_blank_lines_skipped() {
        let p = Payloads::from_json_lines("f", "{\"a\":1}\n\n\"x\"\n42\n").unwrap();
        assert_eq!(
            p.0,
            vec![b"{\"a\":1}".to_vec(), b"\"x\"".to_vec(), b"42".to_vec()]
        );
        let err = Payloads::from_json_lines("f", "{}\nnot json\n").unwrap_err();
        assert!(err.starts_with("line 2 of f is not valid JSON"), "{err}");
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let jobs = |n: usize, size: usize| (0..n).map(|_| NewJob::new("k", vec![0u8; size])).collect();
        let sizes = |b: &Vec<Vec<NewJob>>| b.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(&Payloads::batches(jobs(10, 10), 4, 0)), vec![4, 4, 2]);
        let big = Payloads::batches(jobs(5, 300 * 1024), 100, 0);
        assert!(big.iter().all(|b| b.len() <= 2), "{:?}", sizes(&big));
        assert_eq!(big.iter().map(Vec::len).sum::<usize>(), 5);
        let headed = Payloads::batches(jobs(5, 100 * 1024), 100, 200 * 1024);
        assert!(headed.iter().all(|b| b.len() <= 2), "{:?}", sizes(&headed));
    }
}
