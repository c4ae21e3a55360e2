//! How the CLI prints things: one JSON object per line with `--json`, short
//! lines for people otherwise.

use confab_core::{ChatMessage, Client, ClientEvent, ConnectionState, ConversationSummary};
use confab_protocol::UserId;
use serde_json::{json, Value};

/// Prints one line to stdout. A closed stdout (`confab listen | head`) ends
/// the process quietly instead of panicking.
pub fn line(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn print_json(v: Value) {
    line(&v.to_string());
}

fn short(id: &impl ToString) -> String {
    id.to_string().chars().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect()
}

fn message_json(kind: &str, m: &ChatMessage) -> Value {
    json!({
        "type": kind,
        "conversation": m.conversation,
        "seq": m.seq,
        "sender": m.sender_name,
        "text": m.text,
        "client_id": m.client_id,
        "ts": m.ts,
        "status": m.status,
        "edited": m.edited_at.is_some(),
        "deleted": m.deleted,
        "pinned": m.pinned,
        "reactions": m.reactions.iter().map(|r| json!({"emoji": r.emoji, "count": r.users.len()})).collect::<Vec<_>>(),
        "error": m.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
        "call": m.call,
        "attachments": m.attachments,
    })
}

/// One search hit: `conversation #seq sender: snippet` with the match in
/// brackets, or a JSON object.
pub async fn search_hit(client: &Client, h: &confab_core::SearchResult, json: bool) {
    let title = match client.conversation(h.conversation).await {
        Ok(Some(c)) => c.title,
        _ => short(&h.conversation),
    };
    if json {
        print_json(json!({
            "type": "search_hit",
            "conversation": h.conversation,
            "title": title,
            "seq": h.seq,
            "sender": h.sender_name,
            "ts": h.ts,
            "snippet": h.snippet,
            "on_device": h.on_device,
        }));
    } else {
        let snippet = h
            .snippet
            .replace(confab_protocol::media::HIGHLIGHT_START, "[")
            .replace(confab_protocol::media::HIGHLIGHT_END, "]");
        let seq = h.seq.map(|s| format!("#{s}")).unwrap_or_else(|| "#-".into());
        line(&format!("{title} {seq} {}: {snippet}", h.sender_name));
    }
}

fn message_line(m: &ChatMessage) -> String {
    let seq = m.seq.map(|s| format!("#{s}")).unwrap_or_else(|| "#-".into());
    let body = if m.deleted { "(deleted)".to_owned() } else { confab_core::notify::body(m) };
    let mut line = format!("{seq} {}: {body}", m.sender_name);
    if m.edited_at.is_some() && !m.deleted {
        line.push_str(" (edited)");
    }
    if m.pinned {
        line.push_str(" [pinned]");
    }
    for r in &m.reactions {
        line.push_str(&format!(" {}×{}", r.emoji, r.users.len()));
    }
    line
}

/// A message in `history`.
pub fn message(m: &ChatMessage, json: bool) {
    if json {
        print_json(message_json("message", m));
    } else {
        line(&message_line(m));
    }
}

pub fn conversation(c: &ConversationSummary, json: bool) {
    if json {
        print_json(json!({
            "id": c.id,
            "kind": c.kind,
            "title": c.title,
            "members": c.members.iter().map(|m| &m.username).collect::<Vec<_>>(),
            "unread": c.unread,
            "left": c.left,
        }));
    } else {
        line(&format!("{}  {}  ({} unread)", c.id, c.title, c.unread));
    }
}

pub struct Printer<'a> {
    client: &'a Client,
    json: bool,
}

impl<'a> Printer<'a> {
    pub fn new(client: &'a Client, json: bool) -> Self {
        Printer { client, json }
    }

    async fn username(&self, user: UserId) -> String {
        self.client.username(user).await.ok().flatten().unwrap_or_else(|| user.to_string())
    }

    pub async fn print(&self, ev: &ClientEvent) {
        match ev {
            ClientEvent::MessageAdded { message: m, .. } => {
                if self.json {
                    print_json(message_json("message", m));
                } else {
                    line(&format!("[{}] {}", short(&m.conversation), message_line(m)));
                }
            }
            ClientEvent::MessageUpdated { message: m } => {
                if self.json {
                    print_json(message_json("message_updated", m));
                } else {
                    line(&format!("[{}] updated {} ({:?})", short(&m.conversation), message_line(m), m.status));
                }
            }
            ClientEvent::Receipt { conversation, user, delivered_seq, read_seq } => {
                let name = self.username(*user).await;
                if self.json {
                    print_json(json!({"type": "receipt", "conversation": conversation, "user": name,
                        "delivered_seq": delivered_seq, "read_seq": read_seq}));
                } else {
                    line(&format!(
                        "[{}] {name} received up to #{delivered_seq}, read up to #{read_seq}",
                        short(conversation)
                    ));
                }
            }
            ClientEvent::ConversationUpdated { conversation } => {
                if self.json {
                    print_json(json!({"type": "conversation", "conversation": conversation}));
                }
            }
            ClientEvent::Typing { conversation, username, ttl_ms, .. } => {
                if self.json {
                    print_json(
                        json!({"type": "typing", "conversation": conversation, "user": username, "ttl_ms": ttl_ms}),
                    );
                } else {
                    line(&format!("[{}] {username} is typing…", short(conversation)));
                }
            }
            ClientEvent::Presence { user, online, last_seen } => {
                let name = self.username(*user).await;
                if self.json {
                    print_json(json!({"type": "presence", "user": name, "online": online, "last_seen": last_seen}));
                } else {
                    line(&format!("{name} is {}", if *online { "online" } else { "offline" }));
                }
            }
            ClientEvent::Connection { state } => {
                if self.json {
                    print_json(json!({"type": "connection", "state": state}));
                } else {
                    match state {
                        ConnectionState::Connected => eprintln!("connected"),
                        ConnectionState::Offline { retry_in_ms, reason } => {
                            eprintln!("offline ({reason}); reconnecting in {:.1}s", *retry_in_ms as f64 / 1000.0)
                        }
                        _ => {}
                    }
                }
            }
            ClientEvent::MissedMessages { conversation, count, senders, .. } => {
                if self.json {
                    print_json(json!({"type": "missed", "conversation": conversation, "count": count,
                        "senders": senders}));
                } else {
                    let summary = confab_core::notify::missed_summary(*count, senders);
                    line(&format!("[{}] {summary}", short(conversation)));
                }
            }
            ClientEvent::SyncCompleted => {
                if self.json {
                    print_json(json!({"type": "synced"}));
                }
            }
            ClientEvent::Call { call } => call_view(call, self.json),
            ClientEvent::MessageRemoved { conversation, id } => {
                if self.json {
                    print_json(json!({"type": "message_removed", "conversation": conversation, "id": id}));
                }
            }
            ClientEvent::UploadProgress { client_id, file, sent, total } => {
                if self.json {
                    print_json(json!({"type": "upload_progress", "client_id": client_id, "file": file,
                                      "sent": sent, "total": total}));
                }
            }
        }
    }
}

/// A call's phase: `call <id> with bob: ringing (voice)`.
pub fn call_view(c: &confab_core::CallView, json: bool) {
    if json {
        print_json(json!({"type": "call", "call": c}));
        return;
    }
    use confab_core::CallPhase as P;
    let phase = match &c.phase {
        P::Calling => "calling…".to_owned(),
        P::Ringing => format!("incoming {} call", if c.video { "video" } else { "voice" }),
        P::Connecting => "connecting…".to_owned(),
        P::Active { .. } => "connected".to_owned(),
        P::Reconnecting { .. } => "reconnecting…".to_owned(),
        P::Ended { reason, duration_ms, error } => {
            let mut s = format!(
                "ended: {}",
                serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            );
            if let Some(ms) = duration_ms {
                s.push_str(&format!(" after {:.1} s", *ms as f64 / 1000.0));
            }
            if let Some(e) = error {
                s.push_str(&format!(" ({e})"));
            }
            s
        }
    };
    line(&format!("call {} with {}: {phase}", c.call, c.peer_name));
}

/// One signed-in device: `<id>  <device>  last seen <time>  (this device)`.
pub fn session(s: &confab_protocol::DeviceSession, json: bool) {
    if json {
        print_json(json!({"id": s.id, "device": s.device, "created": s.created, "last_seen": s.last_seen,
            "current": s.current}));
    } else {
        let device = s.device.as_deref().unwrap_or("unnamed device");
        let this = if s.current { "  (this device)" } else { "" };
        line(&format!("{}  {device}  last seen {}{this}", s.id, ago(s.last_seen)));
    }
}

fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64);
    let mins = (now.unwrap_or(ms) - ms).max(0) / 60_000;
    match mins {
        0 => "just now".into(),
        1..=59 => format!("{mins} min ago"),
        60..=2879 => format!("{} h ago", mins / 60),
        _ => format!("{} days ago", mins / 1440),
    }
}
