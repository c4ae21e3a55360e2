//! One lock per conversation, held around check → commit → publish (see
//! [`crate::service`]). A lock exists only while someone holds or waits
//! for it: striped locks made unrelated conversations wait for each other's
//! commits, which was most of the tail latency with thousands of groups.

use confab_protocol::ConversationId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use tokio::sync::{Mutex, OwnedMutexGuard};

#[derive(Default)]
pub(crate) struct ConversationLocks {
    held: SyncMutex<HashMap<ConversationId, Arc<Mutex<()>>>>,
}

impl ConversationLocks {
    /// Waits for `conversation`'s lock.
    pub(crate) async fn lock(&self, conversation: ConversationId) -> ConversationGuard<'_> {
        let lock = {
            let mut map = self.map();
            // A wait that was cancelled (its request dropped) leaves its
            // entry behind; sweep those now and then, amortized O(1).
            if map.len() >= 1024 && map.len().is_power_of_two() {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(conversation).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        ConversationGuard { locks: self, conversation, guard: Some(guard) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ConversationId, Arc<Mutex<()>>>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

pub(crate) struct ConversationGuard<'a> {
    locks: &'a ConversationLocks,
    conversation: ConversationId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for ConversationGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // Only the map holds it: nobody holds or waits (a waiter holds a
        // clone, and cloning needs the map, which is ours now).
        if map.get(&self.conversation).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(&self.conversation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_conversation_waits_others_do_not_and_nothing_is_left_behind() {
        let locks = Arc::new(ConversationLocks::default());
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let held = locks.lock(a).await;
        // Another conversation is not held up.
        tokio::time::timeout(Duration::from_millis(100), locks.lock(b)).await.expect("b is free");
        // The same one is, until released.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock(a).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second holder of one conversation's lock");
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("released").unwrap();
        assert_eq!(locks.len(), 0, "released locks are forgotten");
    }
}
