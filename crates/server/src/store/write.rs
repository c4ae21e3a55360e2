//! How changes are written, once for every store: the domain rules
//! (deduplicated sends, gap-free positions, message changes by
//! [`confab_protocol::rules`], receipts that only move forward, member
//! changes that change something) over a [`Writer`], which only persists.
//! A store supplies a [`Backend`] that opens transactions; [`GroupCommit`]
//! runs every append and receipt through one task that commits them in
//! groups.
//!
//! Group commit: one task takes every job that queued up while the
//! previous transaction was committing (up to [`MAX_GROUP`]) and runs them
//! in one transaction, each change that may refuse in its own savepoint.
//! One commit (one fsync) then covers many messages, and no append is
//! answered, so none is published, before its transaction commits. When a
//! group fails as a whole (a deadlock or a conflict with another node on a
//! shared database), each of its jobs is tried again alone, so one bad job
//! fails only itself.

use super::{now_ms, AppendOutcome, Mark, Marked};
use crate::error::{ApiError, Result};
use async_trait::async_trait;
use confab_protocol::{
    rules, Attachment, ClientId, ConvEvent, ConvKind, ConversationId, ErrorCode, EventBody, Member, Message, Millis,
    UserId, Watermark,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A message's sender and client id: a send is idempotent on these.
pub type SendKey = (UserId, ClientId);

/// Where an accepted send went.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub conversation: ConversationId,
    pub seq: i64,
    pub pos: i64,
    pub ts: Millis,
}

/// The row of a new message (or a call's entry), beside its event.
pub struct NewMessage<'a> {
    pub event: &'a ConvEvent,
    pub seq: i64,
    pub client_id: ClientId,
    pub text: &'a str,
    pub attachments: &'a [Attachment],
    /// A call entry's record, as JSON.
    pub call: Option<String>,
}

/// One open transaction of a store: reads and writes rows, decides nothing.
/// Methods that take many items do it in a constant number of statements,
/// since each statement is a round trip and those dominate an append.
#[async_trait]
pub trait Writer: Send {
    /// Locks these conversations' rows until commit, in id order (so two
    /// writers never wait for each other in a cycle). A store with a single
    /// writer needs no locks.
    async fn lock(&mut self, conversations: &[ConversationId]) -> Result<()>;
    /// Which of these sends were already accepted.
    async fn sent(&mut self, keys: &[SendKey]) -> Result<HashMap<SendKey, Sent>>;
    /// Moves each conversation's `last_pos` forward by `.1` and `last_seq`
    /// by `.2`; returns the new values of those that exist.
    async fn advance(&mut self, counts: &[(ConversationId, i64, i64)]) -> Result<HashMap<ConversationId, (i64, i64)>>;
    async fn insert_events(&mut self, events: &[ConvEvent]) -> Result<()>;
    /// Message rows, with the blobs they carry.
    async fn insert_messages(&mut self, messages: &[NewMessage<'_>]) -> Result<()>;
    /// The members of each conversation.
    async fn members(&mut self, conversations: &[ConversationId]) -> Result<HashMap<ConversationId, Vec<UserId>>>;
    async fn message(&mut self, conversation: ConversationId, seq: i64) -> Result<Option<Message>>;
    /// Writes a message's current state (text, flags, reactions,
    /// attachments; a message without attachments holds no blobs).
    async fn save_message(&mut self, message: &Message) -> Result<()>;
    /// Whether the member was added (`false`: already one).
    async fn add_member(&mut self, conversation: ConversationId, member: &Member) -> Result<bool>;
    async fn remove_member(&mut self, conversation: ConversationId, user: UserId) -> Result<bool>;
    /// Whether the name changed.
    async fn rename(&mut self, conversation: ConversationId, name: &str) -> Result<bool>;
    async fn set_admin(&mut self, conversation: ConversationId, user: UserId, admin: bool) -> Result<bool>;
    /// A member's (delivered, read) watermarks and the conversation's
    /// `last_seq`; `None` if not a member.
    async fn receipts(&mut self, conversation: ConversationId, user: UserId) -> Result<Option<((i64, i64), i64)>>;
    /// Sets a member's watermarks; returns the conversation's new
    /// watermark version.
    async fn set_receipts(&mut self, conversation: ConversationId, user: UserId, marks: (i64, i64)) -> Result<i64>;
    /// Creates a conversation; `false` if its `direct_key` exists already.
    async fn create_conversation(
        &mut self,
        id: ConversationId,
        kind: ConvKind,
        name: Option<&str>,
        direct_key: Option<&str>,
    ) -> Result<bool>;
    /// The direct conversation with this key.
    async fn direct(&mut self, key: &str) -> Result<Option<ConversationId>>;
    async fn savepoint(&mut self) -> Result<()>;
    async fn release_savepoint(&mut self) -> Result<()>;
    async fn rollback_to_savepoint(&mut self) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Opens write transactions.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn begin(&self) -> Result<Box<dyn Writer>>;
}

/// Writes of one request, applied in order: a change's appends, or receipts.
enum Job {
    Append {
        conversation: ConversationId,
        actor: UserId,
        bodies: Vec<EventBody>,
        reply: oneshot::Sender<Result<Vec<Result<AppendOutcome>>>>,
    },
    Mark {
        marks: Vec<Mark>,
        reply: oneshot::Sender<Result<Vec<Option<Marked>>>>,
    },
}

/// What a job wrote, before it is answered.
enum Done {
    Append(Vec<Result<AppendOutcome>>),
    Mark(Vec<Option<Marked>>),
}

impl Job {
    fn answer(self, result: Result<Done>) {
        match (self, result) {
            (Job::Append { reply, .. }, Ok(Done::Append(r))) => drop(reply.send(Ok(r))),
            (Job::Mark { reply, .. }, Ok(Done::Mark(r))) => drop(reply.send(Ok(r))),
            (Job::Append { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Job::Mark { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Job::Append { reply, .. }, Ok(_)) => drop(reply.send(Err(ApiError::internal("append", "wrong result")))),
            (Job::Mark { reply, .. }, Ok(_)) => drop(reply.send(Err(ApiError::internal("mark", "wrong result")))),
        }
    }

    fn conversations(&self) -> Vec<ConversationId> {
        match self {
            Job::Append { conversation, .. } => vec![*conversation],
            Job::Mark { marks, .. } => marks.iter().map(|m| m.conversation).collect(),
        }
    }

    /// The job's input, to write (a group may have to be written twice).
    fn work(&self) -> Work {
        match self {
            Job::Append { conversation, actor, bodies, .. } => {
                Work::Append { conversation: *conversation, actor: *actor, bodies: bodies.clone() }
            }
            Job::Mark { marks, .. } => Work::Mark(marks.clone()),
        }
    }
}

enum Work {
    Append { conversation: ConversationId, actor: UserId, bodies: Vec<EventBody> },
    Mark(Vec<Mark>),
}

/// Jobs in one transaction at most: bounds a transaction's size and how
/// long its first job waits.
pub const MAX_GROUP: usize = 256;

/// The queue into the write task.
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
    /// Transactions committed (each holds one or more jobs).
    commits: Arc<AtomicU64>,
}

impl GroupCommit {
    /// Starts the write task over `backend`, taking at most `max_group`
    /// jobs per transaction.
    pub fn start(backend: Arc<dyn Backend>, max_group: usize) -> GroupCommit {
        // Each connection has at most one request in flight, so the queue
        // holds at most one job per connection; when full, senders wait.
        let (jobs, rx) = mpsc::channel(1024);
        let commits = Arc::default();
        tokio::spawn(commit_loop(backend, rx, Arc::clone(&commits), max_group.max(1)));
        GroupCommit { jobs, commits }
    }

    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    async fn submit<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let gone = || ApiError::new(ErrorCode::Internal, "the store is shutting down");
        self.jobs.send(job(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    pub async fn append_all(
        &self,
        conversation: ConversationId,
        actor: UserId,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<Result<AppendOutcome>>> {
        self.submit(|reply| Job::Append { conversation, actor, bodies, reply }).await
    }

    pub async fn mark(&self, marks: Vec<Mark>) -> Result<Vec<Option<Marked>>> {
        if marks.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(|reply| Job::Mark { marks, reply }).await
    }
}

async fn commit_loop(backend: Arc<dyn Backend>, mut rx: mpsc::Receiver<Job>, commits: Arc<AtomicU64>, max: usize) {
    let mut batch = Vec::with_capacity(max);
    while rx.recv_many(&mut batch, max).await > 0 {
        let work: Vec<Work> = batch.iter().map(Job::work).collect();
        let mut conversations: Vec<ConversationId> = batch.iter().flat_map(Job::conversations).collect();
        let started = std::time::Instant::now();
        let result = write_group(&*backend, &mut conversations, work).await;
        metrics::histogram!("confab_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("confab_commit_jobs").record(batch.len() as f64);
        commits.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    job.answer(Ok(result));
                }
            }
            Err(Failed { error, .. }) if batch.len() == 1 => {
                tracing::error!(%error, "a write transaction failed");
                for job in batch.drain(..) {
                    job.answer(Err(error.clone()));
                }
            }
            // A statement failed, so nothing committed: try each job alone,
            // so a job that fails the whole transaction (a conflict with
            // another node) fails only itself. A database that cannot be
            // reached, or a commit whose outcome is unknown, fails them all
            // at once: retrying one by one would only queue everyone.
            Err(Failed { error, alone: true }) => {
                tracing::warn!(%error, jobs = batch.len(), "a group of writes failed; writing them one by one");
                let mut jobs = batch.drain(..);
                while let Some(job) = jobs.next() {
                    let mut conversations = job.conversations();
                    let result = write_group(&*backend, &mut conversations, vec![job.work()]).await;
                    commits.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(mut r) => job.answer(r.pop().ok_or_else(|| ApiError::internal("write", "no result"))),
                        Err(Failed { error, alone: true }) => job.answer(Err(error)),
                        Err(Failed { error, alone: false }) => {
                            job.answer(Err(error.clone()));
                            for job in jobs.by_ref() {
                                job.answer(Err(error.clone()));
                            }
                        }
                    }
                }
            }
            Err(Failed { error, .. }) => {
                tracing::error!(%error, jobs = batch.len(), "a write transaction failed");
                for job in batch.drain(..) {
                    job.answer(Err(error.clone()));
                }
            }
        }
    }
}

/// A group that did not commit; `alone`: a statement failed (the group's
/// jobs may succeed one by one), not the database or the commit.
struct Failed {
    error: ApiError,
    alone: bool,
}

async fn write_group(
    backend: &dyn Backend,
    conversations: &mut Vec<ConversationId>,
    work: Vec<Work>,
) -> std::result::Result<Vec<Done>, Failed> {
    let mut w = backend.begin().await.map_err(|error| Failed { error, alone: false })?;
    let results = apply_group(&mut *w, conversations, work).await.map_err(|error| Failed { error, alone: true })?;
    w.commit().await.map_err(|error| Failed { error, alone: false })?;
    Ok(results)
}

async fn apply_group(
    w: &mut dyn Writer,
    conversations: &mut Vec<ConversationId>,
    work: Vec<Work>,
) -> Result<Vec<Done>> {
    conversations.sort_unstable();
    conversations.dedup();
    w.lock(conversations).await?;
    let mut results: Vec<Option<Done>> = work.iter().map(|_| None).collect();
    // Jobs that only add messages (every send) are written together, in a
    // constant number of statements for the whole group.
    let mut runs = Vec::new();
    let mut run_jobs = Vec::new();
    let mut rest = Vec::new();
    for (i, work) in work.into_iter().enumerate() {
        match work {
            Work::Append { conversation, actor, bodies }
                if bodies.iter().all(|b| matches!(b, EventBody::Message { .. })) =>
            {
                let texts = bodies.into_iter().filter_map(new_message).collect();
                runs.push(MessageRun { conversation, actor, texts });
                run_jobs.push(i);
            }
            other => rest.push((i, other)),
        }
    }
    if !runs.is_empty() {
        for (i, outcomes) in run_jobs.into_iter().zip(append_messages(w, runs).await?) {
            results[i] = Some(Done::Append(outcomes));
        }
    }
    for (i, work) in rest {
        results[i] = Some(match work {
            Work::Append { conversation, actor, bodies } => {
                Done::Append(append_bodies(w, conversation, actor, bodies).await?)
            }
            Work::Mark(marks) => {
                let mut out = Vec::with_capacity(marks.len());
                for m in marks {
                    out.push(mark(w, m).await?);
                }
                Done::Mark(out)
            }
        });
    }
    results.into_iter().map(|r| r.ok_or_else(|| ApiError::internal("write", "a job without its result"))).collect()
}

/// A new message's client id, text and attachments.
type Text = (ClientId, String, Vec<Attachment>);

fn new_message(body: EventBody) -> Option<Text> {
    match body {
        EventBody::Message { client_id, text, attachments, .. } => Some((client_id, text, attachments)),
        _ => None,
    }
}

/// New messages from one sender to one conversation, in order.
struct MessageRun {
    conversation: ConversationId,
    actor: UserId,
    texts: Vec<Text>,
}

/// One request's appends inside the group's transaction.
async fn append_bodies(
    w: &mut dyn Writer,
    conversation: ConversationId,
    actor: UserId,
    bodies: Vec<EventBody>,
) -> Result<Vec<Result<AppendOutcome>>> {
    let mut outcomes = Vec::with_capacity(bodies.len());
    let mut bodies = bodies.into_iter().peekable();
    while let Some(body) = bodies.next() {
        // A run of new messages is refused, if at all, before it writes
        // anything (a repeated client id, no such conversation); an error
        // after its first write is the database's, and fails the whole
        // group, so it needs no savepoint.
        if let EventBody::Message { client_id, text, attachments, .. } = body {
            let mut texts = vec![(client_id, text, attachments)];
            while let Some(EventBody::Message { .. }) = bodies.peek() {
                texts.extend(bodies.next().and_then(new_message));
            }
            let run = MessageRun { conversation, actor, texts };
            outcomes.extend(append_messages(w, vec![run]).await?.into_iter().flatten());
            continue;
        }
        // Any other change may refuse after writing: a savepoint rolls it
        // back alone.
        w.savepoint().await?;
        match append_one(w, conversation, actor, body).await {
            Ok(outcome) => {
                w.release_savepoint().await?;
                outcomes.push(Ok(outcome));
            }
            Err(e) => {
                w.rollback_to_savepoint().await?;
                outcomes.push(Err(e));
            }
        }
    }
    Ok(outcomes)
}

fn reused_client_id() -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, "this client_id was already used for a message in another conversation")
}

/// Runs of new messages, in order, in a constant number of statements
/// however many runs and messages there are. Each message gets its own
/// outcome (per run, in order); an `Err` outcome is the message's refusal,
/// an `Err` result the database's failure.
async fn append_messages(w: &mut dyn Writer, runs: Vec<MessageRun>) -> Result<Vec<Vec<Result<AppendOutcome>>>> {
    let keys: Vec<SendKey> = runs.iter().flat_map(|r| r.texts.iter().map(|(id, _, _)| (r.actor, *id))).collect();
    // Client ids their senders already used.
    let mut known = w.sent(&keys).await?;
    // Members, read under the conversations' locks: a sender removed by
    // another node after the service's check is refused here. They are
    // the recipients too.
    let mut conversations: Vec<ConversationId> = runs.iter().map(|r| r.conversation).collect();
    conversations.sort_unstable();
    conversations.dedup();
    let members = w.members(&conversations).await?;
    // Only members send (one that does not exist has none: the same
    // answer, so a non-member learns nothing about it).
    let may_send = |r: &MessageRun| members.get(&r.conversation).is_some_and(|m| m.contains(&r.actor));
    // How many new messages each conversation takes (a repeat, even of one
    // earlier in this group, takes none).
    let mut counts: HashMap<ConversationId, i64> = HashMap::new();
    let mut seen = HashSet::new();
    // Per message, in order: whether it takes a position (what is counted
    // here is exactly what is written below, or positions would collide).
    let mut fresh = Vec::with_capacity(keys.len());
    for r in &runs {
        let allowed = may_send(r);
        for (id, _, _) in &r.texts {
            let new = !known.contains_key(&(r.actor, *id)) && allowed && seen.insert((r.actor, *id));
            if new {
                *counts.entry(r.conversation).or_default() += 1;
            }
            fresh.push(new);
        }
    }
    let counts: Vec<(ConversationId, i64, i64)> = counts.into_iter().map(|(c, n)| (c, n, n)).collect();
    // The first new position and sequence number of each conversation that
    // exists.
    let mut next: HashMap<ConversationId, (i64, i64)> = w
        .advance(&counts)
        .await?
        .into_iter()
        .map(|(c, (pos, seq))| {
            let n = counts.iter().find(|(id, _, _)| *id == c).map_or(0, |(_, n, _)| *n);
            (c, (pos - n + 1, seq - n + 1))
        })
        .collect();
    let ts = now_ms();
    let mut events = Vec::with_capacity(keys.len());
    let mut outcomes: Vec<Vec<Option<Result<AppendOutcome>>>> = Vec::with_capacity(runs.len());
    let mut fresh = fresh.into_iter();
    for r in runs {
        let allowed = may_send(&r);
        let MessageRun { conversation, actor, texts } = r;
        let mut run = Vec::with_capacity(texts.len());
        for (client_id, text, attachments) in texts {
            let new = fresh.next().unwrap_or(false);
            // Known from before, or a repeat of one earlier in this group.
            if let Some(s) = known.get(&(actor, client_id)) {
                run.push(Some(if s.conversation == conversation {
                    Ok(AppendOutcome::Duplicate { conversation, seq: s.seq, pos: s.pos, ts: s.ts })
                } else {
                    Err(reused_client_id())
                }));
                continue;
            }
            if !allowed {
                run.push(Some(Err(ApiError::from(ErrorCode::NotMember))));
                continue;
            }
            if !new {
                // A repeat of one refused earlier in this group (sent to a
                // conversation that does not exist).
                run.push(Some(Err(reused_client_id())));
                continue;
            }
            let Some((pos, seq)) = next.get_mut(&conversation) else {
                run.push(Some(Err(ApiError::from(ErrorCode::NotFound))));
                continue;
            };
            known.insert((actor, client_id), Sent { conversation, seq: *seq, pos: *pos, ts });
            let body = EventBody::Message { seq: *seq, client_id, text, attachments };
            events.push(ConvEvent { conversation, pos: *pos, ts, actor, body });
            run.push(None);
            *pos += 1;
            *seq += 1;
        }
        outcomes.push(run);
    }
    w.insert_events(&events).await?;
    let rows: Vec<NewMessage> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Message { seq, client_id, text, attachments } => {
                Some(NewMessage { event: e, seq: *seq, client_id: *client_id, text, attachments, call: None })
            }
            _ => None,
        })
        .collect();
    w.insert_messages(&rows).await?;
    let recipients = members;
    let mut events = events.into_iter();
    outcomes
        .into_iter()
        .map(|run| {
            run.into_iter()
                .map(|o| match o {
                    Some(outcome) => Ok(outcome),
                    None => match events.next() {
                        Some(event) => {
                            let recipients = recipients.get(&event.conversation).cloned().unwrap_or_default();
                            Ok(Ok(AppendOutcome::Appended { event, recipients }))
                        }
                        None => Err(ApiError::internal("append", "an outcome without its event")),
                    },
                })
                .collect()
        })
        .collect()
}

/// Moves one member's watermarks forward (by [`rules::advance_receipt`])
/// and bumps the conversation's watermark version; `None` when nothing
/// moves, or the user is not (or no longer) a member.
async fn mark(w: &mut dyn Writer, m: Mark) -> Result<Option<Marked>> {
    let Some((current, last_seq)) = w.receipts(m.conversation, m.user).await? else { return Ok(None) };
    let Some(marks) = rules::advance_receipt(current, (m.delivered, m.read), last_seq) else { return Ok(None) };
    let version = w.set_receipts(m.conversation, m.user, marks).await?;
    let mark = Watermark { user: m.user, delivered_seq: marks.0, read_seq: marks.1 };
    Ok(Some(Marked { conversation: m.conversation, mark, version }))
}

async fn members_of(w: &mut dyn Writer, conversation: ConversationId) -> Result<Vec<UserId>> {
    Ok(w.members(&[conversation]).await?.remove(&conversation).unwrap_or_default())
}

/// One change other than a new message.
async fn append_one(
    w: &mut dyn Writer,
    conversation: ConversationId,
    actor: UserId,
    mut body: EventBody,
) -> Result<AppendOutcome> {
    if let EventBody::Call { call, video, outcome, .. } = &body {
        if !members_of(w, conversation).await?.contains(&actor) {
            return Err(ErrorCode::NotMember.into());
        }
        // The call's entry, a message of the caller's keyed by the call
        // id: each call is logged once.
        let record = confab_protocol::CallRecord { call: *call, video: *video, outcome: *outcome };
        let json = serde_json::to_string(&record).map_err(|e| ApiError::internal("serialize call", e))?;
        let call = *call;
        let event = push_event(w, conversation, actor, body, true, now_ms()).await?;
        let EventBody::Call { seq, .. } = event.body else {
            return Err(ApiError::internal("append", "push_event changed the kind"));
        };
        let row = NewMessage { event: &event, seq, client_id: call, text: "", attachments: &[], call: Some(json) };
        w.insert_messages(&[row]).await?;
        let recipients = members_of(w, conversation).await?;
        return Ok(AppendOutcome::Appended { event, recipients });
    }
    // Checked again under the conversation's lock: another node may have
    // removed the actor since the service checked.
    if !members_of(w, conversation).await?.contains(&actor) {
        return Err(ErrorCode::NotMember.into());
    }
    let ts = now_ms();
    if !apply_change(w, conversation, actor, ts, &mut body).await? {
        return Ok(AppendOutcome::Unchanged);
    }
    let mut recipients = members_of(w, conversation).await?;
    if let EventBody::MemberRemoved { user } = &body {
        recipients.push(*user);
    }
    let event = push_event(w, conversation, actor, body, false, ts).await?;
    Ok(AppendOutcome::Appended { event, recipients })
}

/// Appends one event at the conversation's next position (and the next
/// `seq`, for a call entry).
async fn push_event(
    w: &mut dyn Writer,
    conversation: ConversationId,
    actor: UserId,
    body: EventBody,
    bump_seq: bool,
    ts: Millis,
) -> Result<ConvEvent> {
    let (pos, seq) = w
        .advance(&[(conversation, 1, i64::from(bump_seq))])
        .await?
        .remove(&conversation)
        .ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
    let body = match body {
        EventBody::Message { client_id, text, attachments, .. } => {
            EventBody::Message { seq, client_id, text, attachments }
        }
        EventBody::Call { call, video, outcome, .. } => EventBody::Call { seq, call, video, outcome },
        other => other,
    };
    let event = ConvEvent { conversation, pos, ts, actor, body };
    w.insert_events(std::slice::from_ref(&event)).await?;
    Ok(event)
}

/// Applies the state change of `body` to the current-state rows. Returns
/// `false` when it changes nothing (then no event is appended).
async fn apply_change(
    w: &mut dyn Writer,
    conversation: ConversationId,
    actor: UserId,
    ts: Millis,
    body: &mut EventBody,
) -> Result<bool> {
    if let Some(seq) = rules::target_seq(body) {
        let Some(mut message) = w.message(conversation, seq).await? else {
            return Err(ApiError::new(ErrorCode::NotFound, format!("no message {seq} in this conversation")));
        };
        let changed = rules::apply_to_message(&mut message, actor, ts, body).map_err(|code| match code {
            ErrorCode::NotFound => ApiError::new(code, "the message was deleted"),
            code => ApiError::from(code),
        })?;
        if changed {
            w.save_message(&message).await?;
        }
        return Ok(changed);
    }
    match body {
        EventBody::MemberAdded { member } => w.add_member(conversation, member).await,
        EventBody::MemberRemoved { user } => w.remove_member(conversation, *user).await,
        EventBody::Renamed { name } => w.rename(conversation, name).await,
        EventBody::AdminChanged { user, admin } => w.set_admin(conversation, *user, *admin).await,
        EventBody::Receipt { .. } => {
            Err(ApiError::internal("apply_change", "receipts are watermarks (Store::mark), not events"))
        }
        EventBody::Created { .. } | EventBody::Message { .. } | EventBody::Call { .. } => {
            Err(ApiError::internal("apply_change", "created/message are appended elsewhere"))
        }
        EventBody::Edited { .. }
        | EventBody::Deleted { .. }
        | EventBody::Reaction { .. }
        | EventBody::Pinned { .. } => Err(ApiError::internal("apply_change", "message events are handled above")),
    }
}

/// The key that makes a pair of users' direct conversation unique.
fn direct_key(a: UserId, b: UserId) -> String {
    if a < b {
        format!("{a}:{b}")
    } else {
        format!("{b}:{a}")
    }
}

/// Finds the direct conversation of two users, or creates it as `new_id`
/// (both members, neither an admin).
pub async fn open_direct(
    backend: &dyn Backend,
    new_id: ConversationId,
    a: Member,
    b: Member,
) -> Result<(ConversationId, Option<AppendOutcome>)> {
    let key = direct_key(a.user, b.user);
    let mut w = backend.begin().await?;
    if let Some(id) = w.direct(&key).await? {
        return Ok((id, None));
    }
    // Another node may create it meanwhile: then its conversation is the one.
    if !w.create_conversation(new_id, ConvKind::Direct, None, Some(&key)).await? {
        let id = w.direct(&key).await?.ok_or_else(|| ApiError::internal("open_direct", "the key vanished"))?;
        return Ok((id, None));
    }
    let members = vec![Member { admin: false, ..a.clone() }, Member { admin: false, ..b }];
    let outcome = created(&mut *w, new_id, a.user, ConvKind::Direct, None, members).await?;
    w.commit().await?;
    Ok((new_id, Some(outcome)))
}

/// Creates a group with its members; the creator's `created` event is its
/// first.
pub async fn create_group(
    backend: &dyn Backend,
    id: ConversationId,
    name: &str,
    members: Vec<Member>,
    creator: UserId,
) -> Result<AppendOutcome> {
    let mut w = backend.begin().await?;
    if !w.create_conversation(id, ConvKind::Group, Some(name), None).await? {
        return Err(ApiError::internal("create_group", "a conflicting conversation"));
    }
    let outcome = created(&mut *w, id, creator, ConvKind::Group, Some(name.to_owned()), members).await?;
    w.commit().await?;
    Ok(outcome)
}

async fn created(
    w: &mut dyn Writer,
    id: ConversationId,
    actor: UserId,
    kind: ConvKind,
    name: Option<String>,
    members: Vec<Member>,
) -> Result<AppendOutcome> {
    for m in &members {
        w.add_member(id, m).await?;
    }
    let recipients = members.iter().map(|m| m.user).collect();
    let body = EventBody::Created { kind, name, members };
    let event = push_event(w, id, actor, body, false, now_ms()).await?;
    Ok(AppendOutcome::Appended { event, recipients })
}
