//! Where job payloads come from: an argument, a file, stdin, or JSON lines.

use std::io::Read;

use zkq::producer::MAX_REQUEST_BYTES;

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

    /// Splits into batches of at most `size` jobs that each fit in one ZooKeeper request.
    pub fn into_batches(self, size: usize) -> Vec<Vec<Vec<u8>>> {
        // Room per job for its record's metadata and its path.
        const OVERHEAD: usize = 512;
        let budget = MAX_REQUEST_BYTES * 3 / 4;
        let mut batches: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut bytes = 0;
        for payload in self.0 {
            let cost = payload.len() + OVERHEAD;
            let full = batches
                .last()
                .is_none_or(|b| b.len() >= size || bytes + cost > budget);
            if full {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += cost;
            if let Some(batch) = batches.last_mut() {
                batch.push(payload);
            }
        }
        batches
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
        let p = Payloads((0..10).map(|_| vec![0u8; 10]).collect());
        assert_eq!(
            p.into_batches(4).iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let big = Payloads((0..5).map(|_| vec![0u8; 300 * 1024]).collect());
        let batches = big.into_batches(100);
        assert!(
            batches.iter().all(|b| b.len() <= 2),
            "{:?}",
            batches.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 5);
    }
}
