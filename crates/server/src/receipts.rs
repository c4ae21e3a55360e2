//! Coalesced fan-out of receipt watermarks.
//!
//! A receipt is a watermark beside the log, not an event in it: it commits
//! through the store's group commit, then waits here until the next flush
//! (every [`FLUSH_EVERY`]). A flush sends each conversation's members one
//! `receipts` frame with each moved member's newest marks, so a message
//! read by a thousand members costs a few frames per member, not a
//! thousand.
//!
//! Each change carries the conversation's watermark version after it. A
//! frame claims "applied to the state at `since`, this gives the state at
//! `version`", so it may only cover a contiguous run of versions: changes
//! reach this queue from many request tasks, and one that commits first may
//! arrive second. A run waits for a missing version up to
//! [`GAP_PATIENCE`]; after that the frame claims only from the first
//! version it holds (devices behind that refetch at their next sync).

use confab_protocol::{ConversationId, UserId, Watermark};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::Marked;

/// How often pending watermarks go out: ticks follow within this.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How long a run of versions waits for a missing one.
const GAP_PATIENCE: Duration = Duration::from_secs(1);
/// How long a quiet conversation's last published version is remembered,
/// so a change that arrives after its successor's frame is still seen as
/// late (not as the start of a new run).
const REMEMBER: Duration = Duration::from_secs(10);

/// One frame's worth: the marks that moved in (`since`, `version`].
#[derive(Debug, PartialEq, Eq)]
pub struct Flush {
    pub conversation: ConversationId,
    pub since: i64,
    pub version: i64,
    pub marks: Vec<Watermark>,
}

#[derive(Default)]
struct Pending {
    /// The newest version a frame went out for.
    published: i64,
    /// Changes not yet sent, by version.
    changes: BTreeMap<i64, Watermark>,
    /// Since when the oldest pending change waits on a missing version.
    gap_since: Option<Instant>,
    /// When a change last arrived.
    touched: Option<Instant>,
}

#[derive(Default)]
pub struct Receipts {
    pending: Mutex<HashMap<ConversationId, Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Receipts {
    /// Queues committed changes for the next flush.
    pub fn add(&self, changes: impl IntoIterator<Item = Marked>) {
        let mut pending = lock(&self.pending);
        for c in changes {
            let p = pending.entry(c.conversation).or_insert_with(|| Pending {
                // First news of this conversation since it was last
                // flushed: assume it is the next version.
                published: c.version - 1,
                ..Pending::default()
            });
            p.changes.insert(c.version, c.mark);
            p.touched = Some(Instant::now());
        }
    }

    /// Takes what can go out now: per conversation, the contiguous run of
    /// versions after the last frame (or, past [`GAP_PATIENCE`], whatever
    /// waits), each member's newest marks in it.
    pub fn take(&self, now: Instant) -> Vec<Flush> {
        let mut pending = lock(&self.pending);
        let mut out = Vec::new();
        pending.retain(|conversation, p| {
            let mut marks: HashMap<UserId, Watermark> = HashMap::new();
            let mut merge = |mark: Watermark| {
                let slot = marks.entry(mark.user).or_insert(mark);
                slot.delivered_seq = slot.delivered_seq.max(mark.delivered_seq);
                slot.read_seq = slot.read_seq.max(mark.read_seq);
            };
            // Late changes, whose versions a frame already claimed: their
            // marks go out (they only move forward) under no new claim.
            let rest = p.changes.split_off(&(p.published + 1));
            for (_, mark) in std::mem::replace(&mut p.changes, rest) {
                merge(mark);
            }
            let mut since = p.published;
            if let Some((&next, _)) = p.changes.first_key_value() {
                if next > since + 1 {
                    let waited = *p.gap_since.get_or_insert(now);
                    if now.duration_since(waited) >= GAP_PATIENCE {
                        since = next - 1;
                    }
                }
            }
            let mut version = since;
            while let Some(entry) = p.changes.first_entry() {
                if *entry.key() != version + 1 {
                    break;
                }
                version += 1;
                merge(entry.remove());
            }
            if version > since {
                p.gap_since = None;
            }
            if !marks.is_empty() {
                // A frame that moves no version forward claims nothing.
                let (since, version) = if version > since { (since, version) } else { (p.published, p.published) };
                p.published = p.published.max(version);
                let mut marks: Vec<Watermark> = marks.into_values().collect();
                marks.sort_by_key(|m| m.user);
                out.push(Flush { conversation: *conversation, since, version, marks });
            }
            // Forget a conversation quiet for a while: its next change
            // starts it again.
            !p.changes.is_empty() || p.touched.is_some_and(|t| now.saturating_duration_since(t) < REMEMBER)
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn marked(conversation: ConversationId, user: UserId, seq: i64, version: i64) -> Marked {
        Marked { conversation, mark: Watermark { user, delivered_seq: seq, read_seq: 0 }, version }
    }

    #[test]
    fn a_run_of_changes_goes_out_as_one_frame_with_each_members_newest() {
        let r = Receipts::default();
        let (c, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        r.add([marked(c, a, 1, 5), marked(c, b, 1, 6), marked(c, a, 2, 7)]);
        let out = r.take(Instant::now());
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].since, out[0].version), (4, 7));
        let seqs: HashMap<UserId, i64> = out[0].marks.iter().map(|m| (m.user, m.delivered_seq)).collect();
        assert_eq!(seqs, HashMap::from([(a, 2), (b, 1)]));
        assert!(r.take(Instant::now()).is_empty(), "nothing twice");
    }

    #[test]
    fn a_missing_version_holds_the_run_until_it_arrives_or_patience_ends() {
        let r = Receipts::default();
        let (c, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        r.add([marked(c, a, 1, 1)]);
        let t0 = Instant::now();
        assert_eq!(r.take(t0)[0].version, 1);
        // Version 2 committed first but is late; 3 must not claim it.
        r.add([marked(c, b, 3, 3)]);
        assert!(r.take(t0).is_empty());
        r.add([marked(c, a, 2, 2)]);
        let out = r.take(t0);
        assert_eq!((out[0].since, out[0].version, out[0].marks.len()), (1, 3, 2));

        // A version that never comes: after the patience, claim only what
        // is held.
        r.add([marked(c, a, 5, 5)]);
        assert!(r.take(t0).is_empty());
        let out = r.take(t0 + GAP_PATIENCE);
        assert_eq!((out[0].since, out[0].version), (4, 5));
        // And if it comes after all, its marks go out claiming nothing.
        r.add([marked(c, b, 4, 4)]);
        let out = r.take(t0 + GAP_PATIENCE);
        assert_eq!((out[0].since, out[0].version, out[0].marks.len()), (5, 5, 1));
    }
}
