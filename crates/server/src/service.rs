//! What each request does: authorization, validation, the store call, and
//! publication of the committed event. Nothing here knows about sockets.
//!
//! Ordering: changes to one conversation take that conversation's lock
//! ([`crate::locks`]) around check → commit → publish, so
//! events reach every connection queue in `pos` order and a membership check
//! cannot race a concurrent removal on this node. With several nodes
//! ([`crate::cluster`]) the lock is per node: the database's row lock
//! orders the commits, each node's delivery puts events back in `pos`
//! order, and the store refuses at commit a sender another node removed.

use crate::error::{ApiError, Result};
use crate::hub::Hub;
use crate::store::{AppendOutcome, Mark, Membership, Revoke, Store};
use confab_protocol::{
    media, sync_digest, validate_emoji, validate_text, validate_username, Attachment, AttachmentRef, ConvKind,
    ConversationHead, ConversationId, ConversationInfo, DeviceSession, ErrorCode, EventBody, EventPage, Member, Millis,
    Presence, Reply, RequestBody, SendResult, ServerFrame, UserId, WatermarkPage, WatermarksFrom, MAX_BATCH,
    MAX_GROUP_NAME_CHARS, MAX_PAGE, REPLY_BUDGET_BYTES, TYPING_TTL_MS,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Presence entries per `presence_list` frame.
const PRESENCE_CHUNK: usize = 1000;
/// Bytes a [`ConversationHead`] takes in a `sync` reply (an over-estimate).
const HEAD_BYTES: usize = 160;

pub struct Service {
    pub store: Arc<dyn Store>,
    /// This node's connections.
    pub hub: Hub,
    /// The other nodes, when there are any (`--nats`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub(crate) calls: crate::calls::Calls,
    /// STUN/TURN servers handed to the two sides of a call.
    pub(crate) ice: crate::ice::IceConfig,
    locks: crate::locks::ConversationLocks,
    max_group_members: usize,
    /// The store epoch announced in `welcome` (see [`crate::epoch`]).
    pub epoch: String,
    /// Events in the log, kept in step with every append, so the epoch
    /// guard can record it without scanning the store.
    pub log_total: AtomicI64,
    /// Call attempts per user: 10, then one every 6 s.
    call_limiter: governor::DefaultKeyedRateLimiter<UserId>,
    /// Committed receipts waiting for the next coalesced frame.
    receipts: crate::receipts::Receipts,
    /// Wake-ups for devices that are away.
    pub push: Arc<crate::push::Push>,
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: UserId,
    pub username: String,
    /// The device session this connection authenticated with.
    pub session: uuid::Uuid,
    /// This connection (a device), for calls.
    pub conn: u64,
}

/// Refuses a batch request naming more than [`MAX_BATCH`] `what`.
fn at_most_batch(n: usize, what: &str) -> Result<()> {
    if n > MAX_BATCH {
        return Err(ApiError::new(ErrorCode::InvalidRequest, format!("at most {MAX_BATCH} {what} per request")));
    }
    Ok(())
}

pub(crate) use crate::hub::frame;

impl crate::cluster::Node for Service {
    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }
}

/// A device is live when it has a socket on this node. On another node it
/// is invisible here (nodes share per-user counts, not sessions), so a
/// user connected elsewhere still has their away devices pushed: a
/// redundant wake-up costs less than a lost one.
impl crate::push::Devices for Service {
    fn is_live(&self, user: UserId, session: uuid::Uuid) -> bool {
        self.hub.has_session(user, session)
    }
}

impl Service {
    pub fn new(store: Arc<dyn Store>, hub: Hub, max_group_members: usize, epoch: String, log_total: i64) -> Self {
        Service {
            store,
            hub,
            cluster: None,
            calls: crate::calls::Calls::new(std::time::Duration::from_secs(45), std::time::Duration::from_secs(20)),
            ice: crate::ice::IceConfig::default(),
            locks: Default::default(),
            max_group_members,
            epoch,
            log_total: AtomicI64::new(log_total),
            call_limiter: governor::RateLimiter::keyed(crate::guard::period(std::time::Duration::from_secs(6), 10)),
            receipts: crate::receipts::Receipts::default(),
            push: Arc::new(crate::push::Push::disabled()),
        }
    }

    /// Wakes away devices through these providers.
    pub fn with_push(mut self, push: Arc<crate::push::Push>) -> Self {
        self.push = push;
        self
    }

    /// Fans events out through the other nodes too.
    pub fn with_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Publishes a committed outcome (call with the conversation lock held).
    fn publish(&self, outcome: &AppendOutcome) -> Result<Option<i64>> {
        match outcome {
            AppendOutcome::Appended { event, recipients } => {
                self.log_total.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("confab_events_total").increment(1);
                if matches!(event.body, EventBody::Message { .. }) {
                    metrics::counter!("confab_messages_total").increment(1);
                }
                match &self.cluster {
                    // Other nodes' events interleave with ours: delivery
                    // here goes through the same ordering as theirs.
                    Some(cluster) => {
                        cluster.announce(event, recipients);
                        cluster.deliver(self, event.clone(), recipients.clone());
                    }
                    None => self.hub.publish(recipients, frame(&ServerFrame::Event { event: event.clone() })?),
                }
                self.introduce(&event.body, recipients)?;
                let kind = match event.body {
                    EventBody::Message { .. } | EventBody::Call { .. } => confab_protocol::WakeKind::Message,
                    _ => confab_protocol::WakeKind::Update,
                };
                self.push.wake(event.actor, recipients, event.conversation, kind);
                Ok(Some(event.pos))
            }
            AppendOutcome::Duplicate { pos, .. } => Ok(Some(*pos)),
            AppendOutcome::Unchanged => Ok(None),
        }
    }

    /// New contacts learn who of each other is online, in a number of
    /// frames linear in the group's size: a created group gets one shared
    /// list; an added member gets one list, the others one update.
    fn introduce(&self, body: &EventBody, recipients: &[UserId]) -> Result<()> {
        let online = |users: &mut dyn Iterator<Item = UserId>| -> Vec<Presence> {
            let users: Vec<UserId> = users.collect();
            self.online_among(&users).into_iter().map(|user| Presence { user, online: true, last_seen: None }).collect()
        };
        match body {
            EventBody::Created { .. } => {
                let list = online(&mut recipients.iter().copied());
                // Alone online, there is nobody to tell.
                let list = if list.len() > 1 { list } else { Vec::new() };
                for chunk in list.chunks(PRESENCE_CHUNK) {
                    let f = frame(&ServerFrame::PresenceList { presence: chunk.to_vec(), snapshot: false })?;
                    self.publish_users(recipients, f);
                }
            }
            EventBody::MemberAdded { member } => {
                let others: Vec<UserId> = recipients.iter().copied().filter(|u| *u != member.user).collect();
                let list = online(&mut others.iter().copied());
                for chunk in list.chunks(PRESENCE_CHUNK) {
                    let f = frame(&ServerFrame::PresenceList { presence: chunk.to_vec(), snapshot: false })?;
                    self.publish_users(&[member.user], f);
                }
                if self.is_online(member.user) {
                    let f = frame(&ServerFrame::Presence { user: member.user, online: true, last_seen: None })?;
                    self.publish_users(&others, f);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The frames a new connection gets after `welcome`: every online
    /// contact, in chunks (anyone not listed is offline).
    pub async fn presence_snapshot(&self, user: UserId) -> Result<Vec<Arc<str>>> {
        let contacts = self.store.contacts(user).await?;
        let online: Vec<Presence> = self
            .online_among(&contacts)
            .into_iter()
            .map(|user| Presence { user, online: true, last_seen: None })
            .collect();
        if online.is_empty() {
            return Ok(vec![frame(&ServerFrame::PresenceList { presence: Vec::new(), snapshot: true })?]);
        }
        online
            .chunks(PRESENCE_CHUNK)
            .enumerate()
            .map(|(i, c)| frame(&ServerFrame::PresenceList { presence: c.to_vec(), snapshot: i == 0 }))
            .collect()
    }

    /// How long a call rings before it is missed.
    pub fn with_call_timeouts(mut self, ring: std::time::Duration, rejoin: std::time::Duration) -> Self {
        self.calls = crate::calls::Calls::new(ring, rejoin);
        self
    }

    pub fn with_ice(mut self, ice: crate::ice::IceConfig) -> Self {
        self.ice = ice;
        self
    }

    /// Commits a call's outcome to its conversation's log and publishes it.
    pub(crate) async fn log_call(&self, conversation: ConversationId, actor: UserId, body: EventBody) -> Result<()> {
        let _guard = self.locks.lock(conversation).await;
        let outcome = self.store.append(conversation, actor, body).await?;
        self.publish(&outcome)?;
        Ok(())
    }

    pub(crate) async fn member(&self, conversation: ConversationId, user: UserId) -> Result<Membership> {
        match self.store.membership(conversation, user).await? {
            Some(m) => Ok(m),
            // Same answer whether the conversation exists or not: a
            // non-member learns nothing about it.
            None => Err(ErrorCode::NotMember.into()),
        }
    }

    /// `send` and `send_many`: each message checked, deduplicated and
    /// appended in order, all in one store call (one commit); one result
    /// each. A failure that is not a message's own fails them all.
    async fn send_texts(
        &self,
        caller: &Caller,
        conversation: ConversationId,
        messages: Vec<confab_protocol::OutgoingText>,
    ) -> Result<Vec<SendResult>> {
        let _guard = self.locks.lock(conversation).await;
        let access = match self.member(conversation, caller.user).await {
            Ok(_) => None,
            Err(e) if e.code == ErrorCode::NotMember => Some(e),
            Err(e) => return Err(e),
        };
        let refused = |client_id, e: ApiError| SendResult::Refused { client_id, code: e.code, message: e.message };
        let mut results: Vec<Option<SendResult>> = vec![None; messages.len()];
        let mut bodies = Vec::with_capacity(messages.len());
        let mut slots = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            if let Some(e) = &access {
                // A retry of a message committed before the sender lost
                // access is acknowledged again, not failed: it was
                // delivered. (A member's retry is caught by the append.)
                results[i] = Some(match self.store.sent_message(caller.user, m.client_id).await? {
                    Some(AppendOutcome::Duplicate { conversation: c, seq, pos, ts }) if c == conversation => {
                        SendResult::Sent { client_id: m.client_id, seq, pos, ts, duplicate: true }
                    }
                    _ => refused(m.client_id, e.clone()),
                });
                continue;
            }
            // A file may go without a caption.
            let text = match m.attachments.is_empty() {
                true => validate_text(&m.text),
                false if m.text.chars().count() > confab_protocol::MAX_MESSAGE_CHARS => Err(ErrorCode::MessageTooLong),
                false => Ok(()),
            };
            let checked = match text {
                Ok(()) => self.attachments(caller.user, &m.attachments).await,
                Err(code) => Err(code.into()),
            };
            let attachments = match checked {
                Ok(a) => a,
                Err(e) if e.code == ErrorCode::Internal => return Err(e),
                Err(e) => {
                    results[i] = Some(refused(m.client_id, e));
                    continue;
                }
            };
            slots.push((i, m.client_id));
            bodies.push(EventBody::Message { seq: 0, client_id: m.client_id, text: m.text, attachments });
        }
        let mut transient = None;
        if !bodies.is_empty() {
            let outcomes = self.store.append_all(conversation, caller.user, bodies).await?;
            for ((i, client_id), outcome) in slots.into_iter().zip(outcomes) {
                results[i] = Some(match outcome {
                    Ok(outcome) => {
                        self.publish(&outcome)?;
                        match outcome {
                            AppendOutcome::Appended { event, .. } => match event.body {
                                EventBody::Message { seq, .. } => {
                                    SendResult::Sent { client_id, seq, pos: event.pos, ts: event.ts, duplicate: false }
                                }
                                _ => return Err(ApiError::internal("send", "not a message event")),
                            },
                            AppendOutcome::Duplicate { seq, pos, ts, .. } => {
                                SendResult::Sent { client_id, seq, pos, ts, duplicate: true }
                            }
                            AppendOutcome::Unchanged => return Err(ApiError::internal("send", "unchanged")),
                        }
                    }
                    // Not the message's fault: the whole request fails, and
                    // its retry finds the committed ones as duplicates.
                    Err(e) if e.code == ErrorCode::Internal => {
                        transient = Some(e);
                        continue;
                    }
                    Err(e) => refused(client_id, e),
                });
            }
            self.hub.typing_reset(caller.user, conversation);
        }
        if let Some(e) = transient {
            return Err(e);
        }
        results.into_iter().map(|r| r.ok_or_else(|| ApiError::internal("send", "no result"))).collect()
    }

    /// Full-text search, only ever over conversations the caller is in
    /// now (the store joins on membership).
    async fn search(
        &self,
        caller: &Caller,
        query: &str,
        conversation: Option<ConversationId>,
        before: Option<Millis>,
        limit: u32,
    ) -> Result<Reply> {
        if query.chars().count() > media::MAX_QUERY_CHARS {
            let why = format!("a search is at most {} characters", media::MAX_QUERY_CHARS);
            return Err(ApiError::new(ErrorCode::InvalidRequest, why));
        }
        if let Some(c) = conversation {
            self.member(c, caller.user).await?;
        }
        let words = media::search_words(query);
        if words.is_empty() {
            return Ok(Reply::Search { hits: Vec::new(), has_more: false });
        }
        let limit = limit.clamp(1, media::MAX_SEARCH_HITS);
        let q = crate::store::SearchQuery { user: caller.user, words, conversation, before, limit };
        let mut hits = self.store.search(&q).await?;
        let has_more = hits.len() > limit as usize;
        hits.truncate(limit as usize);
        Ok(Reply::Search { hits, has_more })
    }

    /// What a message's attachments are: each a blob the sender uploaded
    /// (knowing a hash is not enough), with what the server learned of it.
    async fn attachments(&self, sender: UserId, refs: &[AttachmentRef]) -> Result<Vec<Attachment>> {
        if refs.len() > media::MAX_ATTACHMENTS {
            let why = format!("a message carries at most {} attachments", media::MAX_ATTACHMENTS);
            return Err(ApiError::new(ErrorCode::InvalidRequest, why));
        }
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            if !media::validate_file_name(&r.name) {
                return Err(ApiError::new(ErrorCode::InvalidRequest, "invalid attachment file name"));
            }
            let hash = crate::media::BlobHash::parse(&r.hash)
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "an attachment hash is 64 hex digits"))?
                .hex();
            let Some(blob) = self.store.claim_blob(sender, &hash).await? else {
                return Err(ApiError::new(ErrorCode::NotFound, "no such upload of yours: upload the file first"));
            };
            out.push(Attachment {
                hash,
                name: r.name.clone(),
                size: blob.size as i64,
                mime: blob.mime,
                width: blob.width,
                height: blob.height,
                thumbnail: blob.thumbable,
            });
        }
        Ok(out)
    }

    /// Messages sent as that many `send` requests: one reply each, a
    /// refusal being that request's error.
    pub(crate) async fn send_each(
        &self,
        caller: &Caller,
        conversation: ConversationId,
        messages: Vec<confab_protocol::OutgoingText>,
    ) -> Result<Vec<Result<Reply>>> {
        let results = self.send_texts(caller, conversation, messages).await?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                SendResult::Sent { client_id, seq, pos, ts, duplicate } => {
                    Ok(Reply::Sent { conversation, client_id, seq, pos, ts, duplicate })
                }
                SendResult::Refused { code, message, .. } => Err(ApiError::new(code, message)),
            })
            .collect())
    }

    async fn group_admin(&self, conversation: ConversationId, user: UserId) -> Result<()> {
        let m = self.member(conversation, user).await?;
        if m.kind != ConvKind::Group {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "direct conversations have no members to manage"));
        }
        if !m.admin {
            return Err(ApiError::new(ErrorCode::Forbidden, "only group admins can do that"));
        }
        Ok(())
    }

    async fn user_named(&self, username: &str) -> Result<UserId> {
        validate_username(username)
            .map_err(|_| ApiError::new(ErrorCode::UnknownUser, format!("no user named `{username}`")))?;
        self.store
            .user_by_name(username)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownUser, format!("no user named `{username}`")))
    }

    /// Checks, commits and publishes one change to a conversation.
    async fn change(&self, caller: &Caller, conversation: ConversationId, body: EventBody) -> Result<Reply> {
        let _guard = self.locks.lock(conversation).await;
        let membership = self.member(conversation, caller.user).await?;
        self.authorize(caller, conversation, membership, &body).await?;
        let outcome = self.store.append(conversation, caller.user, body).await?;
        let pos = self.publish(&outcome)?;
        Ok(Reply::Done { pos })
    }

    async fn authorize(
        &self,
        caller: &Caller,
        conversation: ConversationId,
        membership: Membership,
        body: &EventBody,
    ) -> Result<()> {
        let message = |seq: i64| async move {
            self.store
                .message(conversation, seq)
                .await?
                .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no message {seq} in this conversation")))
        };
        match body {
            EventBody::Edited { seq, text } => {
                validate_text(text)?;
                if message(*seq).await?.sender != caller.user {
                    return Err(ApiError::new(ErrorCode::Forbidden, "only the sender can edit a message"));
                }
            }
            EventBody::Deleted { seq } => {
                let m = message(*seq).await?;
                let admin_of_group = membership.kind == ConvKind::Group && membership.admin;
                if m.sender != caller.user && !admin_of_group {
                    return Err(ApiError::new(ErrorCode::Forbidden, "only the sender or a group admin can delete"));
                }
            }
            EventBody::Reaction { emoji, .. } => validate_emoji(emoji)?,
            // What a deleted message refuses is decided by the shared
            // rules, inside the store's transaction.
            _ => {}
        }
        Ok(())
    }

    pub async fn handle(&self, caller: &Caller, body: RequestBody) -> Result<Reply> {
        match body {
            RequestBody::Hello { .. } => {
                Err(ApiError::new(ErrorCode::InvalidRequest, "already authenticated on this connection"))
            }
            RequestBody::Ping {} => Ok(Reply::Pong {}),
            RequestBody::Sync { digest, after } => self.sync(caller, digest, after).await,
            RequestBody::Conversation { conversation } => {
                self.member(conversation, caller.user).await?;
                self.conversation_reply(conversation).await
            }
            RequestBody::CatchUp { from } => {
                at_most_batch(from.len(), "conversations")?;
                let mut budget = REPLY_BUDGET_BYTES;
                let mut pages = Vec::with_capacity(from.len());
                // Pages in request order until the budget is spent; the
                // client asks again for the rest.
                for f in from {
                    if budget == 0 {
                        break;
                    }
                    let (page, spent) = match self.events_page(caller, f.conversation, f.after, MAX_PAGE, budget).await
                    {
                        Ok(page) => page,
                        Err(e) if e.code != ErrorCode::Internal => {
                            let page = EventPage {
                                conversation: f.conversation,
                                events: Vec::new(),
                                last_pos: 0,
                                has_more: false,
                                error: Some(e.code),
                            };
                            (page, 0)
                        }
                        Err(e) => return Err(e),
                    };
                    budget = budget.saturating_sub(spent.max(100));
                    pages.push(page);
                }
                Ok(Reply::CatchUp { pages })
            }
            RequestBody::Events { conversation, after, limit } => {
                let (page, _) = self.events_page(caller, conversation, after, limit, REPLY_BUDGET_BYTES).await?;
                Ok(Reply::Events {
                    conversation,
                    events: page.events,
                    last_pos: page.last_pos,
                    has_more: page.has_more,
                })
            }
            RequestBody::History { conversation, before, limit } => {
                self.member(conversation, caller.user).await?;
                let messages =
                    self.store.history(conversation, before, limit.clamp(1, MAX_PAGE), REPLY_BUDGET_BYTES).await?;
                // Seqs are gap-free from 1 and messages are never removed
                // (a delete blanks them), so older ones exist below seq 1.
                let has_more = messages.last().is_some_and(|m| m.seq > 1);
                Ok(Reply::Messages { conversation, messages, has_more })
            }
            RequestBody::DeliveredMany { receipts } => {
                at_most_batch(receipts.len(), "receipts")?;
                // A conversation the caller is not (or no longer) in moves
                // nothing: there is nothing to acknowledge there.
                let marks = receipts
                    .into_iter()
                    .map(|r| Mark { conversation: r.conversation, user: caller.user, delivered: r.seq, read: 0 })
                    .collect();
                self.mark(marks).await?;
                Ok(Reply::Done { pos: None })
            }
            RequestBody::Watermarks { from } => self.watermarks(caller, from).await,
            RequestBody::OpenDirect { username } => {
                let other = self.user_named(&username).await?;
                if other == caller.user {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "you cannot open a direct conversation with yourself",
                    ));
                }
                let me = Member { user: caller.user, username: caller.username.clone(), admin: false };
                let them = Member { user: other, username, admin: false };
                // Hold the new conversation's lock from creation to
                // publication, so no send to it can be published first.
                let new_id = uuid::Uuid::now_v7();
                let guard = self.locks.lock(new_id).await;
                let (id, created) = self.store.open_direct(new_id, me, them).await?;
                if let Some(outcome) = created {
                    self.publish(&outcome)?;
                }
                drop(guard);
                self.conversation_reply(id).await
            }
            RequestBody::CreateGroup { name, members } => {
                let name = self.group_name(&name)?;
                let mut list = vec![Member { user: caller.user, username: caller.username.clone(), admin: true }];
                for username in members {
                    let user = self.user_named(&username).await?;
                    if !list.iter().any(|m| m.user == user) {
                        list.push(Member { user, username, admin: false });
                    }
                }
                if list.len() > self.max_group_members {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("a group has at most {} members", self.max_group_members),
                    ));
                }
                let id = uuid::Uuid::now_v7();
                {
                    let _guard = self.locks.lock(id).await;
                    let outcome = self.store.create_group(id, &name, list, caller.user).await?;
                    self.publish(&outcome)?;
                }
                self.conversation_reply(id).await
            }
            RequestBody::AddMember { conversation, username } => {
                let user = self.user_named(&username).await?;
                let _guard = self.locks.lock(conversation).await;
                self.group_admin(conversation, caller.user).await?;
                if self.store.member_ids(conversation).await?.len() >= self.max_group_members {
                    return Err(ApiError::new(ErrorCode::InvalidRequest, "the group is full"));
                }
                let body = EventBody::MemberAdded { member: Member { user, username, admin: false } };
                let outcome = self.store.append(conversation, caller.user, body).await?;
                Ok(Reply::Done { pos: self.publish(&outcome)? })
            }
            RequestBody::RemoveMember { conversation, username } => {
                let user = self.user_named(&username).await?;
                let _guard = self.locks.lock(conversation).await;
                // Anyone may leave; removing others takes an admin.
                if user == caller.user {
                    let m = self.member(conversation, caller.user).await?;
                    if m.kind != ConvKind::Group {
                        return Err(ApiError::new(ErrorCode::InvalidRequest, "you cannot leave a direct conversation"));
                    }
                } else {
                    self.group_admin(conversation, caller.user).await?;
                }
                let outcome = self.store.append(conversation, caller.user, EventBody::MemberRemoved { user }).await?;
                if matches!(outcome, AppendOutcome::Unchanged) {
                    return Err(ApiError::new(ErrorCode::NotMember, format!("{username} is not a member")));
                }
                Ok(Reply::Done { pos: self.publish(&outcome)? })
            }
            RequestBody::RenameGroup { conversation, name } => {
                let name = self.group_name(&name)?;
                let _guard = self.locks.lock(conversation).await;
                self.group_admin(conversation, caller.user).await?;
                let outcome = self.store.append(conversation, caller.user, EventBody::Renamed { name }).await?;
                Ok(Reply::Done { pos: self.publish(&outcome)? })
            }
            RequestBody::SetAdmin { conversation, username, admin } => {
                let user = self.user_named(&username).await?;
                let _guard = self.locks.lock(conversation).await;
                self.group_admin(conversation, caller.user).await?;
                if self.store.membership(conversation, user).await?.is_none() {
                    return Err(ApiError::new(ErrorCode::NotMember, format!("{username} is not a member")));
                }
                let outcome =
                    self.store.append(conversation, caller.user, EventBody::AdminChanged { user, admin }).await?;
                Ok(Reply::Done { pos: self.publish(&outcome)? })
            }
            RequestBody::SendMany { conversation, messages } => {
                if messages.is_empty() || messages.len() > MAX_BATCH {
                    let why = format!("send_many takes 1 to {MAX_BATCH} messages");
                    return Err(ApiError::new(ErrorCode::InvalidRequest, why));
                }
                let results = self.send_texts(caller, conversation, messages).await?;
                Ok(Reply::SentMany { conversation, results })
            }
            RequestBody::Send { conversation, client_id, text, attachments } => {
                let one = confab_protocol::OutgoingText { client_id, text, attachments };
                let reply = self.send_each(caller, conversation, vec![one]).await?.pop();
                reply.unwrap_or_else(|| Err(ApiError::internal("send", "no result")))
            }
            RequestBody::Edit { conversation, seq, text } => {
                self.change(caller, conversation, EventBody::Edited { seq, text }).await
            }
            RequestBody::Delete { conversation, seq } => {
                self.change(caller, conversation, EventBody::Deleted { seq }).await
            }
            RequestBody::React { conversation, seq, emoji, add } => {
                self.change(caller, conversation, EventBody::Reaction { seq, emoji, added: add }).await
            }
            RequestBody::Pin { conversation, seq, pinned } => {
                self.change(caller, conversation, EventBody::Pinned { seq, pinned }).await
            }
            RequestBody::Delivered { conversation, seq } => {
                self.member(conversation, caller.user).await?;
                self.mark(vec![Mark { conversation, user: caller.user, delivered: seq, read: 0 }]).await?;
                Ok(Reply::Done { pos: None })
            }
            RequestBody::Read { conversation, seq } => {
                self.member(conversation, caller.user).await?;
                self.mark(vec![Mark { conversation, user: caller.user, delivered: seq, read: seq }]).await?;
                Ok(Reply::Done { pos: None })
            }
            RequestBody::CallInvite { conversation, call, video } => {
                crate::guard::check(&self.call_limiter, &caller.user)?;
                self.call_invite(caller, conversation, call, video).await
            }
            RequestBody::CallAccept { call } => self.call_accept(caller, call),
            RequestBody::CallDecline { call } => self.call_decline(caller, call).await,
            RequestBody::CallHangup { call } => self.call_hangup(caller, call).await,
            RequestBody::CallSignal { call, signal } => self.call_signal(caller, call, signal),
            RequestBody::CallRejoin { call } => self.call_rejoin(caller, call),
            RequestBody::Search { query, conversation, before, limit } => {
                self.search(caller, &query, conversation, before, limit).await
            }
            RequestBody::Sessions {} => {
                let sessions = self
                    .store
                    .sessions_of(caller.user)
                    .await?
                    .into_iter()
                    .map(|(id, device, created, last_seen)| DeviceSession {
                        id,
                        device,
                        created,
                        last_seen,
                        current: id == caller.session,
                    })
                    .collect();
                Ok(Reply::Sessions { sessions })
            }
            RequestBody::RevokeSession { session } => {
                let revoked = self.store.revoke_sessions(caller.user, Revoke::One(session)).await?;
                if revoked.is_empty() {
                    return Err(ApiError::new(ErrorCode::NotFound, "no such session on this account"));
                }
                self.kick_sessions(&revoked);
                Ok(Reply::Done { pos: None })
            }
            RequestBody::RevokeOtherSessions {} => {
                let revoked = self.store.revoke_sessions(caller.user, Revoke::AllBut(caller.session)).await?;
                self.kick_sessions(&revoked);
                Ok(Reply::Done { pos: None })
            }
            RequestBody::SetPush { target } => {
                self.push.check(&target)?;
                self.store.set_push(caller.session, caller.user, &target).await?;
                Ok(Reply::Done { pos: None })
            }
            RequestBody::ClearPush {} => {
                self.store.clear_push(caller.session).await?;
                Ok(Reply::Done { pos: None })
            }
            RequestBody::Typing { conversation } => {
                self.member(conversation, caller.user).await?;
                if self.hub.typing_allowed(caller.user, conversation) {
                    let others: Vec<UserId> =
                        self.store.member_ids(conversation).await?.into_iter().filter(|u| *u != caller.user).collect();
                    let f = frame(&ServerFrame::Typing { conversation, user: caller.user, ttl_ms: TYPING_TTL_MS })?;
                    self.publish_users(&others, f);
                }
                Ok(Reply::Done { pos: None })
            }
        }
    }

    /// Commits receipts (no conversation lock: watermarks only move
    /// forward, so concurrent ones commute) and queues what moved for the
    /// next coalesced frame.
    async fn mark(&self, marks: Vec<Mark>) -> Result<()> {
        let moved = self.store.mark(marks).await?;
        self.receipts.add(moved.into_iter().flatten());
        Ok(())
    }

    /// Sends the receipt frames that are due, each to the conversation's
    /// members (called every [`crate::receipts::FLUSH_EVERY`]).
    pub async fn flush_receipts(&self) {
        for f in self.receipts.take(std::time::Instant::now()) {
            let members = match self.store.member_ids(f.conversation).await {
                Ok(members) => members,
                Err(e) => {
                    // Committed all the same: devices see it at their next
                    // sync (the version they hold is behind).
                    tracing::warn!(%e, "cannot publish receipts");
                    continue;
                }
            };
            let body = ServerFrame::Receipts {
                conversation: f.conversation,
                since: f.since,
                version: f.version,
                marks: f.marks,
            };
            match frame(&body) {
                Ok(frame) => self.publish_users(&members, frame),
                Err(e) => tracing::warn!(%e, "cannot publish receipts"),
            }
        }
    }

    /// Watermark pages in request order until the reply's budget is spent.
    async fn watermarks(&self, caller: &Caller, from: Vec<WatermarksFrom>) -> Result<Reply> {
        at_most_batch(from.len(), "conversations")?;
        let mut budget = REPLY_BUDGET_BYTES;
        let mut pages = Vec::with_capacity(from.len());
        for f in from {
            if budget < crate::store::WATERMARK_BYTES {
                break;
            }
            let page = match self.member(f.conversation, caller.user).await {
                Ok(_) => self.store.watermarks(f.conversation, f.after, budget).await.map(|p| WatermarkPage {
                    conversation: f.conversation,
                    version: p.version,
                    marks: p.marks,
                    has_more: p.has_more,
                    error: None,
                }),
                Err(e) => Err(e),
            };
            let page = match page {
                Ok(page) => page,
                Err(e) if e.code != ErrorCode::Internal => WatermarkPage {
                    conversation: f.conversation,
                    version: 0,
                    marks: Vec::new(),
                    has_more: false,
                    error: Some(e.code),
                },
                Err(e) => return Err(e),
            };
            budget = budget.saturating_sub((page.marks.len() * crate::store::WATERMARK_BYTES).max(100));
            pages.push(page);
        }
        Ok(Reply::Watermarks { pages })
    }

    /// Closes the sockets of revoked sessions (4001); they cannot come
    /// back, their tokens are gone.
    pub fn kick_sessions(&self, sessions: &[uuid::Uuid]) {
        for s in sessions {
            self.hub.kick_session(*s);
            if let Some(cluster) = &self.cluster {
                cluster.kick_session(*s);
            }
        }
    }

    /// Queues `frame` for every connection of these users, on every node
    /// (best-effort beyond this one: nothing here is in the log).
    pub fn publish_users(&self, users: &[UserId], frame: Arc<str>) {
        if let Some(cluster) = &self.cluster {
            cluster.forward(users, &frame);
        }
        self.hub.publish(users, frame);
    }

    /// Those of `users` connected to any node.
    pub fn online_among(&self, users: &[UserId]) -> Vec<UserId> {
        let mut online = self.hub.online_among(users);
        if let Some(cluster) = &self.cluster {
            let here: std::collections::HashSet<UserId> = online.iter().copied().collect();
            let rest: Vec<UserId> = users.iter().copied().filter(|u| !here.contains(u)).collect();
            online.extend(cluster.remote_online_among(&rest));
        }
        online
    }

    /// Whether `user` is connected to any node.
    pub fn is_online(&self, user: UserId) -> bool {
        self.hub.is_online(user) || self.cluster.as_ref().is_some_and(|c| c.remote_connections(user) > 0)
    }

    fn group_name(&self, name: &str) -> Result<String> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_GROUP_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("a group name is 1-{MAX_GROUP_NAME_CHARS} characters"),
            ));
        }
        Ok(name.to_owned())
    }

    /// The caller's conversations, paged by id; one tiny reply when the
    /// client's digest shows it has everything.
    async fn sync(&self, caller: &Caller, digest: Option<String>, after: Option<ConversationId>) -> Result<Reply> {
        let heads: Vec<ConversationHead> = self.store.heads(caller.user).await?;
        let ours = sync_digest(heads.iter().map(|h| (h.id, h.last_pos, h.marks)).collect());
        if digest.as_deref() == Some(ours.as_str()) {
            return Ok(Reply::Sync { conversations: Vec::new(), digest: ours, unchanged: true, has_more: false });
        }
        let max = REPLY_BUDGET_BYTES / HEAD_BYTES;
        let mut rest = heads.into_iter().filter(|h| after.is_none_or(|a| h.id > a));
        let conversations: Vec<ConversationHead> = rest.by_ref().take(max).collect();
        let has_more = rest.next().is_some();
        Ok(Reply::Sync { conversations, digest: ours, unchanged: false, has_more })
    }

    /// One conversation's events after `after`, bounded by `limit` and
    /// `budget` bytes, and the bytes it took.
    async fn events_page(
        &self,
        caller: &Caller,
        conversation: ConversationId,
        after: i64,
        limit: u32,
        budget: usize,
    ) -> Result<(EventPage, usize)> {
        self.member(conversation, caller.user).await?;
        if after < 0 {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "`after` must be >= 0"));
        }
        let limit = limit.clamp(1, MAX_PAGE);
        let crate::store::LogPage { events, last_pos, bytes } =
            self.store.events_after(conversation, after, limit, budget).await?;
        if after > last_pos {
            // The client has seen more than the server has: the server
            // lost data or the client talks to another server. The client
            // must drop its copy and refetch.
            return Err(ApiError::new(
                ErrorCode::ReplayUnavailable,
                format!("position {after} is ahead of the server's {last_pos}; refetch the conversation"),
            ));
        }
        let has_more = events.last().is_some_and(|e| e.pos < last_pos);
        Ok((EventPage { conversation, events, last_pos, has_more, error: None }, bytes))
    }

    fn fill_presence(&self, c: &mut ConversationInfo) {
        let users: Vec<UserId> = c.members.iter().map(|m| m.user).collect();
        let online: std::collections::HashSet<UserId> = self.online_among(&users).into_iter().collect();
        for m in &mut c.members {
            m.online = online.contains(&m.user);
        }
    }

    async fn conversation_reply(&self, id: ConversationId) -> Result<Reply> {
        let mut conversation = self.store.conversation(id).await?.ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
        self.fill_presence(&mut conversation);
        Ok(Reply::Conversation { conversation })
    }

    /// Tells everyone who shares a conversation with `user` that they came
    /// online or went offline.
    pub async fn announce_presence(&self, user: UserId, online: bool, last_seen: Option<i64>) -> Result<()> {
        let contacts = self.store.contacts(user).await?;
        let f = frame(&ServerFrame::Presence { user, online, last_seen })?;
        self.publish_users(&contacts, f);
        Ok(())
    }
}
