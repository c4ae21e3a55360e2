//! Gap-free resume: applies server events to the cache in order, exactly
//! once, and fills any gap from the server's log.
//!
//! After each (re)connect the sync task asks for the conversation list and,
//! for each conversation the server is ahead on, pages through the events
//! after the cache's `applied_pos`. Live events are applied when they are
//! the next position; an older one is a duplicate and skipped; a newer one
//! means a gap and triggers the same catch-up. A conversation that is new
//! to this device and long, or that the server cannot replay, is loaded
//! from a snapshot (its newest messages) instead; older pages come on demand.

use crate::cache::{Applied, Effect};
use crate::connection::Inbound;
use crate::types::ClientEvent;
use crate::{Error, Inner, Result};
use confab_protocol::{ConvEvent, ConversationId, ConversationInfo, ErrorCode, Reply, RequestBody, MAX_PAGE};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A conversation new to this device with more events than this starts
/// from a snapshot instead of replaying its whole log.
const SNAPSHOT_THRESHOLD: i64 = 2000;
/// Messages loaded with a snapshot.
const SNAPSHOT_MESSAGES: u32 = 100;

pub(crate) async fn run(inner: Arc<Inner>, mut inbound: mpsc::Receiver<Inbound>) {
    let mut sync = Sync { inner, acks: HashMap::new() };
    while let Some(first) = inbound.recv().await {
        sync.handle(first).await;
        // Drain what is already here before acknowledging delivery, so a
        // burst costs one receipt per conversation.
        while let Ok(next) = inbound.try_recv() {
            sync.handle(next).await;
        }
        sync.flush_acks();
    }
}

struct Sync {
    inner: Arc<Inner>,
    /// Newest seq from others applied per conversation, to acknowledge.
    acks: HashMap<ConversationId, i64>,
}

impl Sync {
    async fn handle(&mut self, inbound: Inbound) {
        let result = match inbound {
            Inbound::Connected | Inbound::Resync => {
                // Retry while the link stays up (a timed-out page, say); if
                // it drops, the next connection starts over anyway.
                let mut attempt = 0;
                loop {
                    match self.full_sync().await {
                        Err(e) if e.is_transient() && self.inner.link().is_connected() && attempt < 5 => {
                            attempt += 1;
                            tracing::warn!(%e, attempt, "sync failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                        }
                        other => break other,
                    }
                }
            }
            Inbound::Event(ev) => self.on_event(ev).await,
            Inbound::Typing { conversation, user, ttl_ms } => {
                let username = self.inner.cache.username(user).await.ok().flatten().unwrap_or_default();
                self.inner.emit(ClientEvent::Typing { conversation, user, username, ttl_ms });
                Ok(())
            }
            Inbound::Presence { user, online, last_seen } => {
                let r = self.inner.cache.set_presence(user, online, last_seen).await;
                self.inner.emit(ClientEvent::Presence { user, online, last_seen });
                r
            }
        };
        if let Err(e) = result {
            // A transient failure (the link dropped mid-sync) is repaired by
            // the full sync that follows the next connection.
            tracing::warn!(%e, "sync step failed");
        }
    }

    async fn full_sync(&mut self) -> Result<()> {
        let Reply::Conversations { conversations } = self.inner.link().request(RequestBody::Sync {}).await? else {
            return Err(Error::Protocol("expected conversations".into()));
        };
        let known = self.inner.cache.known_conversations().await?;
        // One conversation failing must not leave the others behind: finish
        // the round, then report the first failure (and the caller retries).
        let mut failure = None;
        for info in &conversations {
            self.inner.cache.set_presence_from(info).await?;
            let applied = known.iter().find(|k| k.0 == info.id).map(|k| k.1);
            let step = match applied {
                None | Some(0) if info.last_pos > SNAPSHOT_THRESHOLD => self.snapshot(info, false).await,
                Some(p) if p > info.last_pos => self.snapshot(info, true).await,
                _ => self.catch_up(info.id, applied.unwrap_or(0)).await,
            };
            if let Err(e) = step {
                tracing::warn!(%e, conversation = %info.id, "catching up failed");
                failure.get_or_insert(e);
                continue;
            }
            // Acknowledge anything a lost receipt left unacknowledged.
            let mine = info.members.iter().find(|m| m.user == self.inner.me);
            if mine.is_some_and(|m| m.delivered_seq < info.last_seq) {
                let ack = self.acks.entry(info.id).or_insert(0);
                *ack = (*ack).max(info.last_seq);
            }
        }
        // Conversations we were removed from while away.
        for (id, _, left) in known {
            if !left && !conversations.iter().any(|c| c.id == id) {
                self.inner.cache.mark_left(id).await?;
                self.inner.emit(ClientEvent::ConversationUpdated { conversation: id });
            }
        }
        self.flush_acks();
        if let Some(e) = failure {
            return Err(e);
        }
        self.inner.emit(ClientEvent::SyncCompleted);
        Ok(())
    }

    /// Loads a conversation from a snapshot; `reset` drops what the cache had.
    async fn snapshot(&mut self, info: &ConversationInfo, reset: bool) -> Result<()> {
        let Reply::Messages { messages, .. } = self
            .inner
            .link()
            .request(RequestBody::History { conversation: info.id, before: None, limit: SNAPSHOT_MESSAGES })
            .await?
        else {
            return Err(Error::Protocol("expected messages".into()));
        };
        self.inner.cache.load_snapshot(self.inner.me, info, &messages, reset).await?;
        self.inner.emit(ClientEvent::ConversationUpdated { conversation: info.id });
        // Events after the snapshot's position (replaying is idempotent).
        self.catch_up(info.id, info.last_pos).await
    }

    async fn catch_up(&mut self, conversation: ConversationId, mut after: i64) -> Result<()> {
        loop {
            let request = RequestBody::Events { conversation, after, limit: MAX_PAGE };
            let reply = match self.inner.link().request(request).await {
                Ok(r) => r,
                Err(Error::Server { code: ErrorCode::ReplayUnavailable, .. }) => {
                    let info = self.conversation_info(conversation).await?;
                    return Box::pin(self.snapshot(&info, true)).await;
                }
                Err(Error::Server { code: ErrorCode::NotMember, .. }) => {
                    self.inner.cache.mark_left(conversation).await?;
                    self.inner.emit(ClientEvent::ConversationUpdated { conversation });
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let Reply::Events { events, has_more, .. } = reply else {
                return Err(Error::Protocol("expected events".into()));
            };
            for ev in &events {
                match self.apply(ev).await? {
                    Some(pos) => after = pos,
                    None => return Err(Error::Protocol("gap inside a page of events".into())),
                }
            }
            if !has_more || events.is_empty() {
                return Ok(());
            }
        }
    }

    async fn conversation_info(&self, conversation: ConversationId) -> Result<ConversationInfo> {
        let Reply::Conversations { conversations } = self.inner.link().request(RequestBody::Sync {}).await? else {
            return Err(Error::Protocol("expected conversations".into()));
        };
        conversations
            .into_iter()
            .find(|c| c.id == conversation)
            .ok_or_else(|| Error::server(ErrorCode::NotMember, ErrorCode::NotMember.describe()))
    }

    async fn on_event(&mut self, ev: ConvEvent) -> Result<()> {
        if self.apply(&ev).await?.is_none() {
            let (applied, left) = self.inner.cache.applied_pos(ev.conversation).await?.unwrap_or((0, false));
            if left && !matches!(ev.body, confab_protocol::EventBody::MemberAdded { .. }) {
                return Ok(());
            }
            if applied == 0 && ev.pos > SNAPSHOT_THRESHOLD {
                // Just added to a long conversation: start from a snapshot.
                let info = self.conversation_info(ev.conversation).await?;
                return self.snapshot(&info, false).await;
            }
            self.catch_up(ev.conversation, applied).await?;
        }
        Ok(())
    }

    /// Applies one event; returns its position if it is now applied (or was
    /// already), `None` on a gap.
    async fn apply(&mut self, ev: &ConvEvent) -> Result<Option<i64>> {
        let me = self.inner.me;
        match self.inner.cache.apply_event(me, ev).await? {
            Applied::Duplicate => Ok(Some(ev.pos)),
            Applied::Gap { .. } => Ok(None),
            Applied::Done(effects) => {
                for effect in effects {
                    self.report(ev, effect).await?;
                }
                Ok(Some(ev.pos))
            }
        }
    }

    async fn report(&mut self, ev: &ConvEvent, effect: Effect) -> Result<()> {
        let cache = &self.inner.cache;
        let me = self.inner.me;
        match effect {
            Effect::NewMessage { client_id, from_other } => {
                if let Some(message) = cache.message(me, client_id).await? {
                    if from_other {
                        if let Some(seq) = message.seq {
                            let ack = self.acks.entry(ev.conversation).or_insert(0);
                            *ack = (*ack).max(seq);
                        }
                    }
                    self.inner.emit(ClientEvent::MessageAdded { message });
                }
            }
            Effect::MessageChanged { client_id } => {
                if let Some(message) = cache.message(me, client_id).await? {
                    self.inner.emit(ClientEvent::MessageUpdated { message });
                }
            }
            Effect::Receipt { user, delivered_seq, read_seq } => {
                self.inner.emit(ClientEvent::Receipt { conversation: ev.conversation, user, delivered_seq, read_seq });
            }
            Effect::ConversationChanged | Effect::Left => {
                self.inner.emit(ClientEvent::ConversationUpdated { conversation: ev.conversation });
            }
        }
        Ok(())
    }

    /// Tells the server this device has the messages it applied.
    fn flush_acks(&mut self) {
        for (conversation, seq) in self.acks.drain() {
            self.inner.link().send_and_forget(RequestBody::Delivered { conversation, seq });
        }
    }
}
