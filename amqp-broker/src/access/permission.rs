//! Per-user, per-vhost permissions: three regular expressions (configure, write, read) matched
//! against resource names, as RabbitMQ's internal authorisation backend does.
//!
//! RabbitMQ runs each pattern with `re:run(Name, Pattern)`: unanchored, so `app` matches
//! `my-app-queue` (write `^app$` to mean exactly `app`), and an empty pattern means `^$`
//! (nothing but the empty name). The default exchange is checked as `amq.default`.

use regex::Regex;

use crate::error::{AmqpError, AmqpResult};

/// What an operation does to a resource (RabbitMQ's three permission kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Create, delete or change it (declare, delete).
    Configure,
    /// Put messages in (publish to an exchange, bind a queue as destination).
    Write,
    /// Take messages out (consume, get, purge, bind from an exchange).
    Read,
}

/// The kind of resource an operation is on (named in refusals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Exchange,
    Queue,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Exchange => "exchange",
            Kind::Queue => "queue",
        }
    }
}

/// One pattern with its source text (exported as written).
#[derive(Clone, Debug)]
pub(crate) struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// Compiles `source` as RabbitMQ reads it (empty: `^$`).
    pub fn new(source: &str) -> Result<Self, String> {
        let effective = if source.is_empty() { "^$" } else { source };
        let regex = Regex::new(effective)
            .map_err(|e| format!("invalid regular expression '{source}': {e}"))?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    /// The pattern as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }
}

/// A user's permissions in one vhost. Having one at all is what lets the user open the vhost.
#[derive(Clone, Debug)]
pub(crate) struct Permission {
    pub configure: Pattern,
    pub write: Pattern,
    pub read: Pattern,
}

impl Permission {
    /// Compiles the three patterns; an invalid one is an error naming it.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, String> {
        Ok(Self {
            configure: Pattern::new(configure)?,
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
        })
    }

    /// Everything (`.*` three times), what RabbitMQ's default user has on `/`.
    pub fn full() -> Self {
        Self::new(".*", ".*", ".*").expect("valid patterns")
    }

    /// Whether `op` on the resource named `name` is allowed.
    pub fn allows(&self, op: Op, kind: Kind, name: &str) -> bool {
        let name = match (kind, name) {
            (Kind::Exchange, "") => "amq.default",
            _ => name,
        };
        match op {
            Op::Configure => self.configure.matches(name),
            Op::Write => self.write.matches(name),
            Op::Read => self.read.matches(name),
        }
    }
}

/// RabbitMQ's refusal: `403 ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user
/// 'u'`.
pub(crate) fn refused(kind: Kind, name: &str, vhost: &str, user: &str) -> AmqpError {
    let name = match (kind, name) {
        (Kind::Exchange, "") => "amq.default",
        _ => name,
    };
    AmqpError::access_refused(format_args!(
        "access to {} '{name}' in vhost '{vhost}' refused for user '{user}'",
        kind.name()
    ))
}

/// Checks `op` against `permission` (none at all refuses everything).
pub(crate) fn check(
    permission: Option<&Permission>,
    op: Op,
    kind: Kind,
    name: &str,
    vhost: &str,
    user: &str,
) -> AmqpResult {
    match permission {
        Some(p) if p.allows(op, kind, name) => Ok(()),
        _ => Err(refused(kind, name, vhost, user)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_anywhere_in_the_name_as_rabbitmq_does() {
        let p = Permission::new("app", "^app$", "").unwrap();
        assert!(p.allows(Op::Configure, Kind::Queue, "my-app-queue"));
        assert!(p.allows(Op::Write, Kind::Queue, "app"));
        assert!(!p.allows(Op::Write, Kind::Queue, "app2"));
        // Empty means ^$: nothing named.
        assert!(!p.allows(Op::Read, Kind::Queue, "app"));
    }

    #[test]
    fn the_default_exchange_is_checked_as_amq_default() {
        let p = Permission::new("", "^amq\\.default$", "").unwrap();
        assert!(p.allows(Op::Write, Kind::Exchange, ""));
        assert!(!p.allows(Op::Write, Kind::Queue, ""));
        let e = refused(Kind::Exchange, "", "/", "bob");
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'bob'"
        );
    }

    #[test]
    fn an_invalid_pattern_is_an_error_naming_it() {
        let e = Permission::new(".*", "(", ".*").unwrap_err();
        assert!(e.contains("invalid regular expression '('"), "{e}");
    }
}
