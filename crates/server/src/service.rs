//! What each request does: authorization, validation, the store call, and
//! publication of the committed event. Nothing here knows about sockets.
//!
//! Ordering: changes to one conversation take that conversation's lock (one
//! of [`LOCK_STRIPES`] striped mutexes) around check → commit → publish, so
//! events reach every connection queue in `pos` order and a membership check
//! cannot race a concurrent removal.

use crate::error::{ApiError, Result};
use crate::hub::Hub;
use crate::store::{AppendOutcome, Membership, Store};
use confab_protocol::{
    validate_emoji, validate_text, validate_username, ConvKind, ConversationId, ConversationInfo, ErrorCode, EventBody,
    Member, Reply, RequestBody, ServerFrame, UserId, MAX_GROUP_NAME_CHARS, MAX_PAGE, TYPING_TTL_MS,
};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::Mutex;

const LOCK_STRIPES: usize = 64;
/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1000;

pub struct Service {
    pub store: Arc<dyn Store>,
    pub hub: Hub,
    locks: Vec<Mutex<()>>,
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: UserId,
    pub username: String,
}

fn frame(f: &ServerFrame) -> Result<Arc<str>> {
    serde_json::to_string(f).map(Arc::from).map_err(|e| ApiError::internal("serialize frame", e))
}

impl Service {
    pub fn new(store: Arc<dyn Store>, hub: Hub) -> Self {
        Service { store, hub, locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect() }
    }

    fn lock_for(&self, conversation: ConversationId) -> &Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        conversation.hash(&mut h);
        &self.locks[(h.finish() as usize) % LOCK_STRIPES]
    }

    /// Publishes a committed outcome (call with the conversation lock held).
    fn publish(&self, outcome: &AppendOutcome) -> Result<Option<i64>> {
        match outcome {
            AppendOutcome::Appended { event, recipients } => {
                let f = frame(&ServerFrame::Event { event: event.clone() })?;
                self.hub.publish(recipients, f);
                if matches!(event.body, EventBody::Created { .. } | EventBody::MemberAdded { .. }) {
                    // New contacts: tell each who of the others is online now
                    // (later changes reach them as usual).
                    for user in recipients.iter().filter(|u| self.hub.is_online(**u)) {
                        let others: Vec<UserId> = recipients.iter().filter(|u| *u != user).copied().collect();
                        let f = frame(&ServerFrame::Presence { user: *user, online: true, last_seen: None })?;
                        self.hub.publish(&others, f);
                    }
                }
                Ok(Some(event.pos))
            }
            AppendOutcome::Duplicate { pos, .. } => Ok(Some(*pos)),
            AppendOutcome::Unchanged => Ok(None),
        }
    }

    async fn member(&self, conversation: ConversationId, user: UserId) -> Result<Membership> {
        match self.store.membership(conversation, user).await? {
            Some(m) => Ok(m),
            // Same answer whether the conversation exists or not: a
            // non-member learns nothing about it.
            None => Err(ErrorCode::NotMember.into()),
        }
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
        let _guard = self.lock_for(conversation).lock().await;
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
                let m = message(*seq).await?;
                if m.sender != caller.user {
                    return Err(ApiError::new(ErrorCode::Forbidden, "only the sender can edit a message"));
                }
                if m.deleted {
                    return Err(ApiError::new(ErrorCode::NotFound, "the message was deleted"));
                }
            }
            EventBody::Deleted { seq } => {
                let m = message(*seq).await?;
                let admin_of_group = membership.kind == ConvKind::Group && membership.admin;
                if m.sender != caller.user && !admin_of_group {
                    return Err(ApiError::new(ErrorCode::Forbidden, "only the sender or a group admin can delete"));
                }
            }
            EventBody::Reaction { seq, emoji, .. } => {
                validate_emoji(emoji)?;
                if message(*seq).await?.deleted {
                    return Err(ApiError::new(ErrorCode::NotFound, "the message was deleted"));
                }
            }
            EventBody::Pinned { seq, .. } if message(*seq).await?.deleted => {
                return Err(ApiError::new(ErrorCode::NotFound, "the message was deleted"));
            }
            EventBody::Receipt { .. } => {}
            // Member management is checked by its handlers.
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
            RequestBody::Sync {} => {
                let mut conversations = self.store.conversations_of(caller.user).await?;
                for c in &mut conversations {
                    self.fill_presence(c);
                }
                Ok(Reply::Conversations { conversations })
            }
            RequestBody::Events { conversation, after, limit } => {
                self.member(conversation, caller.user).await?;
                if after < 0 {
                    return Err(ApiError::new(ErrorCode::InvalidRequest, "`after` must be >= 0"));
                }
                let limit = limit.clamp(1, MAX_PAGE);
                let (events, last_pos) = self.store.events_after(conversation, after, limit).await?;
                if after > last_pos {
                    // The client has seen more than the server has: the server
                    // lost data or the client talks to another server. The
                    // client must drop its copy and refetch.
                    return Err(ApiError::new(
                        ErrorCode::ReplayUnavailable,
                        format!("position {after} is ahead of the server's {last_pos}; refetch the conversation"),
                    ));
                }
                let has_more = events.last().is_some_and(|e| e.pos < last_pos);
                Ok(Reply::Events { conversation, events, last_pos, has_more })
            }
            RequestBody::History { conversation, before, limit } => {
                self.member(conversation, caller.user).await?;
                let messages = self.store.history(conversation, before, limit.clamp(1, MAX_PAGE)).await?;
                Ok(Reply::Messages { conversation, messages })
            }
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
                let guard = self.lock_for(new_id).lock().await;
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
                if list.len() > MAX_GROUP_MEMBERS {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("a group has at most {MAX_GROUP_MEMBERS} members"),
                    ));
                }
                let id = uuid::Uuid::now_v7();
                {
                    let _guard = self.lock_for(id).lock().await;
                    let outcome = self.store.create_group(id, &name, list, caller.user).await?;
                    self.publish(&outcome)?;
                }
                self.conversation_reply(id).await
            }
            RequestBody::AddMember { conversation, username } => {
                let user = self.user_named(&username).await?;
                let _guard = self.lock_for(conversation).lock().await;
                self.group_admin(conversation, caller.user).await?;
                if self.store.member_ids(conversation).await?.len() >= MAX_GROUP_MEMBERS {
                    return Err(ApiError::new(ErrorCode::InvalidRequest, "the group is full"));
                }
                let body = EventBody::MemberAdded { member: Member { user, username, admin: false } };
                let outcome = self.store.append(conversation, caller.user, body).await?;
                Ok(Reply::Done { pos: self.publish(&outcome)? })
            }
            RequestBody::RemoveMember { conversation, username } => {
                let user = self.user_named(&username).await?;
                let _guard = self.lock_for(conversation).lock().await;
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
                let _guard = self.lock_for(conversation).lock().await;
                self.group_admin(conversation, caller.user).await?;
                let outcome = self.store.append(conversation, caller.user, EventBody::Renamed { name }).await?;
                Ok(Reply::Done { pos: self.publish(&outcome)? })
            }
            RequestBody::SetAdmin { conversation, username, admin } => {
                let user = self.user_named(&username).await?;
                let _guard = self.lock_for(conversation).lock().await;
                self.group_admin(conversation, caller.user).await?;
                if self.store.membership(conversation, user).await?.is_none() {
                    return Err(ApiError::new(ErrorCode::NotMember, format!("{username} is not a member")));
                }
                let outcome =
                    self.store.append(conversation, caller.user, EventBody::AdminChanged { user, admin }).await?;
                Ok(Reply::Done { pos: self.publish(&outcome)? })
            }
            RequestBody::Send { conversation, client_id, text } => {
                validate_text(&text)?;
                let _guard = self.lock_for(conversation).lock().await;
                // A retry of a message already committed is acknowledged
                // again even if the sender has since lost access: it was
                // delivered, and must not be reported as failed.
                if let Some(AppendOutcome::Duplicate { conversation: c, seq, pos, ts }) =
                    self.store.sent_message(caller.user, client_id).await?
                {
                    if c == conversation {
                        return Ok(Reply::Sent { conversation, client_id, seq, pos, ts, duplicate: true });
                    }
                }
                self.member(conversation, caller.user).await?;
                let body = EventBody::Message { seq: 0, client_id, text };
                let outcome = self.store.append(conversation, caller.user, body).await?;
                self.publish(&outcome)?;
                self.hub.typing_reset(caller.user, conversation);
                match outcome {
                    AppendOutcome::Appended { event, .. } => {
                        let EventBody::Message { seq, .. } = event.body else {
                            return Err(ApiError::internal("send", "not a message event"));
                        };
                        Ok(Reply::Sent { conversation, client_id, seq, pos: event.pos, ts: event.ts, duplicate: false })
                    }
                    AppendOutcome::Duplicate { conversation, seq, pos, ts } => {
                        Ok(Reply::Sent { conversation, client_id, seq, pos, ts, duplicate: true })
                    }
                    AppendOutcome::Unchanged => Err(ApiError::internal("send", "unchanged")),
                }
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
                let body = EventBody::Receipt { user: caller.user, delivered_seq: seq, read_seq: 0 };
                self.change(caller, conversation, body).await
            }
            RequestBody::Read { conversation, seq } => {
                let body = EventBody::Receipt { user: caller.user, delivered_seq: seq, read_seq: seq };
                self.change(caller, conversation, body).await
            }
            RequestBody::Typing { conversation } => {
                self.member(conversation, caller.user).await?;
                if self.hub.typing_allowed(caller.user, conversation) {
                    let others: Vec<UserId> =
                        self.store.member_ids(conversation).await?.into_iter().filter(|u| *u != caller.user).collect();
                    let f = frame(&ServerFrame::Typing { conversation, user: caller.user, ttl_ms: TYPING_TTL_MS })?;
                    self.hub.publish(&others, f);
                }
                Ok(Reply::Done { pos: None })
            }
        }
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

    fn fill_presence(&self, c: &mut ConversationInfo) {
        for m in &mut c.members {
            m.online = self.hub.is_online(m.user);
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
        self.hub.publish(&contacts, f);
        Ok(())
    }
}
