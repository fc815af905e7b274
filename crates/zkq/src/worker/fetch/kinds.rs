//! The job kinds a worker handles. Jobs of other kinds are left for workers that handle them:
//! never claimed, so no attempt is used on them. A job's znode name carries its kind's tag
//! ([`layout::kind_tag`]), so most are passed over without being read; the record decides for
//! names without a tag, and when two kinds share one.

use std::collections::HashSet;

use crate::store::layout;

/// What a worker runs.
#[derive(Debug, Clone)]
pub(crate) enum Kinds {
    /// Every kind (a catch-all handler).
    Any,
    /// These kinds, and their tags.
    Only {
        kinds: HashSet<String>,
        tags: HashSet<String>,
    },
}

impl Kinds {
    /// `kinds` as registered by the worker: `*` means every kind.
    pub(crate) fn new(kinds: &[String]) -> Kinds {
        if kinds.iter().any(|k| k == "*") {
            return Kinds::Any;
        }
        Kinds::Only {
            kinds: kinds.iter().cloned().collect(),
            tags: kinds.iter().map(|k| layout::kind_tag(k)).collect(),
        }
    }

    /// Whether the job znode `name` may be of a kind this worker runs, by its tag.
    pub(crate) fn may_run(&self, name: &str) -> bool {
        match self {
            Kinds::Any => true,
            Kinds::Only { tags, .. } => layout::parse_job_node(name)
                .and_then(|n| n.tag)
                .is_none_or(|t| tags.contains(t)),
        }
    }

    /// Whether this worker runs jobs of `kind`.
    pub(crate) fn runs(&self, kind: &str) -> bool {
        match self {
            Kinds::Any => true,
            Kinds::Only { kinds, .. } => kinds.contains(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_pass_over_other_kinds_and_untagged_names_are_read() {
        let only = Kinds::new(&["email".to_string()]);
        let id = uuid::Uuid::new_v4();
        assert!(only.may_run(&format!("{}0000000001", layout::job_node_prefix("email", &id))));
        assert!(!only.may_run(&format!("{}0000000001", layout::job_node_prefix("resize", &id))));
        assert!(only.may_run("j-0000000001"));
        assert!(only.runs("email") && !only.runs("resize"));
        let any = Kinds::new(&["*".to_string(), "email".to_string()]);
        assert!(any.runs("resize"));
    }
}
