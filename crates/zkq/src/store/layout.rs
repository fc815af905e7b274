//! Where everything lives in ZooKeeper, and the naming rules for what users name.
//!
//! ```text
//! <root>/queues/<queue>                                  queue config
//! <root>/queues/<queue>/p/<partition>/l<lane>/s-<seq>/j-<tag><fp>-<seq>   ready jobs
//! <root>/queues/<queue>/p/<partition>/l<lane>/s-<seq>/open      segment's writer is active
//! <root>/queues/<queue>/p/<partition>/claims/<claim>     EPHEMERAL claims of running jobs
//! <root>/queues/<queue>/delayed/b-<minute>/<due-ms>-<id> delayed and retry-waiting jobs
//! <root>/queues/<queue>/dead/<id>                        dead letters
//! <root>/workers/<worker-id>                             EPHEMERAL worker registrations
//! <root>/scheduler/candidates/c-<seq>                    EPHEMERAL_SEQUENTIAL scheduler candidates
//! <root>/scheduler/epoch                                 its data version is the leader's epoch
//! <root>/scheduler/assignment/<queue>                    partition owners, written by the leader
//! <root>/cron/<name>                                     periodic job: schedule, template, last tick
//! <root>/singletons/<name>/candidates/c-<seq>            batch-job master election
//! <root>/singletons/<name>/epoch                         its version is the fencing token
//! <root>/locks/<key>/l-<id>-<seq>                        EPHEMERAL_SEQUENTIAL lock holder and waiters
//! <root>/stops/<job-id>-<seq>                            stop notice for a cancelled running attempt
//! ```

use crate::error::{Error, Result};
use crate::store::acl::AclPolicy;
use crate::store::session::ZkConfig;

/// Longest queue name.
pub const MAX_QUEUE_NAME: usize = 64;

/// Name of the marker node a segment's producer keeps while it may still append.
pub const OPEN_MARKER: &str = "open";

/// Builds znode paths under one root, and carries the ACL every znode created under it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
    acl: AclPolicy,
}

impl Layout {
    /// A layout under `root` (such as `/zkq`). The root must be an absolute path without a
    /// trailing slash.
    pub fn new(root: &str) -> Result<Layout> {
        let bad = |reason| {
            Err(Error::InvalidName {
                what: "root path",
                name: root.to_string(),
                reason,
            })
        };
        if !root.starts_with('/') {
            return bad("must start with '/'");
        }
        if root.len() > 1 && root.ends_with('/') {
            return bad("must not end with '/'");
        }
        if root.contains("//") || root.split('/').any(|c| c == "." || c == "..") {
            return bad("must not contain empty, '.' or '..' components");
        }
        let root = if root == "/" {
            String::new()
        } else {
            root.to_string()
        };
        Ok(Layout {
            root,
            acl: AclPolicy::open(),
        })
    }

    /// The layout under `root` whose znodes get the ACL `config` asks for ([`AclPolicy::for_config`]).
    ///
    /// # Errors
    /// As [`Layout::new`] and [`AclPolicy::for_config`].
    pub fn for_config(root: &str, config: &ZkConfig) -> Result<Layout> {
        Ok(Layout::new(root)?.with_acl(AclPolicy::for_config(config)?))
    }

    /// This layout, its znodes created with `acl`.
    pub fn with_acl(self, acl: AclPolicy) -> Layout {
        Layout { acl, ..self }
    }

    /// The ACL of every znode created under this layout.
    pub fn acl(&self) -> &AclPolicy {
        &self.acl
    }

    /// The root path.
    pub fn root(&self) -> &str {
        if self.root.is_empty() {
            "/"
        } else {
            &self.root
        }
    }

    pub fn queues(&self) -> String {
        format!("{}/queues", self.root)
    }

    pub fn queue(&self, queue: &str) -> String {
        format!("{}/queues/{queue}", self.root)
    }

    pub fn partitions(&self, queue: &str) -> String {
        format!("{}/queues/{queue}/p", self.root)
    }

    // The paths a worker builds for every job are formatted whole, with no intermediate
    // strings: a worker draining 20,000 jobs a second spent a tenth of its CPU nesting these.

    pub fn partition(&self, queue: &str, partition: u32) -> String {
        format!("{}/queues/{queue}/p/{partition}", self.root)
    }

    pub fn lane(&self, queue: &str, partition: u32, lane: u8) -> String {
        format!("{}/queues/{queue}/p/{partition}/l{lane}", self.root)
    }

    pub fn segment(&self, queue: &str, partition: u32, lane: u8, segment: &str) -> String {
        format!("{}/queues/{queue}/p/{partition}/l{lane}/{segment}", self.root)
    }

    /// A job znode: `node` in `segment` of the lane.
    pub fn job(&self, queue: &str, partition: u32, lane: u8, segment: &str, node: &str) -> String {
        format!(
            "{}/queues/{queue}/p/{partition}/l{lane}/{segment}/{node}",
            self.root
        )
    }

    pub fn claims(&self, queue: &str, partition: u32) -> String {
        format!("{}/queues/{queue}/p/{partition}/claims", self.root)
    }

    pub fn delayed(&self, queue: &str) -> String {
        format!("{}/delayed", self.queue(queue))
    }

    pub fn delayed_bucket(&self, queue: &str, bucket: &str) -> String {
        format!("{}/delayed/{bucket}", self.queue(queue))
    }

    pub fn dead(&self, queue: &str) -> String {
        format!("{}/dead", self.queue(queue))
    }

    pub fn dead_job(&self, queue: &str, id: &str) -> String {
        format!("{}/dead/{id}", self.queue(queue))
    }

    /// The scheduler election: `candidates/` and `epoch`.
    pub fn scheduler(&self) -> String {
        format!("{}/scheduler", self.root)
    }

    /// Partition assignments written by the scheduler, one child per queue.
    pub fn assignments(&self) -> String {
        format!("{}/scheduler/assignment", self.root)
    }

    pub fn assignment(&self, queue: &str) -> String {
        format!("{}/scheduler/assignment/{queue}", self.root)
    }

    /// Periodic job schedules, one child per name.
    pub fn schedules(&self) -> String {
        format!("{}/cron", self.root)
    }

    pub fn schedule(&self, name: &str) -> String {
        format!("{}/cron/{name}", self.root)
    }

    /// A batch-job master election (`candidates/` and `epoch`), see [`crate::singleton`].
    pub fn singleton(&self, name: &str) -> String {
        format!("{}/singletons/{name}", self.root)
    }

    /// Locks, one CONTAINER child per key in use, see [`crate::Lock`].
    pub fn locks(&self) -> String {
        format!("{}/locks", self.root)
    }

    /// The line of the lock on `key` (any 1 to 256 bytes, escaped into one znode name).
    pub fn lock(&self, key: &str) -> String {
        format!("{}/locks/{}", self.root, escape_key(key))
    }

    /// Stop notices for cancelled attempts, see [`crate::stops`].
    pub fn stops(&self) -> String {
        format!("{}/stops", self.root)
    }

    pub fn workers(&self) -> String {
        format!("{}/workers", self.root)
    }

    pub fn worker(&self, id: &str) -> String {
        format!("{}/workers/{id}", self.root)
    }
}

/// The width of one delayed bucket: delayed jobs due in the same minute share a parent.
pub const DELAYED_BUCKET_MS: u64 = 60_000;

/// The bucket name for a due time: `b-<start of the minute in ms, 13 digits>`.
pub fn delayed_bucket_name(due_ms: u64) -> String {
    format!("b-{:013}", due_ms - due_ms % DELAYED_BUCKET_MS)
}

/// The start of a bucket, from its name.
pub fn parse_delayed_bucket(name: &str) -> Option<u64> {
    name.strip_prefix("b-")?.parse().ok()
}

/// The node name of a delayed job: `<due-ms, 13 digits>-<id>`, so names sort by due time.
pub fn delayed_entry_name(due_ms: u64, id: &uuid::Uuid) -> String {
    format!("{due_ms:013}-{id}")
}

/// The due time of a delayed entry, from its name.
pub fn parse_delayed_entry(name: &str) -> Option<u64> {
    name.split_once('-')?.0.parse().ok()
}

/// FNV-1a (64-bit) of `bytes`: stable across processes, versions and languages.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The kind tag in a job's znode name: the low 32 bits of [`fnv1a`] of the kind, 8 hex digits.
/// It lets a listing tell kinds apart without reading jobs; two kinds may share a tag, so the
/// job record stays the authority.
pub fn kind_tag(kind: &str) -> String {
    format!("{:08x}", fnv1a(kind.as_bytes()) as u32)
}

/// The id fingerprint in a job's znode name: the id's bytes 2 to 5, 8 hex digits. It narrows a
/// search by id to a few jobs without reading jobs; their records confirm the id. For zkq's own
/// ids (time-ordered UUIDv7) these bytes are the low 32 bits of the millisecond the job was
/// made, so the jobs of one batch share them and their names differ only in the sequence
/// number. That matters: ZooKeeper finds znodes in a hash table keyed by path, and paths that
/// differ only at their end hash to neighbouring slots, which stay in the CPU cache while a
/// worker drains a segment in order; a random part in every name cost a sixth of the backlog
/// drain rate (measured with `zkq-bench`).
pub fn id_fingerprint(id: &uuid::Uuid) -> String {
    let b = id.as_bytes();
    format!("{:02x}{:02x}{:02x}{:02x}", b[2], b[3], b[4], b[5])
}

/// The name a ready job's znode is created with, `j-<kind tag><id fingerprint>-`; ZooKeeper
/// appends a 10-digit sequence number. 16 characters more than a bare `j-`: every job write
/// carries its path, so names stay short.
pub fn job_node_prefix(kind: &str, id: &uuid::Uuid) -> String {
    format!("j-{}{}-", kind_tag(kind), id_fingerprint(id))
}

/// What a ready job's znode name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobNode<'a> {
    /// The kind tag, when the name has one.
    pub tag: Option<&'a str>,
    /// The id fingerprint, when the name has one.
    pub fingerprint: Option<&'a str>,
    /// The sequence number: jobs of a segment run in this order.
    pub seq: u64,
}

/// Parses a ready job's znode name: `j-<tag><fingerprint>-<seq>` as zkq names them; any other
/// `j-` name (`j-<seq>` from zkq 0.1, or from another client) is a job without tag and
/// fingerprint, ordered by the digits after its last `-`, or after every numbered job when
/// there are none. `None` for anything else (such as a segment's `open` marker). Cheap:
/// listings call it for every name.
pub fn parse_job_node(name: &str) -> Option<JobNode<'_>> {
    let rest = name.strip_prefix("j-")?;
    if let Some((head, seq)) = rest.rsplit_once('-') {
        if head.len() == 16 && head.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(seq) = seq.parse() {
                return Some(JobNode {
                    tag: Some(&head[..8]),
                    fingerprint: Some(&head[8..]),
                    seq,
                });
            }
        }
    }
    let digits = rest.rsplit('-').next().unwrap_or(rest);
    Some(JobNode {
        tag: None,
        fingerprint: None,
        seq: digits.parse().unwrap_or(u64::MAX),
    })
}

/// Sorts a segment's children into the order its jobs run: by sequence number.
pub fn sort_job_nodes(children: &mut [String]) {
    children.sort_by_cached_key(|c| parse_job_node(c).map(|n| n.seq));
}

/// Checks a queue name: 1 to 64 characters of `A-Z a-z 0-9 _ - .`, not starting with `.`.
pub fn validate_queue_name(name: &str) -> Result<()> {
    validate_name("queue name", name)
}

/// Checks a name that becomes one znode (queues, schedules, singletons): 1 to 64 characters
/// from A-Z, a-z, 0-9, '_', '-' and '.', not starting with '.'.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_QUEUE_NAME {
        return bad("must be at most 64 characters");
    }
    if name.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return bad("may only contain A-Z, a-z, 0-9, '_', '-' and '.'");
    }
    Ok(())
}

/// A lock key as one znode name: `A-Z a-z 0-9 _ - .` stay, every other byte becomes `%XX`, and
/// so does a leading `.` (no key can name `.` or `..`). Distinct keys stay distinct.
pub fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The key a lock znode name stands for: [`escape_key`] undone.
pub(crate) fn unescape_key(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = name
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks a job kind: 1 to 128 printable characters without whitespace.
pub fn validate_kind(kind: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what: "job kind",
            name: kind.to_string(),
            reason,
        })
    };
    if kind.is_empty() {
        return bad("must not be empty");
    }
    if kind.len() > 128 {
        return bad("must be at most 128 bytes");
    }
    if kind.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain whitespace or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_node_names_carry_kind_tag_id_fingerprint_and_sequence() {
        let id = uuid::Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        assert_eq!(id_fingerprint(&id), "504410b1");
        let name = format!("{}0000000042", job_node_prefix("email", &id));
        assert_eq!(name.len(), 29);
        let node = parse_job_node(&name).unwrap();
        assert_eq!(node.tag, Some(kind_tag("email").as_str()));
        assert_eq!(node.fingerprint, Some("504410b1"));
        assert_eq!(node.seq, 42);
        assert_ne!(kind_tag("email"), kind_tag("resize"));
        let old = parse_job_node("j-0000000007").unwrap();
        assert_eq!((old.tag, old.fingerprint, old.seq), (None, None, 7));
        assert_eq!(parse_job_node("open"), None);
        // Other clients' names still are jobs: untagged, ordered by their digits or last.
        let odd = parse_job_node("j-abc").unwrap();
        assert_eq!((odd.tag, odd.fingerprint, odd.seq), (None, None, u64::MAX));
        let other = parse_job_node("j-not-hex-at-all-0000000001").unwrap();
        assert_eq!((other.tag, other.fingerprint, other.seq), (None, None, 1));
        let mut names = vec![
            format!("{}0000000010", job_node_prefix("b", &uuid::Uuid::nil())),
            "open".to_string(),
            format!("{}0000000002", job_node_prefix("a", &uuid::Uuid::max())),
        ];
        sort_job_nodes(&mut names);
        assert_eq!(names[0], "open");
        assert!(names[1].ends_with("0000000002") && names[2].ends_with("0000000010"));
    }

    #[test]
    fn lock_keys_become_one_safe_znode_name_each() {
        assert_eq!(escape_key("user-42.a_b"), "user-42.a_b");
        assert_eq!(escape_key("a/b c"), "a%2Fb%20c");
        assert_eq!(escape_key(".."), "%2E.");
        assert_eq!(escape_key("%2F"), "%252F");
        assert_eq!(escape_key("ü"), "%C3%BC");
        assert_ne!(escape_key("a/b"), escape_key("a%2Fb"));
        for key in ["user-42.a_b", "a/b c", "..", "%2F", "ü", "invoice/42"] {
            assert_eq!(unescape_key(&escape_key(key)), key);
        }
    }

    #[test]
    fn queue_names_follow_the_rules() {
        for ok in ["emails", "a", "A-b_c.d", &"x".repeat(64)] {
            assert!(validate_queue_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "sp ace",
            "ü",
            &"x".repeat(65),
            "zookeeper\0",
        ] {
            let err = validate_queue_name(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid queue name"), "{err}");
        }
    }

    #[test]
    fn root_paths_are_validated_and_joined() {
        assert_eq!(Layout::new("/zkq").unwrap().queue("q"), "/zkq/queues/q");
        assert_eq!(Layout::new("/").unwrap().workers(), "/workers");
        let layout = Layout::new("/a/b").unwrap();
        assert_eq!(layout.partitions("q"), "/a/b/queues/q/p");
        assert_eq!(layout.partition("q", 3), "/a/b/queues/q/p/3");
        assert_eq!(layout.lane("q", 3, 2), "/a/b/queues/q/p/3/l2");
        assert_eq!(layout.segment("q", 3, 2, "s-1"), "/a/b/queues/q/p/3/l2/s-1");
        assert_eq!(
            layout.job("q", 3, 2, "s-1", "j-7"),
            "/a/b/queues/q/p/3/l2/s-1/j-7"
        );
        assert_eq!(layout.claims("q", 3), "/a/b/queues/q/p/3/claims");
        for bad in ["zkq", "/zkq/", "//x", "/a/../b"] {
            assert!(Layout::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn delayed_names_sort_by_due_time_and_parse_back() {
        let id = uuid::Uuid::new_v4();
        let early = delayed_entry_name(999, &id);
        let late = delayed_entry_name(1_700_000_000_000, &id);
        assert!(early < late);
        assert_eq!(parse_delayed_entry(&late), Some(1_700_000_000_000));
        let bucket = delayed_bucket_name(1_700_000_012_345);
        assert_eq!(parse_delayed_bucket(&bucket), Some(1_699_999_980_000));
        assert!(delayed_bucket_name(59_999) < delayed_bucket_name(60_000));
    }
}
