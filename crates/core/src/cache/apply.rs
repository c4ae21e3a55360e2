//! Server events and snapshots, applied to the cache.
//!
//! [`Cache::apply_event`] checks the event's position against the
//! conversation's `applied_pos` in the same transaction that applies it: an
//! event is applied exactly once, in order, or reported as a duplicate or a
//! gap. Applying is total: an event whose change the cache cannot make (a
//! constraint it would break, a message it refuses by the shared rules) is
//! skipped — its position still counts — and reported, so one bad event can
//! never wedge a conversation.
//!
//! How an event changes a message is [`confab_protocol::rules`], the same
//! definition the server commits with.

use super::messages::{load_message, save_reactions, store_message};
use super::outbox::requeue;
use super::session::upsert_user;
use super::views::write_presence;
use super::{id, kind_str, Cache, LocalId};
use crate::{Error, Result};
use confab_protocol::{
    rules, ConvEvent, ConversationHead, ConversationId, ConversationInfo, EventBody, Member, Message, UserId, Watermark,
};
use sqlx::{Acquire, Row, Sqlite, Transaction};

/// Which watermark version applying some marks leaves the cache at.
#[derive(Clone, Copy, Debug)]
pub enum MarksVersion {
    /// A live frame: the state at `version` for a cache at `since` or later.
    Frame { since: i64, version: i64 },
    /// Every member's marks, read at this version.
    Fetched(i64),
    /// Marks only (an own receipt the server confirmed).
    Unchanged,
}

/// The result of offering one event to the cache.
#[derive(Debug)]
pub enum Applied {
    /// Already applied (pos <= applied_pos): ignore.
    Duplicate,
    /// Events are missing before this one: fetch from `after`.
    Gap { after: i64 },
    /// Applied; what to report.
    Done(Vec<Effect>),
    /// Its position is consumed but its change could not be made.
    Skipped { reason: String },
}

/// A consequence of an applied event, turned into [`crate::ClientEvent`]s by
/// the caller (which can read the message views).
#[derive(Debug, Clone)]
pub enum Effect {
    NewMessage {
        id: LocalId,
        from_other: bool,
    },
    MessageChanged {
        id: LocalId,
    },
    Receipt {
        user: UserId,
        delivered_seq: i64,
        read_seq: i64,
    },
    ConversationChanged,
    /// We were removed from the conversation.
    Left,
    /// An own message the server no longer has was queued again.
    Requeued {
        id: LocalId,
    },
}

impl Cache {
    pub async fn applied_pos(&self, conversation: ConversationId) -> Result<Option<(i64, bool)>> {
        let row = sqlx::query("SELECT applied_pos, left FROM conversations WHERE id = ?")
            .bind(conversation.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get("applied_pos"), r.get::<i64, _>("left") != 0)))
    }

    pub async fn known_conversations(&self) -> Result<Vec<(ConversationId, i64, bool)>> {
        let rows = sqlx::query("SELECT id, applied_pos, left FROM conversations").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((id(r.get("id"))?, r.get("applied_pos"), r.get::<i64, _>("left") != 0))).collect()
    }

    /// The digest `sync` compares ([`confab_protocol::sync_digest`]) over
    /// the conversations this device follows and the positions it applied.
    pub async fn sync_digest(&self) -> Result<String> {
        let rows = sqlx::query("SELECT id, applied_pos, marks FROM conversations WHERE left = 0")
            .fetch_all(&self.pool)
            .await?;
        let known =
            rows.iter().map(|r| Ok((id(r.get("id"))?, r.get("applied_pos"), r.get("marks")))).collect::<Result<_>>()?;
        Ok(confab_protocol::sync_digest(known))
    }

    /// Each conversation's watermark version as this device holds it.
    pub async fn marks_versions(&self) -> Result<std::collections::HashMap<ConversationId, i64>> {
        let rows = sqlx::query("SELECT id, marks FROM conversations").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((id(r.get("id"))?, r.get("marks")))).collect()
    }

    /// Applies members' watermarks (each only moves forward) and returns
    /// those that moved. `version` is what the cache holds afterwards if
    /// every mark was applicable: with [`MarksVersion::Frame`] only when the
    /// frame starts at or before the version held (it covers every change
    /// since); with [`MarksVersion::Fetched`] whenever it is newer.
    pub async fn apply_watermarks(
        &self,
        conversation: ConversationId,
        marks: &[Watermark],
        version: MarksVersion,
    ) -> Result<Vec<Watermark>> {
        let conv = conversation.to_string();
        let mut tx = self.pool.begin().await?;
        let mut moved = Vec::new();
        let mut complete = true;
        for m in marks {
            match advance_mark(&mut tx, &conv, *m).await? {
                Some(Some(now)) => moved.push(now),
                Some(None) => {}
                // A member this device does not know yet: its marks are
                // lost here, so the version must not claim them.
                None => complete = false,
            }
        }
        let held: Option<i64> = sqlx::query("SELECT marks FROM conversations WHERE id = ?")
            .bind(&conv)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("marks"));
        let to = match (version, held) {
            (_, None) => None,
            (_, Some(_)) if !complete => None,
            (MarksVersion::Frame { since, version }, Some(held)) => {
                (since <= held && version > held).then_some(version)
            }
            (MarksVersion::Fetched(version), Some(held)) => (version > held).then_some(version),
            (MarksVersion::Unchanged, _) => None,
        };
        if let Some(to) = to {
            sqlx::query("UPDATE conversations SET marks = ? WHERE id = ?")
                .bind(to)
                .bind(&conv)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// We are no longer a member: keep the history, stop syncing.
    pub async fn mark_left(&self, conversation: ConversationId) -> Result<()> {
        sqlx::query("UPDATE conversations SET left = 1 WHERE id = ?")
            .bind(conversation.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The server's log may have been rewound (a new `epoch`): forget
    /// every position and everything others sent, so each conversation
    /// syncs from scratch, and record the epoch in the same transaction
    /// (positions at 0 are valid in it, so an interrupted sync just goes
    /// on). Own messages stay: those newer than what the server now has
    /// are queued again (same client id, so never twice), the rest are
    /// matched again as their events replay.
    pub async fn reset_for_new_epoch(&self, heads: &[ConversationHead], epoch: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for h in heads {
            let conv = h.id.to_string();
            requeue_newer_than(&mut tx, &conv, h.last_seq).await?;
            // Membership and receipts come back with the replay; what the
            // lost log said about them must not linger.
            sqlx::query("DELETE FROM members WHERE conversation_id = ?").bind(&conv).execute(&mut *tx).await?;
            sqlx::query("UPDATE conversations SET left = 0 WHERE id = ?").bind(&conv).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM messages WHERE own_client_id IS NULL").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM reactions").execute(&mut *tx).await?;
        sqlx::query("UPDATE conversations SET applied_pos = 0, last_seq = 0, marks = 0").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('epoch', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(epoch)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies one event if it is the next one for its conversation.
    pub async fn apply_event(&self, me: UserId, ev: &ConvEvent) -> Result<Applied> {
        let mut tx = self.pool.begin().await?;
        let applied = apply_in(&mut tx, me, ev).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Applies a page of events in one transaction (each still checked
    /// against its position, each in its own savepoint): catching up on
    /// thousands of events costs one commit per page, not one per event.
    pub async fn apply_events(&self, me: UserId, events: &[ConvEvent]) -> Result<Vec<Applied>> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            out.push(apply_in(&mut tx, me, ev).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Replaces what the cache knows of a conversation with a server
    /// snapshot: its info (taken first) and its newest messages. Events after
    /// `info.last_pos` are then replayed on top; replaying is idempotent.
    pub async fn load_snapshot(
        &self,
        me: UserId,
        info: &ConversationInfo,
        messages: &[Message],
        reset: bool,
    ) -> Result<()> {
        let conv = info.id.to_string();
        let mut tx = self.pool.begin().await?;
        if reset {
            // Own messages stay: matched again below, or queued again if the
            // server no longer has them.
            requeue_newer_than(&mut tx, &conv, info.last_seq).await?;
            sqlx::query("DELETE FROM messages WHERE conversation_id = ? AND seq IS NOT NULL AND own_client_id IS NULL")
                .bind(&conv)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM reactions WHERE conversation_id = ?").bind(&conv).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO conversations (id, kind, name, applied_pos, last_seq, marks, left) VALUES (?, ?, ?, ?, ?, ?, 0)
             ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, name = excluded.name,
               applied_pos = excluded.applied_pos, last_seq = excluded.last_seq, marks = excluded.marks, left = 0",
        )
        .bind(&conv)
        .bind(kind_str(info.kind))
        .bind(&info.name)
        .bind(info.last_pos)
        .bind(info.last_seq)
        .bind(info.marks)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM members WHERE conversation_id = ?").bind(&conv).execute(&mut *tx).await?;
        for m in &info.members {
            upsert_user(&mut tx, m.user, &m.username).await?;
            sqlx::query(
                "INSERT INTO members (conversation_id, user_id, admin, delivered_seq, read_seq) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&conv)
            .bind(m.user.to_string())
            .bind(m.admin)
            .bind(m.delivered_seq)
            .bind(m.read_seq)
            .execute(&mut *tx)
            .await?;
            write_presence(&mut *tx, m.user, m.online, m.last_seen).await?;
        }
        for m in messages.iter().filter(|m| m.conversation == info.id) {
            store_message(&mut tx, me, m).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores older messages fetched for history (no position change).
    pub async fn store_history(&self, me: UserId, conversation: ConversationId, messages: &[Message]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for m in messages.iter().filter(|m| m.conversation == conversation) {
            store_message(&mut tx, me, m).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Own messages at a seq beyond the server's newest: it lost them (its log
/// was rewound), so they are queued again, oldest first.
async fn requeue_newer_than(tx: &mut Transaction<'_, Sqlite>, conv: &str, last_seq: i64) -> Result<()> {
    let lost: Vec<LocalId> = sqlx::query(
        "SELECT id FROM messages WHERE conversation_id = ? AND own_client_id IS NOT NULL AND seq > ? ORDER BY seq",
    )
    .bind(conv)
    .bind(last_seq)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| r.get("id"))
    .collect();
    for local in lost {
        requeue(tx, local).await?;
    }
    Ok(())
}

fn refused(e: &Error) -> bool {
    match e {
        Error::Cache(sqlx::Error::Database(db)) => !matches!(db.kind(), sqlx::error::ErrorKind::Other),
        Error::Protocol(_) => true,
        _ => false,
    }
}

/// One event inside `tx`: applied exactly when it is the next position.
async fn apply_in(tx: &mut Transaction<'_, Sqlite>, me: UserId, ev: &ConvEvent) -> Result<Applied> {
    let conv = ev.conversation.to_string();
    let applied: i64 = sqlx::query("SELECT applied_pos FROM conversations WHERE id = ?")
        .bind(&conv)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.get("applied_pos"))
        .unwrap_or(0);
    if ev.pos <= applied {
        return Ok(Applied::Duplicate);
    }
    if ev.pos > applied + 1 {
        return Ok(Applied::Gap { after: applied });
    }
    // A savepoint: if the change cannot be made, undo just it and still
    // consume the position.
    let mut change = tx.begin().await?;
    let outcome = match apply_body(&mut change, me, ev).await {
        Ok(effects) => {
            change.commit().await?;
            Applied::Done(effects)
        }
        // Only a change the data refuses (a constraint, the shared rules)
        // is skipped; a failing disk is an error, and the event is
        // fetched again later.
        Err(e) if refused(&e) => {
            change.rollback().await?;
            Applied::Skipped { reason: e.to_string() }
        }
        Err(e) => return Err(e),
    };
    // Upsert: even a first event that could not be applied consumes its
    // position, or the conversation would ask for it forever.
    sqlx::query(
        "INSERT INTO conversations (id, kind, applied_pos) VALUES (?, 'group', ?)
         ON CONFLICT(id) DO UPDATE SET applied_pos = excluded.applied_pos",
    )
    .bind(&conv)
    .bind(ev.pos)
    .execute(&mut **tx)
    .await?;
    Ok(outcome)
}

async fn upsert_member(tx: &mut Transaction<'_, Sqlite>, conv: &str, m: &Member) -> Result<()> {
    upsert_user(tx, m.user, &m.username).await?;
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id, admin) VALUES (?, ?, ?)
         ON CONFLICT(conversation_id, user_id) DO UPDATE SET admin = excluded.admin",
    )
    .bind(conv)
    .bind(m.user.to_string())
    .bind(m.admin)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn apply_body(tx: &mut Transaction<'_, Sqlite>, me: UserId, ev: &ConvEvent) -> Result<Vec<Effect>> {
    let conv = ev.conversation.to_string();
    if let Some(seq) = rules::target_seq(&ev.body) {
        // Older than what this device holds: its current state comes with
        // the message when history is fetched.
        let Some((local, mut message)) = load_message(tx, ev.conversation, seq).await? else { return Ok(Vec::new()) };
        return match rules::apply_to_message(&mut message, ev.actor, ev.ts, &ev.body) {
            Ok(true) => {
                sqlx::query(
                    "UPDATE messages SET text = ?, edited_at = ?, deleted = ?, pinned = ?, attachments = ? WHERE id = ?",
                )
                .bind(&message.text)
                .bind(message.edited_at)
                .bind(message.deleted)
                .bind(message.pinned)
                .bind(super::messages::attachments_json(&message.attachments)?)
                .bind(local)
                    .execute(&mut **tx)
                    .await?;
                save_reactions(tx, &conv, seq, &message.reactions).await?;
                Ok(vec![Effect::MessageChanged { id: local }])
            }
            Ok(false) => Ok(Vec::new()),
            Err(code) => Err(Error::Protocol(format!("event {} refused by the rules: {code}", ev.pos))),
        };
    }
    Ok(match &ev.body {
        EventBody::Created { kind, name, members } => {
            sqlx::query(
                "INSERT INTO conversations (id, kind, name) VALUES (?, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, name = excluded.name",
            )
            .bind(&conv)
            .bind(kind_str(*kind))
            .bind(name)
            .execute(&mut **tx)
            .await?;
            for m in members {
                upsert_member(tx, &conv, m).await?;
            }
            vec![Effect::ConversationChanged]
        }
        EventBody::Message { seq, client_id, text, attachments } => {
            let m = Message {
                conversation: ev.conversation,
                seq: *seq,
                pos: ev.pos,
                client_id: *client_id,
                sender: ev.actor,
                text: text.clone(),
                attachments: attachments.clone(),
                ts: ev.ts,
                edited_at: None,
                deleted: false,
                pinned: false,
                reactions: Vec::new(),
                call: None,
            };
            new_message(tx, me, &conv, ev, &m).await?
        }
        // A call's entry: a message of the caller's with the call record.
        EventBody::Call { seq, call, video, outcome } if *seq > 0 => {
            let m = Message {
                conversation: ev.conversation,
                seq: *seq,
                pos: ev.pos,
                client_id: *call,
                sender: ev.actor,
                text: String::new(),
                attachments: Vec::new(),
                ts: ev.ts,
                edited_at: None,
                deleted: false,
                pinned: false,
                reactions: Vec::new(),
                call: Some(confab_protocol::CallRecord { call: *call, video: *video, outcome: *outcome }),
            };
            new_message(tx, me, &conv, ev, &m).await?
        }
        // Logged before calls were messages: nothing to show.
        EventBody::Call { .. } => vec![Effect::ConversationChanged],
        EventBody::MemberAdded { member } => {
            upsert_member(tx, &conv, member).await?;
            if member.user == me {
                sqlx::query("UPDATE conversations SET left = 0 WHERE id = ?").bind(&conv).execute(&mut **tx).await?;
            }
            vec![Effect::ConversationChanged]
        }
        EventBody::MemberRemoved { user } => {
            sqlx::query("DELETE FROM members WHERE conversation_id = ? AND user_id = ?")
                .bind(&conv)
                .bind(user.to_string())
                .execute(&mut **tx)
                .await?;
            if *user == me {
                sqlx::query("UPDATE conversations SET left = 1 WHERE id = ?").bind(&conv).execute(&mut **tx).await?;
                vec![Effect::ConversationChanged, Effect::Left]
            } else {
                vec![Effect::ConversationChanged]
            }
        }
        EventBody::Renamed { name } => {
            sqlx::query("UPDATE conversations SET name = ? WHERE id = ?")
                .bind(name)
                .bind(&conv)
                .execute(&mut **tx)
                .await?;
            vec![Effect::ConversationChanged]
        }
        EventBody::AdminChanged { user, admin } => {
            sqlx::query("UPDATE members SET admin = ? WHERE conversation_id = ? AND user_id = ?")
                .bind(admin)
                .bind(&conv)
                .bind(user.to_string())
                .execute(&mut **tx)
                .await?;
            vec![Effect::ConversationChanged]
        }
        // Logs from before receipts moved beside the log.
        EventBody::Receipt { user, delivered_seq, read_seq } => {
            let mark = Watermark { user: *user, delivered_seq: *delivered_seq, read_seq: *read_seq };
            advance_mark(tx, &conv, mark).await?;
            vec![Effect::Receipt { user: *user, delivered_seq: *delivered_seq, read_seq: *read_seq }]
        }
        EventBody::Edited { .. }
        | EventBody::Deleted { .. }
        | EventBody::Reaction { .. }
        | EventBody::Pinned { .. } => Vec::new(),
    })
}

/// Moves a member's watermarks forward (never back); the new marks if
/// they moved, `None` if not or if the member is not known here.
async fn advance_mark(
    tx: &mut Transaction<'_, Sqlite>,
    conv: &str,
    mark: Watermark,
) -> Result<Option<Option<Watermark>>> {
    let user = mark.user.to_string();
    let row = sqlx::query("SELECT delivered_seq, read_seq FROM members WHERE conversation_id = ? AND user_id = ?")
        .bind(conv)
        .bind(&user)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let current = (row.get("delivered_seq"), row.get("read_seq"));
    // The server already capped these at the newest message.
    let Some((d, r)) = rules::advance_receipt(current, (mark.delivered_seq, mark.read_seq), i64::MAX) else {
        return Ok(Some(None));
    };
    sqlx::query("UPDATE members SET delivered_seq = ?, read_seq = ? WHERE conversation_id = ? AND user_id = ?")
        .bind(d)
        .bind(r)
        .bind(conv)
        .bind(&user)
        .execute(&mut **tx)
        .await?;
    Ok(Some(Some(Watermark { user: mark.user, delivered_seq: d, read_seq: r })))
}

/// Stores a new message (or a call's entry) from the log.
async fn new_message(
    tx: &mut Transaction<'_, Sqlite>,
    me: UserId,
    conv: &str,
    ev: &ConvEvent,
    m: &Message,
) -> Result<Vec<Effect>> {
    let stored = store_message(tx, me, m).await?;
    sqlx::query("UPDATE conversations SET last_seq = MAX(last_seq, ?) WHERE id = ?")
        .bind(m.seq)
        .bind(conv)
        .execute(&mut **tx)
        .await?;
    let mut effects = vec![if stored.new {
        Effect::NewMessage { id: stored.id, from_other: ev.actor != me }
    } else {
        Effect::MessageChanged { id: stored.id }
    }];
    effects.extend(stored.requeued.map(|id| Effect::Requeued { id }));
    Ok(effects)
}
