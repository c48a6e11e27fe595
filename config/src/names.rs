//! Names of the NATS objects that belong to a route.
//!
//! Everything that JetStream or NATS sees is named here and nowhere else, so the
//! operator (which creates the objects), the dispatcher (which consumes them) and the
//! gateway (which publishes) cannot disagree.
//!
//! Layout for route `orders` in namespace `shop` with target `email`:
//!
//! | object                 | name                               |
//! |------------------------|------------------------------------|
//! | stream                 | `fanout_shop_orders`               |
//! | ingest subjects        | `fanout.in.shop.orders.>`          |
//! | redrive subject        | `fanout.redrive.shop.orders.email` |
//! | consumer (per target)  | `email` (in the route's stream)    |
//! | dead-letter stream     | `fanout_shop_orders_dlq`           |
//! | dead-letter subject    | `fanout.dlq.shop.orders.email`     |
//! | history stream         | `fanout_shop_orders_attempts`      |
//! | history subject        | `fanout.attempts.shop.orders.email.<b>` (`<b>`: the event id's bucket, see [`crate::history`]) |
//! | health KV bucket       | `fanout_health`                    |
//! | health key             | `shop.orders.email.<pod>`          |
//! | replay KV bucket       | `fanout_replays`                   |
//! | replayed copy's msg id | `replay:<replay id>:<sequence>`    |
//! | replay's reader        | `fanout_replay_<random>` (a consumer) |
//!
//! Stream names join the parts with `_`, which Kubernetes names cannot contain, so
//! `a-b`/`c` and `a`/`b-c` never collide. Subjects use the parts as tokens; route
//! names are refused by the schema if they contain dots.

/// Prefix of every subject Fanout owns; users cannot configure subjects under it.
pub const RESERVED_SUBJECT_PREFIX: &str = "fanout.";

/// KV bucket that dispatchers write per-target health snapshots to.
pub const HEALTH_BUCKET: &str = "fanout_health";

/// KV bucket that replays record their progress in, one key per replay id, so an
/// interrupted replay resumes where it stopped.
pub const REPLAY_BUCKET: &str = "fanout_replays";

/// The `Nats-Msg-Id` of the copy a replay publishes of the event stored at
/// `sequence`: a replay that resumes and publishes it again within the stream's
/// duplicate window is stored once.
pub fn replay_message_id(replay: &str, sequence: u64) -> String {
    format!("replay:{replay}:{sequence}")
}

/// Prefix of the temporary consumers a replay reads a route's stream with. Target
/// names, and so the route's own consumers, cannot contain `_`: the provisioner tells
/// the two apart and leaves a replay's reader alone.
pub const REPLAY_READER_PREFIX: &str = "fanout_replay_";

/// KV bucket of the keys that ordered targets with `afterDeadLetter: block` hold
/// back until a dead letter is redriven: one entry per blocked key.
pub const ORDERING_BUCKET: &str = "fanout_ordering";

/// Identifies one route: its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub namespace: String,
    pub name: String,
}

impl RouteKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        RouteKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The route's JetStream stream.
    pub fn stream(&self) -> String {
        format!("fanout_{}_{}", self.namespace, self.name)
    }

    /// The route's dead-letter stream.
    pub fn dead_letter_stream(&self) -> String {
        format!("fanout_{}_{}_dlq", self.namespace, self.name)
    }

    /// The route's delivery history: a record of every attempt (see
    /// [`crate::history`]).
    pub fn attempts_stream(&self) -> String {
        attempts_stream_of(&self.stream())
    }

    /// Wildcard covering the history subjects of every target of the route.
    pub fn attempts_subjects(&self) -> String {
        format!("{}.>", self.attempts_prefix())
    }

    /// Prefix of the history subjects: `<prefix>.<target>.<bucket>`.
    pub fn attempts_prefix(&self) -> String {
        format!("fanout.attempts.{}.{}", self.namespace, self.name)
    }

    /// Subject prefix the gateway publishes under: events go to
    /// `fanout.in.<ns>.<route>.<type>`.
    pub fn ingest_prefix(&self) -> String {
        format!("fanout.in.{}.{}", self.namespace, self.name)
    }

    /// Wildcard covering every ingest subject of the route.
    pub fn ingest_subjects(&self) -> String {
        format!("{}.>", self.ingest_prefix())
    }

    /// Wildcard covering the redrive subjects of all targets of the route.
    pub fn redrive_subjects(&self) -> String {
        format!("fanout.redrive.{}.{}.*", self.namespace, self.name)
    }

    /// Subject that re-sends an event to one target only: its consumer listens here
    /// besides the route's subjects, the other targets' consumers do not.
    pub fn redrive_subject(&self, target: &str) -> String {
        format!("fanout.redrive.{}.{}.{target}", self.namespace, self.name)
    }

    /// Wildcard covering the dead-letter subjects of all targets of the route.
    pub fn dead_letter_subjects(&self) -> String {
        format!("fanout.dlq.{}.{}.*", self.namespace, self.name)
    }

    /// Subject a target's undeliverable events are published to.
    pub fn dead_letter_subject(&self, target: &str) -> String {
        format!("fanout.dlq.{}.{}.{target}", self.namespace, self.name)
    }

    /// Durable consumer of a target within the route's stream.
    pub fn consumer(&self, target: &str) -> String {
        target.to_string()
    }

    /// Key prefix of all health snapshots of the route (every target, every pod).
    pub fn health_route_prefix(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// Key prefix of all health snapshots of one target (one key per dispatcher pod).
    pub fn health_key_prefix(&self, target: &str) -> String {
        format!("{}.{target}", self.health_route_prefix())
    }

    /// Key prefix of the blocked keys of one ordered target, in
    /// [`ORDERING_BUCKET`] (each followed by `.` and a digest of the key).
    pub fn ordering_key_prefix(&self, target: &str) -> String {
        self.health_key_prefix(target)
    }

    /// Health snapshot key of one target as seen by one dispatcher pod.
    pub fn health_key(&self, target: &str, pod: &str) -> String {
        // KV keys allow `[-/_=.a-zA-Z0-9]`; pod names are DNS subdomains, so only dots
        // need care: they would add tokens to the key.
        format!(
            "{}.{}",
            self.health_key_prefix(target),
            pod.replace('.', "_")
        )
    }

    /// Name shared by the route's Deployment, ConfigMap and ServiceAccount.
    pub fn dispatcher_object_name(&self) -> String {
        format!("{}-dispatcher", self.name)
    }
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The history stream that belongs to the route stream `stream`, so a plan that
/// lacks one (history disabled) still names the stream to remove.
pub fn attempts_stream_of(stream: &str) -> String {
    format!("{stream}_attempts")
}

/// Whether `subject` matches the NATS subject `pattern` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject matched by `inner` is also matched by `outer`.
pub fn subject_pattern_within(inner: &str, outer: &str) -> bool {
    let mut inner_tokens = inner.split('.');
    let mut outer_tokens = outer.split('.');
    loop {
        match (inner_tokens.next(), outer_tokens.next()) {
            (Some(_), Some(">")) => return true,
            (Some(">"), Some(_)) => return false,
            (Some(_), Some("*")) => {}
            (Some(i), Some(o)) if i == o => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject is matched by both patterns. JetStream refuses a stream whose
/// subjects collide like this (each event would be stored once per match).
pub fn subject_patterns_collide(a: &str, b: &str) -> bool {
    let mut a_tokens = a.split('.');
    let mut b_tokens = b.split('.');
    loop {
        match (a_tokens.next(), b_tokens.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> RouteKey {
        RouteKey::new("shop", "orders")
    }

    #[test]
    fn stream_names_are_derived_from_namespace_and_route() {
        assert_eq!(orders().stream(), "fanout_shop_orders");
        assert_eq!(orders().dead_letter_stream(), "fanout_shop_orders_dlq");
        assert_eq!(orders().consumer("email"), "email");
        assert_eq!(orders().attempts_stream(), "fanout_shop_orders_attempts");
        assert_eq!(
            orders().attempts_subjects(),
            "fanout.attempts.shop.orders.>"
        );
    }

    #[test]
    fn stream_names_do_not_collide_across_dashes() {
        let a = RouteKey::new("a-b", "c");
        let b = RouteKey::new("a", "b-c");
        assert_ne!(a.stream(), b.stream());
        assert_ne!(a.dead_letter_stream(), b.dead_letter_stream());
    }

    #[test]
    fn dead_letter_stream_cannot_equal_another_routes_stream() {
        // A route named "orders_dlq" cannot exist (underscore is not allowed in names),
        // so the only way to end in "_dlq" is the dead-letter stream itself.
        assert!(orders().dead_letter_stream().ends_with("_dlq"));
        assert!(!orders().stream().ends_with("_dlq"));
    }

    #[test]
    fn subjects_are_under_the_reserved_prefix() {
        let r = orders();
        for s in [
            r.ingest_subjects(),
            r.redrive_subjects(),
            r.redrive_subject("email"),
            r.dead_letter_subjects(),
            r.dead_letter_subject("email"),
            r.attempts_subjects(),
        ] {
            assert!(s.starts_with(RESERVED_SUBJECT_PREFIX), "{s}");
        }
    }

    #[test]
    fn redrive_and_dead_letter_subjects_fall_under_their_wildcards() {
        let r = orders();
        assert!(subject_matches(
            &r.redrive_subjects(),
            &r.redrive_subject("email")
        ));
        assert!(subject_matches(
            &r.dead_letter_subjects(),
            &r.dead_letter_subject("email")
        ));
        assert!(subject_matches(
            &r.ingest_subjects(),
            "fanout.in.shop.orders.order.placed"
        ));
        // One target's redrive subject is not another's.
        assert!(!subject_matches(
            &r.redrive_subject("email"),
            &r.redrive_subject("crm")
        ));
        // Redrives are not ingest: other targets' consumers never see them.
        assert!(!subject_matches(
            &r.ingest_subjects(),
            &r.redrive_subject("email")
        ));
    }

    #[test]
    fn health_keys_are_per_target_and_pod() {
        let r = orders();
        assert_eq!(
            r.health_key("email", "orders-dispatcher-7d9f-abcde"),
            "shop.orders.email.orders-dispatcher-7d9f-abcde"
        );
        assert_eq!(
            r.health_key("email", "host.local"),
            "shop.orders.email.host_local"
        );
        assert!(
            r.health_key("email", "p")
                .starts_with(&r.health_key_prefix("email"))
        );
    }

    #[test]
    fn pattern_containment_follows_wildcards() {
        assert!(subject_pattern_within(
            "shop.orders.placed",
            "shop.orders.>"
        ));
        assert!(subject_pattern_within("shop.orders.*", "shop.>"));
        assert!(subject_pattern_within("shop.*.placed", "shop.*.*"));
        assert!(subject_pattern_within("a.b", "a.b"));
        assert!(!subject_pattern_within("shop.>", "shop.orders.>"));
        assert!(!subject_pattern_within("shop.*", "shop.orders"));
        assert!(!subject_pattern_within("shop.orders.>", "shop.orders.*"));
        assert!(!subject_pattern_within("other.x", "shop.>"));
        assert!(!subject_pattern_within("shop", "shop.>"));
    }

    #[test]
    fn subject_matching_follows_nats_wildcards() {
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(">", "anything.at.all"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
        assert!(subject_matches("a.b", "a.b"));
    }

    #[test]
    fn patterns_collide_when_one_subject_matches_both() {
        for (a, b) in [
            ("shop.orders.>", "shop.orders.placed"),
            ("shop.*.placed", "shop.orders.*"),
            ("shop.>", "shop.*.x.>"),
            ("a.b", "a.b"),
            ("a.*", "a.>"),
        ] {
            assert!(subject_patterns_collide(a, b), "{a} {b}");
            assert!(subject_patterns_collide(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("shop.orders", "shop.orders.>"),
            ("shop.*", "shop.*.x"),
            ("shop.orders.placed", "shop.orders.cancelled"),
            ("shop.*.placed", "billing.*.placed"),
        ] {
            assert!(!subject_patterns_collide(a, b), "{a} {b}");
            assert!(!subject_patterns_collide(b, a), "{b} {a}");
        }
    }
}
