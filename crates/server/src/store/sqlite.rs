//! The embedded SQLite store (WAL). All writes go through a pool of one
//! connection, so SQLite's single writer never sees lock contention (no
//! `SQLITE_BUSY` on upgrade); reads use a separate pool and see every
//! committed write.
//!
//! Appends, the hot path, are group-committed: one task takes every append
//! that queued up while the previous transaction was committing and runs
//! them in one transaction, each in its own savepoint (one refused change
//! rolls back alone). One fsync then covers many messages, and no append
//! is answered, so none is published, before its transaction commits.

mod media;

use super::{
    now_ms, AppendOutcome, LogPage, Mark, Marked, MarksPage, Membership, MessageMeta, Revoke, Session, SessionId, Store,
};
use crate::error::{ApiError, Result};
use async_trait::async_trait;
use confab_protocol::{
    rules, Attachment, ClientId, ConvEvent, ConvKind, ConversationHead, ConversationId, ConversationInfo, ErrorCode,
    EventBody, Member, MemberState, Message, Millis, Reaction, UserId, Watermark,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// Bytes an event or message adds to a reply beyond its text: ids, numbers,
/// field names (an over-estimate, so replies stay under their budget).
const EVENT_OVERHEAD: usize = 200;
/// Bytes one [`Watermark`] takes in a reply (an over-estimate).
pub const WATERMARK_BYTES: usize = 100;
const MESSAGE_OVERHEAD: usize = 300;

pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    appends: tokio::sync::mpsc::Sender<Job>,
    /// Transactions the append task committed (each holds one or more appends).
    append_commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Writes of one request, applied in order: a change's appends, or receipts.
enum Job {
    Append {
        conversation: ConversationId,
        actor: UserId,
        bodies: Vec<EventBody>,
        reply: tokio::sync::oneshot::Sender<Result<Vec<Result<AppendOutcome>>>>,
    },
    Mark {
        marks: Vec<Mark>,
        reply: tokio::sync::oneshot::Sender<Result<Vec<Option<Marked>>>>,
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
}

/// Appends in one transaction at most: bounds a transaction's size and how
/// long its first append waits.
const MAX_GROUP: usize = 256;

fn parse_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| ApiError::internal("corrupt id in database", e))
}

fn parse_kind(s: &str) -> ConvKind {
    if s == "group" {
        ConvKind::Group
    } else {
        ConvKind::Direct
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ApiError::internal("cannot create the database directory", e))?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged message survives power loss, not just a
            // process crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        // Each connection has at most one request in flight, so the queue
        // holds at most one append per connection; when full, senders wait.
        let (appends, jobs) = tokio::sync::mpsc::channel(1024);
        let append_commits = std::sync::Arc::default();
        tokio::spawn(commit_appends(write.clone(), jobs, std::sync::Arc::clone(&append_commits)));
        Ok(SqliteStore { read, write, appends, append_commits })
    }

    /// Queues a job for the write task and waits for its committed result.
    async fn submit<T>(&self, job: impl FnOnce(tokio::sync::oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || ApiError::new(ErrorCode::Internal, "the store is shutting down");
        self.appends.send(job(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// How many transactions appends have taken so far (fewer than appends
    /// when they were grouped).
    pub fn append_commits(&self) -> u64 {
        self.append_commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn members_of(&self, conversation: &str) -> Result<Vec<MemberState>> {
        let rows = sqlx::query(
            "SELECT m.user_id, u.username, m.admin, m.delivered_seq, m.read_seq, u.last_seen
             FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.conversation_id = ? ORDER BY u.username",
        )
        .bind(conversation)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MemberState {
                    user: parse_id(r.get("user_id"))?,
                    username: r.get("username"),
                    admin: r.get::<i64, _>("admin") != 0,
                    delivered_seq: r.get("delivered_seq"),
                    read_seq: r.get("read_seq"),
                    online: false,
                    last_seen: r.get("last_seen"),
                })
            })
            .collect()
    }

    fn info_from_row(&self, r: &sqlx::sqlite::SqliteRow, members: Vec<MemberState>) -> Result<ConversationInfo> {
        Ok(ConversationInfo {
            id: parse_id(r.get("id"))?,
            kind: parse_kind(r.get("kind")),
            name: r.get("name"),
            members,
            last_pos: r.get("last_pos"),
            last_seq: r.get("last_seq"),
            marks: r.get("marks"),
        })
    }
}

/// The write task: each round takes what queued up meanwhile (up to
/// [`MAX_GROUP`] jobs), applies it in one transaction with a savepoint per
/// change that may refuse, commits, and only then answers.
async fn commit_appends(
    write: SqlitePool,
    mut jobs: tokio::sync::mpsc::Receiver<Job>,
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut batch = Vec::with_capacity(MAX_GROUP);
    while jobs.recv_many(&mut batch, MAX_GROUP).await > 0 {
        let n = batch.len();
        let results = write_group(&write, &mut batch).await;
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match results {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    job.answer(Ok(result));
                }
            }
            // Nothing committed: every job in the group fails alike, and
            // its sender retries (a send with the same client id).
            Err(e) => {
                tracing::error!(%e, jobs = n, "a write transaction failed");
                for job in batch.drain(..) {
                    job.answer(Err(e.clone()));
                }
            }
        }
    }
}

async fn write_group(write: &SqlitePool, jobs: &mut [Job]) -> Result<Vec<Done>> {
    let mut tx = write.begin().await?;
    let mut results: Vec<Option<Done>> = jobs.iter().map(|_| None).collect();
    // Jobs that only add messages (every send) are written together, in a
    // constant number of statements for the whole group: each statement is
    // a round trip to SQLite's worker thread, and those dominate the cost.
    let mut runs = Vec::new();
    let mut run_jobs = Vec::new();
    for (i, job) in jobs.iter_mut().enumerate() {
        if let Job::Append { conversation, actor, bodies, .. } = job {
            if bodies.iter().all(|b| matches!(b, EventBody::Message { .. })) {
                let texts = std::mem::take(bodies).into_iter().filter_map(message_text).collect();
                runs.push(MessageRun { conversation: *conversation, actor: *actor, texts });
                run_jobs.push(i);
            }
        }
    }
    if !runs.is_empty() {
        for (i, outcomes) in run_jobs.into_iter().zip(append_messages(&mut tx, runs).await?) {
            results[i] = Some(Done::Append(outcomes));
        }
    }
    for (job, result) in jobs.iter_mut().zip(results.iter_mut()) {
        match job {
            _ if result.is_some() => {}
            Job::Append { conversation, actor, bodies, .. } => {
                let outcomes = append_bodies(&mut tx, *conversation, *actor, std::mem::take(bodies)).await?;
                *result = Some(Done::Append(outcomes));
            }
            Job::Mark { marks, .. } => {
                let mut out = Vec::with_capacity(marks.len());
                for m in marks.iter() {
                    out.push(mark_in(&mut tx, *m).await?);
                }
                *result = Some(Done::Mark(out));
            }
        }
    }
    tx.commit().await?;
    results.into_iter().map(|r| r.ok_or_else(|| ApiError::internal("write", "a job without its result"))).collect()
}

/// A new message's client id, text and attachments.
type NewMessage = (ClientId, String, Vec<Attachment>);

fn message_text(body: EventBody) -> Option<NewMessage> {
    match body {
        EventBody::Message { client_id, text, attachments, .. } => Some((client_id, text, attachments)),
        _ => None,
    }
}

/// New messages from one sender to one conversation, in order.
struct MessageRun {
    conversation: ConversationId,
    actor: UserId,
    texts: Vec<NewMessage>,
}

/// One request's appends inside the group's transaction.
async fn append_bodies(
    tx: &mut Transaction<'_, Sqlite>,
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
                texts.extend(bodies.next().and_then(message_text));
            }
            let run = MessageRun { conversation, actor, texts };
            outcomes.extend(append_messages(tx, vec![run]).await?.into_iter().flatten());
            continue;
        }
        // Any other change may refuse after writing: a savepoint (a
        // nested transaction) rolls it back alone.
        let mut one = sqlx::Acquire::begin(&mut *tx).await?;
        match append_in(&mut one, conversation, actor, body).await {
            Ok(outcome) => {
                one.commit().await?;
                outcomes.push(Ok(outcome));
            }
            Err(e) => {
                one.rollback().await?;
                outcomes.push(Err(e));
            }
        }
    }
    Ok(outcomes)
}

/// Rows per multi-row statement: well under SQLite's bound-parameter limit.
const ROWS_PER_STATEMENT: usize = 100;

/// Runs of new messages, in order, in a constant number of statements
/// however many runs and messages there are: the repeats among them found
/// in one query, positions and sequence numbers taken in one update,
/// events and message rows inserted a hundred at a time, the recipients
/// read in one query. Each message gets its own outcome (per run, in
/// order); an `Err` outcome is the message's refusal, an `Err` result the
/// database's failure.
async fn append_messages(
    tx: &mut Transaction<'_, Sqlite>,
    runs: Vec<MessageRun>,
) -> Result<Vec<Vec<Result<AppendOutcome>>>> {
    type Key = (UserId, ClientId);
    // Client ids their senders already used: (conversation, seq, pos, ts).
    let mut known: HashMap<Key, (ConversationId, i64, i64, Millis)> = HashMap::new();
    let keys: Vec<Key> = runs.iter().flat_map(|r| r.texts.iter().map(|(id, _, _)| (r.actor, *id))).collect();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        // An OR of pairs: SQLite searches the (sender, client_id) index for
        // each (a row-value IN would scan it).
        let pairs = vec!["(sender = ? AND client_id = ?)"; chunk.len()].join(" OR ");
        let sql = format!("SELECT sender, client_id, conversation_id, seq, pos, ts FROM messages WHERE {pairs}");
        let mut q = sqlx::query(&sql);
        for (sender, client_id) in chunk {
            q = q.bind(sender.to_string()).bind(client_id.to_string());
        }
        for r in q.fetch_all(&mut **tx).await? {
            let row = (parse_id(r.get("conversation_id"))?, r.get("seq"), r.get("pos"), r.get("ts"));
            known.insert((parse_id(r.get("sender"))?, parse_id(r.get("client_id"))?), row);
        }
    }
    // How many new messages each conversation takes (a repeat, even of one
    // earlier in this group, takes none).
    let mut counts: HashMap<ConversationId, i64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    // Per message, in order: whether it takes a position (what is counted
    // here is exactly what is written below, or positions would collide).
    let mut fresh = Vec::with_capacity(keys.len());
    for r in &runs {
        for (id, _, _) in &r.texts {
            let new = !known.contains_key(&(r.actor, *id)) && seen.insert((r.actor, *id));
            if new {
                *counts.entry(r.conversation).or_default() += 1;
            }
            fresh.push(new);
        }
    }
    // The first new position and sequence number of each conversation that
    // exists.
    let mut next: HashMap<ConversationId, (i64, i64)> = HashMap::new();
    let counts: Vec<(ConversationId, i64)> = counts.into_iter().collect();
    for chunk in counts.chunks(ROWS_PER_STATEMENT) {
        let cases = "WHEN ? THEN ? ".repeat(chunk.len());
        let ids = vec!["?"; chunk.len()].join(", ");
        let sql = format!(
            "UPDATE conversations SET last_pos = last_pos + (CASE id {cases}END), last_seq = last_seq + (CASE id {cases}END)
             WHERE id IN ({ids}) RETURNING id, last_pos, last_seq"
        );
        let mut q = sqlx::query(&sql);
        for _ in 0..2 {
            for (c, n) in chunk {
                q = q.bind(c.to_string()).bind(n);
            }
        }
        for (c, _) in chunk {
            q = q.bind(c.to_string());
        }
        for r in q.fetch_all(&mut **tx).await? {
            let c = parse_id(r.get("id"))?;
            let n = chunk.iter().find(|(id, _)| *id == c).map_or(0, |(_, n)| *n);
            next.insert(c, (r.get::<i64, _>("last_pos") - n + 1, r.get::<i64, _>("last_seq") - n + 1));
        }
    }
    let ts = now_ms();
    let mut events = Vec::with_capacity(keys.len());
    let mut outcomes: Vec<Vec<Option<Result<AppendOutcome>>>> = Vec::with_capacity(runs.len());
    let mut fresh = fresh.into_iter();
    for MessageRun { conversation, actor, texts } in runs {
        let mut run = Vec::with_capacity(texts.len());
        for (client_id, text, attachments) in texts {
            let new = fresh.next().unwrap_or(false);
            // Known from before, or a repeat of one earlier in this group.
            if let Some(&(c, seq, pos, ts)) = known.get(&(actor, client_id)) {
                run.push(Some(if c == conversation {
                    Ok(AppendOutcome::Duplicate { conversation, seq, pos, ts })
                } else {
                    Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "this client_id was already used for a message in another conversation",
                    ))
                }));
                continue;
            }
            if !new {
                // A repeat of one refused earlier in this group (sent to a
                // conversation that does not exist): it was counted there.
                run.push(Some(Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "this client_id was already used for a message in another conversation",
                ))));
                continue;
            }
            let Some((pos, seq)) = next.get_mut(&conversation) else {
                run.push(Some(Err(ApiError::from(ErrorCode::NotFound))));
                continue;
            };
            known.insert((actor, client_id), (conversation, *seq, *pos, ts));
            let body = EventBody::Message { seq: *seq, client_id, text, attachments };
            events.push(ConvEvent { conversation, pos: *pos, ts, actor, body });
            run.push(None);
            *pos += 1;
            *seq += 1;
        }
        outcomes.push(run);
    }
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let rows = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO events (conversation_id, pos, ts, actor, body) VALUES {rows}");
        let mut q = sqlx::query(&sql);
        for e in chunk {
            let json = serde_json::to_string(&e.body).map_err(|e| ApiError::internal("serialize event", e))?;
            q = q.bind(e.conversation.to_string()).bind(e.pos).bind(e.ts).bind(e.actor.to_string()).bind(json);
        }
        q.execute(&mut **tx).await?;
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?, NULL, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO messages (conversation_id, seq, pos, sender, client_id, text, ts, call, attachments) VALUES {rows}"
        );
        let mut q = sqlx::query(&sql);
        let mut links = Vec::new();
        for e in chunk {
            let EventBody::Message { seq, client_id, text, attachments } = &e.body else {
                return Err(ApiError::internal("append", "not a message"));
            };
            for a in attachments {
                links.push((a.hash.as_str(), e.conversation, *seq));
            }
            q = q
                .bind(e.conversation.to_string())
                .bind(seq)
                .bind(e.pos)
                .bind(e.actor.to_string())
                .bind(client_id.to_string())
                .bind(text)
                .bind(e.ts)
                .bind(attachments_json(attachments)?);
        }
        q.execute(&mut **tx).await?;
        link_attachments(tx, &links).await?;
    }
    // Everyone in each conversation that got a message, in one query.
    let mut recipients: HashMap<ConversationId, Vec<UserId>> = HashMap::new();
    let written: Vec<ConversationId> = {
        let mut w: Vec<ConversationId> = events.iter().map(|e| e.conversation).collect();
        w.sort_unstable();
        w.dedup();
        w
    };
    for chunk in written.chunks(ROWS_PER_STATEMENT) {
        let ids = vec!["?"; chunk.len()].join(", ");
        let sql = format!("SELECT conversation_id, user_id FROM members WHERE conversation_id IN ({ids})");
        let mut q = sqlx::query(&sql);
        for c in chunk {
            q = q.bind(c.to_string());
        }
        for r in q.fetch_all(&mut **tx).await? {
            recipients.entry(parse_id(r.get("conversation_id"))?).or_default().push(parse_id(r.get("user_id"))?);
        }
    }
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

/// Moves one member's watermarks forward and bumps the conversation's
/// watermark version; `None` when nothing moves.
async fn mark_in(tx: &mut Transaction<'_, Sqlite>, m: Mark) -> Result<Option<Marked>> {
    let conv = m.conversation.to_string();
    let user = m.user.to_string();
    let row = sqlx::query(
        "SELECT m.delivered_seq, m.read_seq, c.last_seq FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.conversation_id = ? AND m.user_id = ?",
    )
    .bind(&conv)
    .bind(&user)
    .fetch_optional(&mut **tx)
    .await?;
    // Not (or no longer) a member: nothing to acknowledge.
    let Some(row) = row else { return Ok(None) };
    let current = (row.get("delivered_seq"), row.get("read_seq"));
    let Some((delivered, read)) = rules::advance_receipt(current, (m.delivered, m.read), row.get("last_seq")) else {
        return Ok(None);
    };
    sqlx::query("UPDATE members SET delivered_seq = ?, read_seq = ? WHERE conversation_id = ? AND user_id = ?")
        .bind(delivered)
        .bind(read)
        .bind(&conv)
        .bind(&user)
        .execute(&mut **tx)
        .await?;
    let version: i64 = sqlx::query("UPDATE conversations SET marks = marks + 1 WHERE id = ? RETURNING marks")
        .bind(&conv)
        .fetch_one(&mut **tx)
        .await?
        .get("marks");
    let mark = Watermark { user: m.user, delivered_seq: delivered, read_seq: read };
    Ok(Some(Marked { conversation: m.conversation, mark, version }))
}

async fn append_in(
    tx: &mut Transaction<'_, Sqlite>,
    conversation: ConversationId,
    actor: UserId,
    mut body: EventBody,
) -> Result<AppendOutcome> {
    let conv = conversation.to_string();
    if let EventBody::Call { call, video, outcome, .. } = &body {
        // The call's entry, a message of the caller's keyed by the call
        // id: each call is logged once.
        let record = confab_protocol::CallRecord { call: *call, video: *video, outcome: *outcome };
        let json = serde_json::to_string(&record).map_err(|e| ApiError::internal("serialize call", e))?;
        let event = push_event(tx, conversation, actor, body.clone(), true, now_ms()).await?;
        let EventBody::Call { seq, .. } = event.body else { unreachable!("push_event keeps the kind") };
        insert_message(tx, &event, seq, *call, "", Some(&json)).await?;
        let recipients = member_ids_tx(tx, &conv).await?;
        return Ok(AppendOutcome::Appended { event, recipients });
    }
    let ts = now_ms();
    if !apply_change(tx, conversation, actor, ts, &mut body).await? {
        return Ok(AppendOutcome::Unchanged);
    }
    let mut recipients = member_ids_tx(tx, &conv).await?;
    if let EventBody::MemberRemoved { user } = &body {
        recipients.push(*user);
    }
    let event = push_event(tx, conversation, actor, body, false, ts).await?;
    Ok(AppendOutcome::Appended { event, recipients })
}

async fn push_event(
    tx: &mut Transaction<'_, Sqlite>,
    conversation: ConversationId,
    actor: UserId,
    body: EventBody,
    bump_seq: bool,
    ts: Millis,
) -> Result<ConvEvent> {
    let conv = conversation.to_string();
    let row = sqlx::query(
        "UPDATE conversations SET last_pos = last_pos + 1, last_seq = last_seq + ?
         WHERE id = ? RETURNING last_pos, last_seq",
    )
    .bind(i64::from(bump_seq))
    .bind(&conv)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
    let pos: i64 = row.get("last_pos");
    let seq: i64 = row.get("last_seq");
    let body = match body {
        EventBody::Message { client_id, text, attachments, .. } => {
            EventBody::Message { seq, client_id, text, attachments }
        }
        EventBody::Call { call, video, outcome, .. } => EventBody::Call { seq, call, video, outcome },
        other => other,
    };
    let json = serde_json::to_string(&body).map_err(|e| ApiError::internal("serialize event", e))?;
    sqlx::query("INSERT INTO events (conversation_id, pos, ts, actor, body) VALUES (?, ?, ?, ?, ?)")
        .bind(&conv)
        .bind(pos)
        .bind(ts)
        .bind(actor.to_string())
        .bind(json)
        .execute(&mut **tx)
        .await?;
    Ok(ConvEvent { conversation, pos, ts, actor, body })
}

async fn member_ids_tx(tx: &mut Transaction<'_, Sqlite>, conversation: &str) -> Result<Vec<UserId>> {
    let rows = sqlx::query("SELECT user_id FROM members WHERE conversation_id = ?")
        .bind(conversation)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter().map(|r| parse_id(r.get("user_id"))).collect()
}

async fn insert_member(tx: &mut Transaction<'_, Sqlite>, conversation: &str, m: &Member) -> Result<()> {
    sqlx::query("INSERT INTO members (conversation_id, user_id, admin) VALUES (?, ?, ?)")
        .bind(conversation)
        .bind(m.user.to_string())
        .bind(m.admin)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The row of a message just appended as `event` (its sender the actor);
/// `call` is a call entry's record (JSON).
async fn insert_message(
    tx: &mut Transaction<'_, Sqlite>,
    event: &ConvEvent,
    seq: i64,
    client_id: ClientId,
    text: &str,
    call: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, pos, sender, client_id, text, ts, call) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event.conversation.to_string())
    .bind(seq)
    .bind(event.pos)
    .bind(event.actor.to_string())
    .bind(client_id.to_string())
    .bind(text)
    .bind(event.ts)
    .bind(call)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The current state of one message, inside `tx`.
async fn message_tx(
    tx: &mut Transaction<'_, Sqlite>,
    conversation: ConversationId,
    seq: i64,
) -> Result<Option<Message>> {
    let conv = conversation.to_string();
    let Some(r) = sqlx::query(
        "SELECT seq, pos, sender, client_id, text, ts, edited_at, deleted, pinned, call, attachments FROM messages
         WHERE conversation_id = ? AND seq = ?",
    )
    .bind(&conv)
    .bind(seq)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT emoji, user_id FROM reactions WHERE conversation_id = ? AND seq = ? ORDER BY emoji, user_id",
    )
    .bind(&conv)
    .bind(seq)
    .fetch_all(&mut **tx)
    .await?;
    let mut reactions = Vec::new();
    for row in &rows {
        Reaction::add_to(&mut reactions, row.get("emoji"), parse_id(row.get("user_id"))?);
    }
    Ok(Some(message_from_row(conversation, &r, reactions)?))
}

fn message_from_row(
    conversation: ConversationId,
    r: &sqlx::sqlite::SqliteRow,
    reactions: Vec<Reaction>,
) -> Result<Message> {
    Ok(Message {
        conversation,
        seq: r.get("seq"),
        pos: r.get("pos"),
        client_id: parse_id(r.get("client_id"))?,
        sender: parse_id(r.get("sender"))?,
        text: r.get("text"),
        attachments: match r.get::<Option<&str>, _>("attachments") {
            Some(json) => serde_json::from_str(json).map_err(|e| ApiError::internal("stored attachments", e))?,
            None => Vec::new(),
        },
        ts: r.get("ts"),
        edited_at: r.get("edited_at"),
        deleted: r.get::<i64, _>("deleted") != 0,
        pinned: r.get::<i64, _>("pinned") != 0,
        reactions,
        call: match r.get::<Option<&str>, _>("call") {
            Some(json) => Some(serde_json::from_str(json).map_err(|e| ApiError::internal("stored call", e))?),
            None => None,
        },
    })
}

/// Attachments as the `messages.attachments` column keeps them.
fn attachments_json(attachments: &[Attachment]) -> Result<Option<String>> {
    if attachments.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(attachments).map(Some).map_err(|e| ApiError::internal("serialize attachments", e))
}

/// Records which messages carry which blobs: (hash, conversation, seq).
async fn link_attachments(tx: &mut Transaction<'_, Sqlite>, links: &[(&str, ConversationId, i64)]) -> Result<()> {
    for chunk in links.chunks(ROWS_PER_STATEMENT) {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT OR IGNORE INTO attachments (hash, conversation_id, seq) VALUES {rows}");
        let mut q = sqlx::query(&sql);
        for (hash, conversation, seq) in chunk {
            q = q.bind(*hash).bind(conversation.to_string()).bind(seq);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes a message's new state (decided by [`rules::apply_to_message`]).
async fn save_message_tx(tx: &mut Transaction<'_, Sqlite>, m: &Message) -> Result<()> {
    let conv = m.conversation.to_string();
    sqlx::query(
        "UPDATE messages SET text = ?, edited_at = ?, deleted = ?, pinned = ?, attachments = ?
         WHERE conversation_id = ? AND seq = ?",
    )
    .bind(&m.text)
    .bind(m.edited_at)
    .bind(m.deleted)
    .bind(m.pinned)
    .bind(attachments_json(&m.attachments)?)
    .bind(&conv)
    .bind(m.seq)
    .execute(&mut **tx)
    .await?;
    if m.attachments.is_empty() {
        // A deleted message no longer holds its blobs; the media sweep
        // removes those nothing else refers to.
        sqlx::query("DELETE FROM attachments WHERE conversation_id = ? AND seq = ?")
            .bind(&conv)
            .bind(m.seq)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("DELETE FROM reactions WHERE conversation_id = ? AND seq = ?")
        .bind(&conv)
        .bind(m.seq)
        .execute(&mut **tx)
        .await?;
    for r in &m.reactions {
        for u in &r.users {
            sqlx::query("INSERT OR IGNORE INTO reactions (conversation_id, seq, user_id, emoji) VALUES (?, ?, ?, ?)")
                .bind(&conv)
                .bind(m.seq)
                .bind(u.to_string())
                .bind(&r.emoji)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// Applies the state change of `body` to the current-state tables. Returns
/// `false` when it changes nothing (then no event is appended).
async fn apply_change(
    tx: &mut Transaction<'_, Sqlite>,
    conversation: ConversationId,
    actor: UserId,
    ts: Millis,
    body: &mut EventBody,
) -> Result<bool> {
    let conv = conversation.to_string();
    if let Some(seq) = rules::target_seq(body) {
        let Some(mut message) = message_tx(tx, conversation, seq).await? else {
            return Err(ApiError::new(ErrorCode::NotFound, format!("no message {seq} in this conversation")));
        };
        let changed = rules::apply_to_message(&mut message, actor, ts, body).map_err(|code| match code {
            ErrorCode::NotFound => ApiError::new(code, "the message was deleted"),
            code => ApiError::from(code),
        })?;
        if changed {
            save_message_tx(tx, &message).await?;
        }
        return Ok(changed);
    }
    let conv = conv.as_str();
    let changed = match body {
        EventBody::MemberAdded { member } => {
            let exists = sqlx::query("SELECT 1 FROM members WHERE conversation_id = ? AND user_id = ?")
                .bind(conv)
                .bind(member.user.to_string())
                .fetch_optional(&mut **tx)
                .await?
                .is_some();
            if !exists {
                insert_member(tx, conv, member).await?;
            }
            !exists
        }
        EventBody::MemberRemoved { user } => {
            sqlx::query("DELETE FROM members WHERE conversation_id = ? AND user_id = ?")
                .bind(conv)
                .bind(user.to_string())
                .execute(&mut **tx)
                .await?
                .rows_affected()
                > 0
        }
        EventBody::Renamed { name } => {
            sqlx::query("UPDATE conversations SET name = ? WHERE id = ? AND (name IS NULL OR name != ?)")
                .bind(&*name)
                .bind(conv)
                .bind(&*name)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                > 0
        }
        EventBody::AdminChanged { user, admin } => {
            sqlx::query("UPDATE members SET admin = ? WHERE conversation_id = ? AND user_id = ? AND admin != ?")
                .bind(*admin)
                .bind(conv)
                .bind(user.to_string())
                .bind(*admin)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                > 0
        }
        EventBody::Receipt { .. } => {
            return Err(ApiError::internal("apply_change", "receipts are watermarks (Store::mark), not events"))
        }
        EventBody::Created { .. } | EventBody::Message { .. } | EventBody::Call { .. } => {
            return Err(ApiError::internal("apply_change", "created/message are appended elsewhere"))
        }
        EventBody::Edited { .. }
        | EventBody::Deleted { .. }
        | EventBody::Reaction { .. }
        | EventBody::Pinned { .. } => {
            return Err(ApiError::internal("apply_change", "message events are handled above"))
        }
    };
    Ok(changed)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserId> {
        let id = Uuid::now_v7();
        let res = sqlx::query("INSERT INTO users (id, username, password_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(username)
            .bind(password_hash)
            .bind(now_ms())
            .execute(&self.write)
            .await;
        match res {
            Ok(_) => Ok(id),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(ErrorCode::UsernameTaken.into()),
            Err(e) => Err(e.into()),
        }
    }

    async fn credentials(&self, username: &str) -> Result<Option<(UserId, String)>> {
        let row = sqlx::query("SELECT id, password_hash FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok((parse_id(r.get("id"))?, r.get("password_hash")))).transpose()
    }

    async fn create_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        device: Option<&str>,
    ) -> Result<(SessionId, Vec<SessionId>)> {
        let id = Uuid::now_v7();
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, device, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(token_hash)
        .bind(user.to_string())
        .bind(device)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let evicted = sqlx::query(
            "DELETE FROM sessions WHERE user_id = ?1 AND id NOT IN
               (SELECT id FROM sessions WHERE user_id = ?1 ORDER BY last_seen DESC, id DESC LIMIT ?2)
             RETURNING id",
        )
        .bind(user.to_string())
        .bind(super::MAX_SESSIONS_PER_USER)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let evicted = evicted.iter().map(|r| parse_id(r.get("id"))).collect::<Result<Vec<_>>>()?;
        Ok((id, evicted))
    }

    async fn session(&self, token_hash: &[u8]) -> Result<Option<Session>> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.username, s.last_seen FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(Session {
                id: parse_id(r.get("id"))?,
                user: parse_id(r.get("user_id"))?,
                username: r.get("username"),
                last_seen: r.get("last_seen"),
            })
        })
        .transpose()
    }

    async fn delete_session(&self, token_hash: &[u8]) -> Result<Option<SessionId>> {
        let row = sqlx::query("DELETE FROM sessions WHERE token_hash = ? RETURNING id")
            .bind(token_hash)
            .fetch_optional(&self.write)
            .await?;
        row.map(|r| parse_id(r.get("id"))).transpose()
    }

    async fn touch_session(&self, session: SessionId, at: Millis) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen = MAX(last_seen, ?) WHERE id = ?")
            .bind(at)
            .bind(session.to_string())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<(SessionId, Option<String>, Millis, Millis)>> {
        let rows = sqlx::query(
            "SELECT id, device, created_at, last_seen FROM sessions WHERE user_id = ? ORDER BY created_at, id",
        )
        .bind(user.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((parse_id(r.get("id"))?, r.get("device"), r.get("created_at"), r.get("last_seen"))))
            .collect()
    }

    async fn revoke_sessions(&self, user: UserId, which: Revoke) -> Result<Vec<SessionId>> {
        let rows = match which {
            Revoke::One(id) => {
                sqlx::query("DELETE FROM sessions WHERE user_id = ? AND id = ? RETURNING id")
                    .bind(user.to_string())
                    .bind(id.to_string())
                    .fetch_all(&self.write)
                    .await?
            }
            Revoke::AllBut(keep) => {
                sqlx::query("DELETE FROM sessions WHERE user_id = ? AND id != ? RETURNING id")
                    .bind(user.to_string())
                    .bind(keep.to_string())
                    .fetch_all(&self.write)
                    .await?
            }
        };
        rows.iter().map(|r| parse_id(r.get("id"))).collect()
    }

    async fn expire_sessions(&self, before: Millis) -> Result<Vec<SessionId>> {
        let rows = sqlx::query("DELETE FROM sessions WHERE last_seen < ? RETURNING id")
            .bind(before)
            .fetch_all(&self.write)
            .await?;
        rows.iter().map(|r| parse_id(r.get("id"))).collect()
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserId>> {
        let row =
            sqlx::query("SELECT id FROM users WHERE username = ?").bind(username).fetch_optional(&self.read).await?;
        row.map(|r| parse_id(r.get("id"))).transpose()
    }

    async fn set_last_seen(&self, user: UserId, ts: Millis) -> Result<()> {
        sqlx::query("UPDATE users SET last_seen = ? WHERE id = ?")
            .bind(ts)
            .bind(user.to_string())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>> {
        let rows = sqlx::query(
            "SELECT DISTINCT o.user_id FROM members m JOIN members o ON o.conversation_id = m.conversation_id
             WHERE m.user_id = ?1 AND o.user_id != ?1",
        )
        .bind(user.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| parse_id(r.get("user_id"))).collect()
    }

    async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?").bind(key).fetch_optional(&self.write).await?;
        Ok(row.map(|r| r.get("value")))
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn log_total(&self) -> Result<i64> {
        let row =
            sqlx::query("SELECT COALESCE(SUM(last_pos), 0) AS n FROM conversations").fetch_one(&self.write).await?;
        Ok(row.get("n"))
    }

    async fn membership(&self, conversation: ConversationId, user: UserId) -> Result<Option<Membership>> {
        let row = sqlx::query(
            "SELECT c.kind, m.admin FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = ? AND m.user_id = ?",
        )
        .bind(conversation.to_string())
        .bind(user.to_string())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| Membership { kind: parse_kind(r.get("kind")), admin: r.get::<i64, _>("admin") != 0 }))
    }

    async fn member_ids(&self, conversation: ConversationId) -> Result<Vec<UserId>> {
        let rows = sqlx::query("SELECT user_id FROM members WHERE conversation_id = ?")
            .bind(conversation.to_string())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| parse_id(r.get("user_id"))).collect()
    }

    async fn heads(&self, user: UserId) -> Result<Vec<ConversationHead>> {
        let rows = sqlx::query(
            "SELECT c.id, c.last_pos, c.last_seq, c.marks, m.delivered_seq FROM conversations c
             JOIN members m ON m.conversation_id = c.id WHERE m.user_id = ? ORDER BY c.id",
        )
        .bind(user.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ConversationHead {
                    id: parse_id(r.get("id"))?,
                    last_pos: r.get("last_pos"),
                    last_seq: r.get("last_seq"),
                    delivered_seq: r.get("delivered_seq"),
                    marks: r.get("marks"),
                })
            })
            .collect()
    }

    async fn conversation(&self, conversation: ConversationId) -> Result<Option<ConversationInfo>> {
        let id = conversation.to_string();
        let row = sqlx::query("SELECT id, kind, name, last_pos, last_seq, marks FROM conversations WHERE id = ?")
            .bind(&id)
            .fetch_optional(&self.read)
            .await?;
        match row {
            Some(r) => {
                let members = self.members_of(&id).await?;
                Ok(Some(self.info_from_row(&r, members)?))
            }
            None => Ok(None),
        }
    }

    async fn open_direct(
        &self,
        new_id: ConversationId,
        a: Member,
        b: Member,
    ) -> Result<(ConversationId, Option<AppendOutcome>)> {
        let key = if a.user < b.user { format!("{}:{}", a.user, b.user) } else { format!("{}:{}", b.user, a.user) };
        let mut tx = self.write.begin().await?;
        let existing = sqlx::query("SELECT id FROM conversations WHERE direct_key = ?")
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = existing {
            return Ok((parse_id(row.get("id"))?, None));
        }
        let id = new_id;
        let conv = id.to_string();
        sqlx::query("INSERT INTO conversations (id, kind, direct_key, created_at) VALUES (?, 'direct', ?, ?)")
            .bind(&conv)
            .bind(&key)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        let members = vec![Member { admin: false, ..a.clone() }, Member { admin: false, ..b }];
        for m in &members {
            insert_member(&mut tx, &conv, m).await?;
        }
        let recipients = members.iter().map(|m| m.user).collect();
        let body = EventBody::Created { kind: ConvKind::Direct, name: None, members };
        let event = push_event(&mut tx, id, a.user, body, false, now_ms()).await?;
        tx.commit().await?;
        Ok((id, Some(AppendOutcome::Appended { event, recipients })))
    }

    async fn create_group(
        &self,
        id: ConversationId,
        name: &str,
        members: Vec<Member>,
        creator: UserId,
    ) -> Result<AppendOutcome> {
        let conv = id.to_string();
        let mut tx = self.write.begin().await?;
        sqlx::query("INSERT INTO conversations (id, kind, name, created_at) VALUES (?, 'group', ?, ?)")
            .bind(&conv)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        for m in &members {
            insert_member(&mut tx, &conv, m).await?;
        }
        let recipients = members.iter().map(|m| m.user).collect();
        let body = EventBody::Created { kind: ConvKind::Group, name: Some(name.to_owned()), members };
        let event = push_event(&mut tx, id, creator, body, false, now_ms()).await?;
        tx.commit().await?;
        Ok(AppendOutcome::Appended { event, recipients })
    }

    async fn append(&self, conversation: ConversationId, actor: UserId, body: EventBody) -> Result<AppendOutcome> {
        self.append_all(conversation, actor, vec![body])
            .await?
            .pop()
            .unwrap_or_else(|| Err(ApiError::new(ErrorCode::Internal, "no append result")))
    }

    async fn append_all(
        &self,
        conversation: ConversationId,
        actor: UserId,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<Result<AppendOutcome>>> {
        self.submit(|reply| Job::Append { conversation, actor, bodies, reply }).await
    }

    async fn mark(&self, marks: Vec<Mark>) -> Result<Vec<Option<Marked>>> {
        if marks.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(|reply| Job::Mark { marks, reply }).await
    }

    async fn watermarks(
        &self,
        conversation: ConversationId,
        after: Option<UserId>,
        budget: usize,
    ) -> Result<MarksPage> {
        let conv = conversation.to_string();
        let mut tx = self.read.begin().await?;
        let version: i64 = sqlx::query("SELECT marks FROM conversations WHERE id = ?")
            .bind(&conv)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("marks"))
            .ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
        let limit = (budget / WATERMARK_BYTES).max(1);
        // Ids are stored as hyphenated lowercase text, whose order is the
        // ids' order.
        let rows = sqlx::query(
            "SELECT user_id, delivered_seq, read_seq FROM members WHERE conversation_id = ? AND user_id > ?
             ORDER BY user_id LIMIT ?",
        )
        .bind(&conv)
        .bind(after.map(|u| u.to_string()).unwrap_or_default())
        .bind((limit + 1) as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let has_more = rows.len() > limit;
        let marks = rows
            .iter()
            .take(limit)
            .map(|r| {
                Ok(Watermark {
                    user: parse_id(r.get("user_id"))?,
                    delivered_seq: r.get("delivered_seq"),
                    read_seq: r.get("read_seq"),
                })
            })
            .collect::<Result<_>>()?;
        Ok(MarksPage { version, marks, has_more })
    }

    async fn events_after(
        &self,
        conversation: ConversationId,
        after: i64,
        limit: u32,
        budget: usize,
    ) -> Result<LogPage> {
        use futures_util::TryStreamExt;
        let conv = conversation.to_string();
        // One read transaction, so the page and last_pos agree.
        let mut tx = self.read.begin().await?;
        let last_pos: i64 = sqlx::query("SELECT last_pos FROM conversations WHERE id = ?")
            .bind(&conv)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("last_pos"))
            .ok_or_else(|| ApiError::from(ErrorCode::NotFound))?;
        let mut events = Vec::new();
        let mut bytes = 0;
        {
            let mut rows = sqlx::query(
                "SELECT pos, ts, actor, body FROM events WHERE conversation_id = ? AND pos > ? ORDER BY pos LIMIT ?",
            )
            .bind(&conv)
            .bind(after)
            .bind(i64::from(limit))
            .fetch(&mut *tx);
            // Stop reading once the budget is spent: a page of large
            // messages must not be read (or sent) whole.
            while let Some(r) = rows.try_next().await? {
                let text: &str = r.get("body");
                bytes += text.len() + EVENT_OVERHEAD;
                let body: EventBody =
                    serde_json::from_str(text).map_err(|e| ApiError::internal("corrupt event in database", e))?;
                events.push(ConvEvent {
                    conversation,
                    pos: r.get("pos"),
                    ts: r.get("ts"),
                    actor: parse_id(r.get("actor"))?,
                    body,
                });
                if bytes >= budget {
                    break;
                }
            }
        }
        tx.commit().await?;
        Ok(LogPage { events, last_pos, bytes })
    }

    async fn history(
        &self,
        conversation: ConversationId,
        before: Option<i64>,
        limit: u32,
        budget: usize,
    ) -> Result<Vec<Message>> {
        use futures_util::TryStreamExt;
        let conv = conversation.to_string();
        let mut tx = self.read.begin().await?;
        let mut rows = Vec::new();
        {
            let mut stream = sqlx::query(
                "SELECT seq, pos, sender, client_id, text, ts, edited_at, deleted, pinned, call, attachments FROM messages
                 WHERE conversation_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            )
            .bind(&conv)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch(&mut *tx);
            let mut bytes = 0;
            while let Some(r) = stream.try_next().await? {
                let text: &str = r.get("text");
                // Control characters are sent as six-byte escapes.
                bytes += text.len() + 5 * text.chars().filter(|c| c.is_control()).count() + MESSAGE_OVERHEAD;
                bytes += r.get::<Option<&str>, _>("call").map_or(0, |c| c.len() + 10);
                bytes += r.get::<Option<&str>, _>("attachments").map_or(0, |a| a.len() + 20);
                rows.push(r);
                if bytes >= budget {
                    break;
                }
            }
        }
        let (Some(newest), Some(oldest)) = (rows.first(), rows.last()) else { return Ok(Vec::new()) };
        let (hi, lo): (i64, i64) = (newest.get("seq"), oldest.get("seq"));
        let reaction_rows = sqlx::query(
            "SELECT seq, emoji, user_id FROM reactions WHERE conversation_id = ? AND seq BETWEEN ? AND ?
             ORDER BY seq, emoji, user_id",
        )
        .bind(&conv)
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut reactions: HashMap<i64, Vec<Reaction>> = HashMap::new();
        for r in &reaction_rows {
            let list = reactions.entry(r.get("seq")).or_default();
            Reaction::add_to(list, r.get("emoji"), parse_id(r.get("user_id"))?);
        }
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get("seq");
                message_from_row(conversation, r, reactions.remove(&seq).unwrap_or_default())
            })
            .collect()
    }

    async fn sent_message(
        &self,
        sender: UserId,
        client_id: confab_protocol::ClientId,
    ) -> Result<Option<AppendOutcome>> {
        let row = sqlx::query("SELECT conversation_id, seq, pos, ts FROM messages WHERE sender = ? AND client_id = ?")
            .bind(sender.to_string())
            .bind(client_id.to_string())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| {
            Ok(AppendOutcome::Duplicate {
                conversation: parse_id(r.get("conversation_id"))?,
                seq: r.get("seq"),
                pos: r.get("pos"),
                ts: r.get("ts"),
            })
        })
        .transpose()
    }

    async fn message(&self, conversation: ConversationId, seq: i64) -> Result<Option<MessageMeta>> {
        let row = sqlx::query("SELECT sender, deleted FROM messages WHERE conversation_id = ? AND seq = ?")
            .bind(conversation.to_string())
            .bind(seq)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(MessageMeta { sender: parse_id(r.get("sender"))?, deleted: r.get::<i64, _>("deleted") != 0 }))
            .transpose()
    }
}
