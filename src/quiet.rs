//! Keeps the Raft library's repeated warnings from flooding the log. While a peer is down, openraft reports every
//! failed heartbeat and replication attempt (several lines a second per peer, for as long as the outage lasts).
//! The cluster says itself, once, when a node stops answering and when it answers again; of the library's warnings
//! and errors, each kind (each place in its code that logs) is let through once a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How often one kind of the library's warnings is let through.
pub const EVERY: Duration = Duration::from_secs(60);

/// The layer (see the module's comment); `every` is how often each kind passes.
pub struct QuietRaft {
    every: Duration,
    last: Mutex<HashMap<Identifier, Instant>>,
}

impl QuietRaft {
    pub fn new(every: Duration) -> QuietRaft {
        QuietRaft { every, last: Mutex::new(HashMap::new()) }
    }

    /// Whether an event of `callsite` at `now` passes.
    fn pass(&self, callsite: Identifier, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(&callsite) {
            Some(at) if now.duration_since(*at) < self.every => false,
            _ => {
                last.insert(callsite, now);
                true
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for QuietRaft {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Only warnings and errors: the library's info and debug lines are asked for by name, and then all wanted.
        if *meta.level() > Level::WARN || !meta.target().starts_with("openraft") {
            return true;
        }
        self.pass(meta.callsite(), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn each_kind_of_raft_warning_passes_once_a_minute_and_the_rest_all_pass() {
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(QuietRaft::new(EVERY)).with(Count(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..50 {
                tracing::error!(target: "openraft::replication", "peer unreachable");
                tracing::warn!(target: "openraft::engine", "heartbeat error");
            }
            assert_eq!(seen.load(Ordering::Relaxed), 2, "one of each kind");
            for _ in 0..5 {
                tracing::info!(target: "openraft::core", "an info line asked for");
                tracing::warn!(target: "skein_cluster::node", "our own warning");
            }
            assert_eq!(seen.load(Ordering::Relaxed), 12, "the library's info lines and other targets all pass");
        });
    }

    #[test]
    fn a_kind_passes_again_once_the_interval_is_over() {
        let quiet = QuietRaft::new(Duration::from_secs(60));
        let id = tracing::callsite::Identifier(&CALLSITE);
        let t0 = Instant::now();
        assert!(quiet.pass(id.clone(), t0));
        assert!(!quiet.pass(id.clone(), t0 + Duration::from_secs(59)));
        assert!(quiet.pass(id.clone(), t0 + Duration::from_secs(60)));
        assert!(!quiet.pass(id, t0 + Duration::from_secs(61)));
    }

    struct Site;
    static CALLSITE: Site = Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!("not asked for in this test")
        }
    }
}
