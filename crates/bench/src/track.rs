//! What a subscriber learns from the messages it receives: latency, and per publisher whether each sequence number
//! arrived once, in order. Pure data, unit-tested.

use hdrhistogram::Histogram;

/// Bytes every payload starts with: publisher id, sequence number, send time (ns since the run's epoch).
pub const HEADER: usize = 4 + 8 + 8;

pub fn write_header(buf: &mut [u8], publisher: u32, seq: u64, sent_ns: u64) {
    buf[..4].copy_from_slice(&publisher.to_be_bytes());
    buf[4..12].copy_from_slice(&seq.to_be_bytes());
    buf[12..20].copy_from_slice(&sent_ns.to_be_bytes());
}

pub fn read_header(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let p = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
    let s = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    let t = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
    Some((p, s, t))
}

/// How much history a stream keeps to tell a duplicate from a late message.
const WINDOW: u64 = 4096;

/// One publisher's messages as one subscriber sees them.
#[derive(Debug, Default, Clone)]
struct Stream {
    /// Highest sequence number seen + 1.
    next: u64,
    /// The last `WINDOW` sequence numbers as a ring: bit `seq % WINDOW` set if `seq` was seen. Moving forward
    /// clears only the bits it passes (one, for a message in order), not the whole window.
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl Stream {
    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn record(&mut self, seq: u64) {
        if self.seen.is_empty() {
            self.seen = vec![0; (WINDOW / 64) as usize];
        }
        if seq >= self.next {
            // The sequence numbers passed over (not seen, or not yet) and this one leave the window's far end.
            if seq - self.next >= WINDOW {
                self.seen.iter_mut().for_each(|w| *w = 0);
            } else {
                for s in self.next..=seq {
                    let (word, mask) = Stream::bit(s);
                    self.seen[word] &= !mask;
                }
            }
            let (word, mask) = Stream::bit(seq);
            self.seen[word] |= mask;
            self.next = seq + 1;
            self.unique += 1;
            return;
        }
        if self.next - seq > WINDOW {
            // Older than the window: it cannot be told apart; count it as a duplicate, the worse reading.
            self.duplicates += 1;
            return;
        }
        let (word, mask) = Stream::bit(seq);
        if self.seen[word] & mask != 0 {
            self.duplicates += 1;
        } else {
            self.seen[word] |= mask;
            self.unique += 1;
            self.out_of_order += 1;
        }
    }
}

/// Publisher ids the tracker keeps apart (ids are the load generator's own, from 0); a message claiming a higher
/// one counts as a duplicate, the worse reading.
const MAX_PUBLISHERS: usize = 1 << 20;

/// Everything one subscriber (or several, merged) saw.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// By publisher id.
    streams: Vec<Stream>,
    /// Messages with a publisher id past `MAX_PUBLISHERS`.
    foreign: u64,
    pub latency_us: Histogram<u64>,
    pub received: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            streams: Vec::new(),
            foreign: 0,
            // 1 µs to 100 s, 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds"),
            received: 0,
        }
    }
}

/// The totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl Tracker {
    pub fn record(&mut self, publisher: u32, seq: u64, latency_ns: u64) {
        self.received += 1;
        let i = publisher as usize;
        if i >= self.streams.len() {
            if i >= MAX_PUBLISHERS {
                self.foreign += 1;
                return;
            }
            self.streams.resize_with(i + 1, Stream::default);
        }
        self.streams[i].record(seq);
        let _ = self.latency_us.record((latency_ns / 1000).max(1));
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts { received: self.received, duplicates: self.foreign, ..Counts::default() };
        for s in &self.streams {
            c.unique += s.unique;
            c.duplicates += s.duplicates;
            c.out_of_order += s.out_of_order;
        }
        c
    }

    /// Adds another subscriber's counts and latencies (streams are kept apart: each subscriber is its own view).
    pub fn merge_counts(total: &mut Counts, other: Counts) {
        total.received += other.received;
        total.unique += other.unique;
        total.duplicates += other.duplicates;
        total.out_of_order += other.out_of_order;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> Counts {
        let mut t = Tracker::default();
        for s in seqs {
            t.record(1, *s, 1000);
        }
        t.counts()
    }

    #[test]
    fn in_order_stream() {
        assert_eq!(run(&[0, 1, 2, 3]), Counts { received: 4, unique: 4, duplicates: 0, out_of_order: 0 });
    }

    #[test]
    fn duplicates_and_late_arrivals() {
        // 2 comes late (out of order, not lost), 3 twice (a duplicate), 5 never (lost: expected - unique).
        assert_eq!(run(&[0, 1, 3, 2, 3, 4, 6]), Counts { received: 7, unique: 6, duplicates: 1, out_of_order: 1 });
    }

    #[test]
    fn window_moves_across_word_boundaries() {
        let mut seqs: Vec<u64> = (0..300).collect();
        seqs.push(250);
        seqs.push(10_000);
        seqs.push(9_999);
        seqs.push(9_999);
        let c = run(&seqs);
        assert_eq!((c.unique, c.duplicates, c.out_of_order), (302, 2, 1));
    }

    #[test]
    fn publishers_are_kept_apart_and_an_impossible_id_counts_as_a_duplicate() {
        let mut t = Tracker::default();
        for (publisher, seq) in [(0, 0), (5, 0), (0, 1), (5, 1), (5, 1), (u32::MAX, 0)] {
            t.record(publisher, seq, 1000);
        }
        assert_eq!(t.counts(), Counts { received: 6, unique: 4, duplicates: 2, out_of_order: 0 });
    }

    #[test]
    fn a_window_full_of_gaps_then_a_late_one() {
        // Every other number missing over more than a window: the late ones older than the window are duplicates
        // (the worse reading), the ones inside it are late arrivals.
        let evens: Vec<u64> = (0..2 * WINDOW).step_by(2).collect();
        let mut seqs = evens.clone();
        seqs.push(2 * WINDOW - 3); // inside the window, never seen
        seqs.push(1); // far older than the window
        seqs.push(2 * WINDOW - 4); // inside the window, seen
        let c = run(&seqs);
        assert_eq!((c.unique, c.duplicates, c.out_of_order), (WINDOW + 1, 2, 1));
    }

    #[test]
    fn header_round_trips() {
        let mut buf = [0u8; 32];
        write_header(&mut buf, 7, 42, 99);
        assert_eq!(read_header(&buf), Some((7, 42, 99)));
        assert_eq!(read_header(&buf[..10]), None);
    }

    #[test]
    fn latency_histogram() {
        let mut t = Tracker::default();
        for i in 1..=100 {
            t.record(1, i, i * 1_000_000);
        }
        assert_eq!(t.latency_us.value_at_quantile(0.5) / 1000, 50);
    }
}
