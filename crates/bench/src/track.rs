//! What a subscriber learns from the messages it receives: latency, and per publisher whether each sequence number
//! arrived once, in order. Pure data, unit-tested.

use std::collections::HashMap;

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
    /// Bit i set: sequence `next - 1 - i` was seen.
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl Stream {
    fn bit(&self, seq: u64) -> Option<(usize, u64)> {
        let back = self.next.checked_sub(1)?.checked_sub(seq)?;
        (back < WINDOW).then(|| ((back / 64) as usize, 1u64 << (back % 64)))
    }

    fn record(&mut self, seq: u64) {
        if self.seen.is_empty() {
            self.seen = vec![0; (WINDOW / 64) as usize];
        }
        if seq >= self.next {
            let shift = seq + 1 - self.next;
            self.shift(shift);
            self.next = seq + 1;
            self.seen[0] |= 1;
            self.unique += 1;
            return;
        }
        match self.bit(seq) {
            Some((word, mask)) if self.seen[word] & mask != 0 => self.duplicates += 1,
            Some((word, mask)) => {
                self.seen[word] |= mask;
                self.unique += 1;
                self.out_of_order += 1;
            }
            // Older than the window: it cannot be told apart; count it as a duplicate, the worse reading.
            None => self.duplicates += 1,
        }
    }

    /// Moves the window forward by `n` sequence numbers.
    fn shift(&mut self, n: u64) {
        if n >= WINDOW {
            self.seen.iter_mut().for_each(|w| *w = 0);
            return;
        }
        let (words, bits) = ((n / 64) as usize, (n % 64) as u32);
        let len = self.seen.len();
        for i in (0..len).rev() {
            let src = i.checked_sub(words);
            let hi = src.map_or(0, |s| self.seen[s]);
            let lo = src.and_then(|s| s.checked_sub(1)).map_or(0, |s| self.seen[s]);
            self.seen[i] = if bits == 0 { hi } else { (hi << bits) | (lo >> (64 - bits)) };
        }
    }
}

/// Everything one subscriber (or several, merged) saw.
#[derive(Debug, Clone)]
pub struct Tracker {
    streams: HashMap<u32, Stream>,
    pub latency_us: Histogram<u64>,
    pub received: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            streams: HashMap::new(),
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
        self.streams.entry(publisher).or_default().record(seq);
        let _ = self.latency_us.record((latency_ns / 1000).max(1));
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts { received: self.received, ..Counts::default() };
        for s in self.streams.values() {
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
