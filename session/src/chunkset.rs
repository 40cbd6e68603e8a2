//! Which chunks of a file have arrived: a set of runs, so its memory follows what arrived (one
//! run for chunks that came in order), never the size a peer declared. A declared 2^64-byte
//! file costs nothing until data for it comes.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct ChunkSet {
    /// Start → end (exclusive) of each run of marked chunks; runs never touch or overlap.
    runs: BTreeMap<u64, u64>,
    total: u64,
    done: u64,
}

impl ChunkSet {
    pub fn new(total: u64) -> Self {
        ChunkSet { runs: BTreeMap::new(), total, done: 0 }
    }

    /// Marks chunk `i`; false if it was already marked or out of range.
    pub fn mark(&mut self, i: u64) -> bool {
        self.mark_run(i, 1)
    }

    /// Marks chunks `first .. first + count`; false (and nothing marked) if any of them was
    /// marked already, the run is empty or it leaves the file.
    pub fn mark_run(&mut self, first: u64, count: u64) -> bool {
        let Some(end) = first.checked_add(count).filter(|&e| count > 0 && e <= self.total) else {
            return false;
        };
        // The run starting at or before `first`, and the first one starting after it.
        let before = self.runs.range(..=first).next_back().map(|(&s, &e)| (s, e));
        let after = self.runs.range(first + 1..).next().map(|(&s, &e)| (s, e));
        if before.is_some_and(|(_, e)| e > first) || after.is_some_and(|(s, _)| s < end) {
            return false;
        }
        let mut start = first;
        let mut stop = end;
        if let Some((s, e)) = before
            && e == first
        {
            self.runs.remove(&s);
            start = s;
        }
        if let Some((s, e)) = after
            && s == end
        {
            self.runs.remove(&s);
            stop = e;
        }
        self.runs.insert(start, stop);
        self.done += count;
        true
    }

    pub fn is_complete(&self) -> bool {
        self.done == self.total
    }

    pub fn done(&self) -> u64 {
        self.done
    }

    /// Runs held (memory is proportional to this).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The marked chunks as (first, count) runs, in order; at most `max` of them (the first
    /// ones: a caller that can keep only some keeps a true subset).
    pub fn run_list(&self, max: usize) -> Vec<(u64, u64)> {
        self.runs.iter().take(max).map(|(&s, &e)| (s, e - s)).collect()
    }

    /// Whether chunk `i` is marked.
    pub fn contains(&self, i: u64) -> bool {
        self.runs.range(..=i).next_back().is_some_and(|(_, &e)| e > i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_set_counts_once() {
        let mut s = ChunkSet::new(130);
        assert!(s.mark(0));
        assert!(!s.mark(0));
        assert!(!s.mark(130));
        for i in (1..130).rev() {
            assert!(s.mark(i));
        }
        assert!(s.is_complete());
        assert_eq!((s.done(), s.runs()), (130, 1));
    }

    /// Row 4 of the hardening review: the bitmap was allocated for the declared size, so a
    /// declared 2^64-1-byte file aborted the process.
    #[test]
    fn a_huge_declared_file_costs_nothing_until_data_comes() {
        let mut s = ChunkSet::new(u64::MAX / 4096);
        assert_eq!(s.runs(), 0);
        assert!(s.mark_run(5, u64::MAX / 4096 - 5));
        assert!(!s.mark(7));
        assert!(!s.mark_run(0, u64::MAX));
        assert!(s.mark_run(0, 5));
        assert!(s.is_complete());
        assert_eq!(s.runs(), 1);
    }

    proptest! {
        /// Against a plain set: every chunk is marked at most once, runs that overlap anything
        /// are refused whole, and `done` counts exactly the marked chunks.
        #[test]
        fn runs_match_a_plain_set(ops in proptest::collection::vec((0u64..64, 0u64..6), 0..80)) {
            let mut s = ChunkSet::new(64);
            let mut plain = std::collections::BTreeSet::new();
            for (first, count) in ops {
                let fits = count > 0 && first + count <= 64;
                let free = (first..first + count).all(|i| !plain.contains(&i));
                let ok = s.mark_run(first, count);
                prop_assert_eq!(ok, fits && free);
                if ok {
                    plain.extend(first..first + count);
                }
                prop_assert_eq!(s.done(), plain.len() as u64);
            }
            prop_assert_eq!(s.is_complete(), plain.len() == 64);
        }
    }
}
