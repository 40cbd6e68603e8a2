//! The source half's answers protocol: every listing sent waits for the target's answer (the
//! files it needs from it), answers come in order and each names the listing it answers, a need
//! must name a file of that listing, and at most [`UNANSWERED_LISTINGS_MAX`] listings wait at
//! once (a target that reads listings and never answers cannot make the source hold the whole
//! tree).
//!
//! No I/O: the shell asks [`Answers::may_send`] before it sends a listing (and waits for an
//! answer while it may not), records it with [`Answers::sent`], and turns an answer into work
//! with [`Answers::answer`].

use std::collections::VecDeque;

use blitx_core::manifest::{Entry, EntryKind, FileId, IdMap};

use crate::error::Violation;

/// Listings sent and not yet answered at most before the walk waits.
pub const UNANSWERED_LISTINGS_MAX: usize = 1024;

/// What the source remembers of a listed file until the target has decided about it.
pub trait Listed: Sized {
    fn id(&self) -> FileId;
    /// The file of a listing entry; `None` for entries that are not files.
    fn of(entry: &Entry) -> Option<Self>;
}

#[derive(Debug)]
struct Unanswered<F> {
    seq: u64,
    files: Vec<F>,
}

/// Listings awaiting their answers.
#[derive(Debug)]
pub struct Answers<F> {
    queue: VecDeque<Unanswered<F>>,
    next_seq: u64,
    limit: usize,
}

impl<F: Listed> Default for Answers<F> {
    fn default() -> Self {
        Self::with_limit(UNANSWERED_LISTINGS_MAX)
    }
}

impl<F: Listed> Answers<F> {
    pub fn with_limit(limit: usize) -> Self {
        assert!(limit > 0);
        Answers { queue: VecDeque::new(), next_seq: 0, limit }
    }

    /// Whether another listing may be sent now.
    pub fn may_send(&self) -> bool {
        self.queue.len() < self.limit
    }

    pub fn unanswered(&self) -> usize {
        self.queue.len()
    }

    /// A listing with `entries` is sent; returns its sequence number (which its answer names).
    pub fn sent(&mut self, entries: &[Entry]) -> u64 {
        debug_assert!(self.may_send(), "the shell waits while may_send() is false");
        let seq = self.next_seq;
        self.next_seq += 1;
        let files =
            entries.iter().filter(|e| e.kind == EntryKind::File).filter_map(F::of).collect();
        self.queue.push_back(Unanswered { seq, files });
        seq
    }

    /// The target answered listing `seq` with the files it needs: they are returned in the
    /// order asked, and the rest of the listing is forgotten.
    pub fn answer(&mut self, seq: u64, needed: &[FileId]) -> Result<Vec<F>, Violation> {
        let Some(front) = self.queue.front() else { return Err(Violation::AnswerForNoListing) };
        if front.seq != seq {
            return Err(Violation::AnswerOutOfOrder { answered: seq, expected: front.seq });
        }
        let Some(listing) = self.queue.pop_front() else {
            return Err(Violation::AnswerForNoListing);
        };
        if needed.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_id: IdMap<F> = listing.files.into_iter().map(|f| (f.id(), f)).collect();
        needed.iter().map(|id| by_id.remove(id).ok_or(Violation::NeedNotListed(*id))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitx_core::RelPath;

    #[derive(Debug, PartialEq)]
    struct F(FileId);
    impl Listed for F {
        fn id(&self) -> FileId {
            self.0
        }
        fn of(e: &Entry) -> Option<Self> {
            Some(F(e.id))
        }
    }

    fn file(id: FileId) -> Entry {
        Entry {
            id,
            path: RelPath::parse(format!("f{id}").as_bytes()).unwrap(),
            kind: EntryKind::File,
            size_bytes: 1,
            mtime: blitx_core::manifest::Timestamp { sec: 0, nsec: 0 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            link_target: None,
            inode: None,
            sparse: false,
            content_hash: None,
        }
    }

    #[test]
    fn answers_come_in_order_and_name_their_listing() {
        let mut a: Answers<F> = Answers::with_limit(2);
        let s0 = a.sent(&[file(1), file(2)]);
        let s1 = a.sent(&[file(3)]);
        assert!(!a.may_send());
        assert_eq!(
            a.answer(s1, &[3]),
            Err(Violation::AnswerOutOfOrder { answered: s1, expected: s0 })
        );
        assert_eq!(a.answer(s0, &[2]).unwrap(), vec![F(2)]);
        assert!(a.may_send());
        assert_eq!(a.answer(s1, &[1]), Err(Violation::NeedNotListed(1)));
        assert_eq!(a.answer(s1 + 1, &[]), Err(Violation::AnswerForNoListing));
    }

    #[test]
    fn a_file_is_needed_once() {
        let mut a: Answers<F> = Answers::default();
        let s = a.sent(&[file(7)]);
        assert_eq!(a.answer(s, &[7, 7]), Err(Violation::NeedNotListed(7)));
    }
}
