//! Gap-free resume: applies server events to the cache in order, exactly
//! once, and fills any gap from the server's log.
//!
//! After each (re)connect the sync task compares with the server in as few
//! round trips as the difference needs:
//!
//! 1. `sync` with the digest of every applied position: when nothing
//!    changed, that one tiny reply is all. Otherwise the server lists each
//!    conversation's head (paged by bytes).
//! 2. Only conversations that are behind are fetched, up to
//!    [`MAX_BATCH`] per `catch_up` request, each page bounded by bytes.
//!    A conversation that is new to this device and long, or that the
//!    server cannot replay, is loaded from a snapshot (its newest messages)
//!    instead; older pages come on demand.
//! 3. Receipt watermarks are fetched where the head's `marks` version
//!    differs from the one held here; live, coalesced `receipts` frames
//!    keep them current.
//! 4. Delivery receipts go out batched, and `rate_limited` is honoured by
//!    waiting the `retry_after_ms` the server names.
//!
//! A new server epoch (its log may have been rewound) drops every position
//! first; own messages the server no longer has are queued again.
//!
//! Live events are applied when they are the next position; an older one is
//! a duplicate and skipped; a newer one means a gap and triggers the same
//! catch-up. Messages that arrive while catching up are reported as not
//! live, and summarised per conversation afterwards
//! ([`ClientEvent::MissedMessages`]), so coming back to 300 messages raises
//! one notification per conversation, not 300.

use crate::cache::{Applied, Effect, LocalId, MarksVersion};
use crate::connection::Inbound;
use crate::types::{ChatMessage, ClientEvent};
use crate::{Error, Inner, Result};
use confab_protocol::{
    CatchUpFrom, ConvEvent, ConversationHead, ConversationId, ConversationInfo, ErrorCode, ReceiptPos, Reply,
    RequestBody, Watermark, WatermarksFrom, MAX_BATCH,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A conversation new to this device with more events than this starts
/// from a snapshot instead of replaying its whole log.
const SNAPSHOT_THRESHOLD: i64 = 2000;
/// Messages loaded with a snapshot.
const SNAPSHOT_MESSAGES: u32 = 100;
/// How long a sync keeps retrying a rate-limited or timed-out request
/// while the link stays up.
const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) async fn run(inner: Arc<Inner>, mut inbound: mpsc::Receiver<Inbound>) {
    let mut sync =
        Sync { inner, acks: HashMap::new(), missed: HashMap::new(), epoch: None, generation: 0, completed: false };
    while let Some(first) = inbound.recv().await {
        sync.handle(first).await;
        // Drain what is already here before acknowledging delivery, so a
        // burst costs one receipt request.
        while let Ok(next) = inbound.try_recv() {
            sync.handle(next).await;
        }
        sync.flush_acks();
    }
}

/// Messages from others applied while catching up, per conversation.
#[derive(Default)]
struct Missed {
    count: i64,
    senders: Vec<String>,
    latest: Option<ChatMessage>,
}

struct Sync {
    inner: Arc<Inner>,
    /// Newest seq from others applied per conversation, to acknowledge.
    acks: HashMap<ConversationId, i64>,
    missed: HashMap<ConversationId, Missed>,
    /// The current connection's store epoch, and which connection it is.
    epoch: Option<String>,
    generation: u64,
    /// A full sync finished: report [`ClientEvent::SyncCompleted`] once the
    /// missed-message summaries are out, so whoever waits for it (a
    /// wake-up's [`crate::Client::catch_up`]) has them.
    completed: bool,
}

impl Sync {
    async fn handle(&mut self, inbound: Inbound) {
        let result = match inbound {
            Inbound::Connected { epoch, generation } => {
                self.epoch = Some(epoch);
                self.generation = generation;
                self.full_sync_patiently().await
            }
            Inbound::Resync => self.full_sync_patiently().await,
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
            Inbound::Receipts { conversation, since, version, marks } => {
                self.on_marks(conversation, &marks, MarksVersion::Frame { since, version }).await
            }
            Inbound::PresenceList { presence, snapshot } => {
                let r = self.inner.cache.set_presence_list(&presence, snapshot).await;
                for p in presence {
                    self.inner.emit(ClientEvent::Presence { user: p.user, online: p.online, last_seen: p.last_seen });
                }
                r
            }
        };
        if let Err(e) = result {
            // A transient failure (the link dropped mid-sync) is repaired by
            // the full sync that follows the next connection.
            tracing::warn!(%e, "sync step failed");
        }
        self.report_missed().await;
        if std::mem::take(&mut self.completed) {
            self.inner.synced_generation.store(self.generation, std::sync::atomic::Ordering::SeqCst);
            self.inner.emit(ClientEvent::SyncCompleted);
        }
    }

    async fn full_sync_patiently(&mut self) -> Result<()> {
        // Retry while the link stays up (a timed-out page, say); if it
        // drops, the next connection starts over anyway.
        let mut attempt = 0;
        loop {
            match self.full_sync().await {
                // A newer connection has its own sync queued behind this.
                Err(_) if self.inner.link().generation() != self.generation => return Ok(()),
                Err(e) if e.is_transient() && self.inner.link().is_connected() && attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(%e, attempt, "sync failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// A request, retried while the server says `rate_limited` (after the
    /// wait it names) and the link stays up.
    async fn request(&self, body: RequestBody) -> Result<Reply> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            // Never mix two connections (two servers, maybe) in one sync.
            if self.inner.link().generation() != self.generation {
                return Err(Error::Disconnected);
            }
            match self.inner.link().request(body.clone()).await {
                Err(Error::Server { code: ErrorCode::RateLimited, retry_after_ms, .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    let wait = Duration::from_millis(retry_after_ms.unwrap_or(200).clamp(10, 10_000));
                    tracing::debug!(?wait, "rate limited; waiting");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Every conversation head, in as few pages as the bytes need; `None`
    /// when the server confirms the digest (nothing changed).
    async fn heads(&self, digest: Option<String>) -> Result<Option<Vec<ConversationHead>>> {
        let mut heads = Vec::new();
        let mut after = None;
        let mut digest = digest;
        loop {
            let reply = self.request(RequestBody::Sync { digest: digest.take(), after }).await?;
            let Reply::Sync { conversations, unchanged, has_more, .. } = reply else {
                return Err(Error::Protocol("expected sync".into()));
            };
            if unchanged {
                return Ok(None);
            }
            after = conversations.last().map(|h| h.id);
            heads.extend(conversations);
            if !has_more || after.is_none() {
                return Ok(Some(heads));
            }
        }
    }

    async fn full_sync(&mut self) -> Result<()> {
        let cache = self.inner.cache.clone();
        let epoch = self.epoch.clone().unwrap_or_default();
        let new_epoch = cache.epoch().await?.as_deref() != Some(epoch.as_str());
        let digest = if new_epoch { None } else { Some(cache.sync_digest().await?) };
        let Some(heads) = self.heads(digest).await? else {
            self.completed = true;
            return Ok(());
        };
        if new_epoch {
            tracing::info!(%epoch, "new server epoch: syncing from scratch");
            cache.reset_for_new_epoch(&heads, &epoch).await?;
            self.inner.outbox_wakeup.notify_one();
        }
        let known: HashMap<ConversationId, (i64, bool)> =
            cache.known_conversations().await?.into_iter().map(|(id, pos, left)| (id, (pos, left))).collect();
        // One conversation failing must not leave the others behind: finish
        // the round, then report the first failure (and the caller retries).
        let mut failure = None;
        let mut behind = Vec::new();
        for head in &heads {
            let applied = known.get(&head.id).map(|k| k.0);
            let step = match applied {
                None | Some(0) if head.last_pos > SNAPSHOT_THRESHOLD => self.snapshot_of(head.id, false).await,
                Some(p) if p > head.last_pos => self.snapshot_of(head.id, true).await,
                Some(p) if p == head.last_pos && !known.get(&head.id).is_some_and(|k| k.1) => Ok(()),
                _ => {
                    behind.push(CatchUpFrom { conversation: head.id, after: applied.unwrap_or(0) });
                    Ok(())
                }
            };
            if let Err(e) = step {
                tracing::warn!(%e, conversation = %head.id, "catching up failed");
                failure.get_or_insert(e);
            }
        }
        if let Err(e) = self.catch_up(behind).await {
            failure.get_or_insert(e);
        }
        // Receipt watermarks where the version held here is not the
        // server's (after the events: they name the members).
        let held = cache.marks_versions().await?;
        let stale: Vec<ConversationId> =
            heads.iter().filter(|h| held.get(&h.id).is_some_and(|v| *v != h.marks)).map(|h| h.id).collect();
        if let Err(e) = self.fetch_watermarks(stale).await {
            failure.get_or_insert(e);
        }
        // Acknowledge what a lost receipt left unacknowledged — only where
        // this device now has everything the head listed.
        let applied: HashMap<ConversationId, i64> =
            cache.known_conversations().await?.into_iter().map(|(id, pos, _)| (id, pos)).collect();
        for head in &heads {
            if head.delivered_seq < head.last_seq && applied.get(&head.id).is_some_and(|p| *p >= head.last_pos) {
                let ack = self.acks.entry(head.id).or_insert(0);
                *ack = (*ack).max(head.last_seq);
            }
        }
        // Conversations we were removed from while away.
        for (id, (_, left)) in known {
            if !left && !heads.iter().any(|h| h.id == id) {
                cache.mark_left(id).await?;
                self.inner.emit(ClientEvent::ConversationUpdated { conversation: id });
            }
        }
        self.flush_acks();
        if let Some(e) = failure {
            return Err(e);
        }
        self.completed = true;
        Ok(())
    }

    /// Applies members' watermarks and reports those that moved.
    async fn on_marks(&self, conversation: ConversationId, marks: &[Watermark], version: MarksVersion) -> Result<()> {
        let moved = self.inner.cache.apply_watermarks(conversation, marks, version).await?;
        for m in moved {
            self.inner.emit(ClientEvent::Receipt {
                conversation,
                user: m.user,
                delivered_seq: m.delivered_seq,
                read_seq: m.read_seq,
            });
        }
        Ok(())
    }

    /// Fetches every member's watermarks of these conversations,
    /// [`MAX_BATCH`] per request, each paged by member.
    async fn fetch_watermarks(&mut self, conversations: Vec<ConversationId>) -> Result<()> {
        let mut todo: Vec<WatermarksFrom> =
            conversations.into_iter().map(|conversation| WatermarksFrom { conversation, after: None }).collect();
        // The version of a conversation's first page: its later pages are
        // at least as new, so all of them together are that version.
        let mut versions: HashMap<ConversationId, i64> = HashMap::new();
        while !todo.is_empty() {
            let batch: Vec<WatermarksFrom> = todo.drain(..todo.len().min(MAX_BATCH)).collect();
            let Reply::Watermarks { pages } = self.request(RequestBody::Watermarks { from: batch.clone() }).await?
            else {
                return Err(Error::Protocol("expected watermarks".into()));
            };
            if pages.is_empty() {
                return Err(Error::Protocol("an empty watermarks reply".into()));
            }
            let answered = pages.len();
            for page in pages {
                let conversation = page.conversation;
                match page.error {
                    Some(ErrorCode::NotMember) => {
                        self.left(conversation).await?;
                        continue;
                    }
                    Some(code) => return Err(Error::server(code, code.describe())),
                    None => {}
                }
                let version = *versions.entry(conversation).or_insert(page.version);
                let last = page.marks.last().map(|m| m.user);
                let done = if page.has_more { MarksVersion::Unchanged } else { MarksVersion::Fetched(version) };
                self.on_marks(conversation, &page.marks, done).await?;
                if page.has_more {
                    todo.push(WatermarksFrom { conversation, after: last });
                }
            }
            todo.extend(batch.into_iter().skip(answered));
        }
        Ok(())
    }

    async fn conversation_info(&self, conversation: ConversationId) -> Result<ConversationInfo> {
        match self.request(RequestBody::Conversation { conversation }).await? {
            Reply::Conversation { conversation } => Ok(conversation),
            _ => Err(Error::Protocol("expected a conversation".into())),
        }
    }

    async fn snapshot_of(&mut self, conversation: ConversationId, reset: bool) -> Result<()> {
        match self.conversation_info(conversation).await {
            Ok(info) => self.snapshot(&info, reset).await,
            Err(Error::Server { code: ErrorCode::NotMember, .. }) => self.left(conversation).await,
            Err(e) => Err(e),
        }
    }

    async fn left(&mut self, conversation: ConversationId) -> Result<()> {
        self.inner.cache.mark_left(conversation).await?;
        self.inner.emit(ClientEvent::ConversationUpdated { conversation });
        Ok(())
    }

    /// Loads a conversation from a snapshot; `reset` drops what the cache had.
    async fn snapshot(&mut self, info: &ConversationInfo, reset: bool) -> Result<()> {
        let request = RequestBody::History { conversation: info.id, before: None, limit: SNAPSHOT_MESSAGES };
        let Reply::Messages { messages, .. } = self.request(request).await? else {
            return Err(Error::Protocol("expected messages".into()));
        };
        self.inner.cache.load_snapshot(self.inner.me, info, &messages, reset).await?;
        self.inner.emit(ClientEvent::ConversationUpdated { conversation: info.id });
        // Own messages the server lost may have been queued again.
        self.inner.outbox_wakeup.notify_one();
        // Events after the snapshot's position (replaying is idempotent).
        self.catch_up(vec![CatchUpFrom { conversation: info.id, after: info.last_pos }]).await
    }

    /// Fetches the events after each position, [`MAX_BATCH`] conversations
    /// per request, until every one has all it is missing.
    async fn catch_up(&mut self, mut todo: Vec<CatchUpFrom>) -> Result<()> {
        let mut failure = None;
        while !todo.is_empty() {
            let batch: Vec<CatchUpFrom> = todo.drain(..todo.len().min(MAX_BATCH)).collect();
            let Reply::CatchUp { pages } = self.request(RequestBody::CatchUp { from: batch.clone() }).await? else {
                return Err(Error::Protocol("expected catch_up".into()));
            };
            if pages.is_empty() {
                return Err(Error::Protocol("an empty catch_up reply".into()));
            }
            let answered = pages.len();
            for page in pages {
                let conversation = page.conversation;
                match page.error {
                    Some(ErrorCode::ReplayUnavailable) => {
                        if let Err(e) = Box::pin(self.snapshot_of(conversation, true)).await {
                            failure.get_or_insert(e);
                        }
                        continue;
                    }
                    Some(ErrorCode::NotMember) => {
                        self.left(conversation).await?;
                        continue;
                    }
                    Some(code) => {
                        failure.get_or_insert(Error::server(code, code.describe()));
                        continue;
                    }
                    None => {}
                }
                let mut after = None;
                let applied = self.inner.cache.apply_events(self.inner.me, &page.events).await?;
                for (ev, applied) in page.events.iter().zip(applied) {
                    match self.settle(ev, applied, false).await? {
                        Some(pos) => after = Some(pos),
                        None => {
                            failure.get_or_insert(Error::Protocol("gap inside a page of events".into()));
                            break;
                        }
                    }
                }
                if page.has_more {
                    if let Some(after) = after {
                        todo.push(CatchUpFrom { conversation, after });
                    }
                }
            }
            // Pages past the reply's byte budget were not answered: again.
            todo.extend(batch.into_iter().skip(answered));
        }
        failure.map_or(Ok(()), Err)
    }

    async fn on_event(&mut self, ev: ConvEvent) -> Result<()> {
        if self.apply(&ev, true).await?.is_none() {
            let (applied, left) = self.inner.cache.applied_pos(ev.conversation).await?.unwrap_or((0, false));
            if left && !matches!(ev.body, confab_protocol::EventBody::MemberAdded { .. }) {
                return Ok(());
            }
            if applied == 0 && ev.pos > SNAPSHOT_THRESHOLD {
                // Just added to a long conversation: start from a snapshot.
                return self.snapshot_of(ev.conversation, false).await;
            }
            let r = self.catch_up(vec![CatchUpFrom { conversation: ev.conversation, after: applied }]).await;
            if matches!(&r, Err(Error::Server { code: ErrorCode::NotMember, .. })) {
                return self.left(ev.conversation).await;
            }
            r?;
        }
        Ok(())
    }

    /// Applies one event; returns its position if it is now applied (or was
    /// already), `None` on a gap.
    async fn apply(&mut self, ev: &ConvEvent, live: bool) -> Result<Option<i64>> {
        let applied = self.inner.cache.apply_event(self.inner.me, ev).await?;
        self.settle(ev, applied, live).await
    }

    /// Reports what applying `ev` did; its position if it is now applied
    /// (or was already), `None` on a gap.
    async fn settle(&mut self, ev: &ConvEvent, applied: Applied, live: bool) -> Result<Option<i64>> {
        match applied {
            Applied::Duplicate => Ok(Some(ev.pos)),
            Applied::Gap { .. } => Ok(None),
            Applied::Skipped { reason } => {
                tracing::warn!(conversation = %ev.conversation, pos = ev.pos, %reason, "event skipped");
                Ok(Some(ev.pos))
            }
            Applied::Done(effects) => {
                for effect in effects {
                    self.report(ev, effect, live).await?;
                }
                Ok(Some(ev.pos))
            }
        }
    }

    async fn report(&mut self, ev: &ConvEvent, effect: Effect, live: bool) -> Result<()> {
        let cache = &self.inner.cache;
        let me = self.inner.me;
        match effect {
            Effect::NewMessage { id, from_other } => {
                if let Some(message) = cache.message(me, id).await? {
                    if from_other {
                        if let Some(seq) = message.seq {
                            let ack = self.acks.entry(ev.conversation).or_insert(0);
                            *ack = (*ack).max(seq);
                        }
                        if !live && !message.deleted {
                            self.note_missed(&message);
                        }
                    }
                    self.inner.emit(ClientEvent::MessageAdded { message, live });
                }
            }
            Effect::MessageChanged { id } => self.report_changed(id).await?,
            Effect::Requeued { id } => {
                self.inner.outbox_wakeup.notify_one();
                self.report_changed(id).await?;
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

    async fn report_changed(&self, id: LocalId) -> Result<()> {
        if let Some(message) = self.inner.cache.message(self.inner.me, id).await? {
            self.inner.emit(ClientEvent::MessageUpdated { message });
        }
        Ok(())
    }

    fn note_missed(&mut self, message: &ChatMessage) {
        let missed = self.missed.entry(message.conversation).or_default();
        missed.count += 1;
        missed.senders.retain(|s| *s != message.sender_name);
        missed.senders.insert(0, message.sender_name.clone());
        missed.latest = Some(message.clone());
    }

    /// One summary per conversation for what arrived while catching up.
    async fn report_missed(&mut self) {
        for (conversation, missed) in self.missed.drain() {
            let Some(mut latest) = missed.latest else { continue };
            // It may have been read on another device, edited or deleted
            // since: report it as it is now, or not at all once read.
            if let Ok(Some(now)) = self.inner.cache.message(self.inner.me, latest.id).await {
                latest = now;
            }
            let read = self.inner.cache.read_seq(conversation, self.inner.me).await.unwrap_or(0);
            if latest.seq.is_some_and(|s| s <= read) {
                continue;
            }
            // Only what is still unread (a fresh device replays history the
            // user read long ago).
            let unread = self.inner.cache.unread_after(conversation, self.inner.me, read).await.unwrap_or(missed.count);
            let count = missed.count.min(unread);
            self.inner.emit(ClientEvent::MissedMessages { conversation, count, senders: missed.senders, latest });
        }
    }

    /// Tells the server this device has the messages it applied, in as
    /// few requests as the batch limit allows.
    fn flush_acks(&mut self) {
        let receipts: Vec<ReceiptPos> =
            self.acks.drain().map(|(conversation, seq)| ReceiptPos { conversation, seq }).collect();
        for chunk in receipts.chunks(MAX_BATCH) {
            self.inner.link().send_and_forget(RequestBody::DeliveredMany { receipts: chunk.to_vec() });
        }
    }
}
