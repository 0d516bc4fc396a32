//! Counters of one node, read by `$SYS/` and the binary's `/metrics`. Relaxed atomics: each is a count on
//! its own, no two need to agree at an instant.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub connections_total: AtomicU64,
    pub clients_connected: AtomicU64,
    pub clients_maximum: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    /// Messages not delivered to a subscriber: queue full, QoS 0 for an offline client, too large for the client.
    pub publish_dropped: AtomicU64,
    /// Publishes refused because the payload is over `message_size_limit`.
    pub publish_too_large: AtomicU64,
    /// Payload bytes of the PUBLISH packets received and sent (Mosquitto's `publish/bytes/*`).
    pub publish_bytes_received: AtomicU64,
    pub publish_bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Persistent sessions ended by their expiry interval.
    pub sessions_expired: AtomicU64,
    /// CONNECTs refused for their credentials (wrong password, unknown user, anonymous where not allowed).
    pub auth_failures: AtomicU64,
    /// Publishes and deliveries the ACL refused.
    pub acl_denied: AtomicU64,
    /// Copies of a message not queued for a session that moved here from another node, because it already had
    /// that message: during the move it can come two ways (see `Session::first_delivery`).
    pub duplicates_skipped: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a client in, unless that would pass `limit` (0 = none); true if it was counted. Counting and checking
    /// are one step, so two clients arriving together cannot both take the last place.
    pub fn client_connected(&self, limit: usize) -> bool {
        let now = self.clients_connected.fetch_add(1, Ordering::AcqRel) + 1;
        if limit != 0 && now as usize > limit {
            self.clients_connected.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn client_disconnected(&self) {
        self.clients_connected.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket: `rate` tokens a second, at most one second's worth saved up.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl Bucket {
    pub fn new(rate: f64) -> Bucket {
        Bucket { rate, tokens: rate, last: std::time::Instant::now() }
    }

    /// Takes a token, or says how long until there is one.
    pub fn take(&mut self) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_then_asks_to_wait() {
        let mut b = Bucket::new(10.0);
        assert!((0..10).all(|_| b.take().is_ok()), "a second's worth at once");
        let wait = b.take().expect_err("the eleventh waits");
        assert!(wait > std::time::Duration::from_millis(50) && wait <= std::time::Duration::from_millis(110));
    }
}
