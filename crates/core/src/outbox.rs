//! The outbox: own messages persist before they are sent and leave only
//! when the server has accepted or refused them. The one home of sending.
//!
//! [`crate::Client::send`] writes the local message and its outbox entry in
//! one transaction and returns. This task sends entries in the order they
//! were written (so each conversation keeps its order, even across retries
//! and restarts), always with the entry's client id, so a retry after a
//! lost reply is deduplicated by the server. Consecutive entries for one
//! conversation go as one `send_many` (up to [`MAX_BATCH`], within a frame),
//! which the server takes in order and commits at once: a thousand queued
//! messages take a handful of round trips, not a thousand. A batch rather
//! than several requests in flight: its order is the server's by
//! construction, and a rate limit or a dropped link refuses or loses the
//! whole batch, never a message in its middle. Transient failures back off
//! and retry the same entries; a permanent refusal (not a member, too long,
//! …) marks that message failed with the reason and moves on.

use crate::backoff::Backoff;
use crate::types::{ClientEvent, ConnectionState};
use crate::{Error, Inner};
use confab_protocol::{OutgoingText, Reply, RequestBody, SendResult, MAX_BATCH, MAX_FRAME_BYTES};
use std::sync::Arc;
use std::time::Duration;

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut state = inner.link().state();
    // A server that refuses `send_many` as a whole (one older than it)
    // gets one `send` per message from then on, each with its own verdict.
    let mut batch_max = MAX_BATCH;
    loop {
        // Wait for a connection.
        if state.wait_for(|s| matches!(s, ConnectionState::Connected)).await.is_err() {
            return;
        }
        // Room in the frame for the request around the texts.
        let batch = match inner.cache.next_outbox_batch(batch_max, MAX_FRAME_BYTES - 4096).await {
            Ok(batch) if !batch.is_empty() => batch,
            Ok(_) => {
                tokio::select! {
                    _ = inner.outbox_wakeup.notified() => {}
                    r = state.changed() => if r.is_err() { return },
                }
                continue;
            }
            Err(e) => {
                tracing::error!(%e, "cannot read the outbox");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let conversation = batch[0].conversation;
        tracing::debug!(entries = batch.len(), "sending");
        let request = match batch.as_slice() {
            [one] => RequestBody::Send {
                conversation,
                client_id: one.client_id,
                text: one.text.clone(),
                attachments: one.attachments.clone(),
            },
            many => RequestBody::SendMany {
                conversation,
                messages: many
                    .iter()
                    .map(|e| OutgoingText {
                        client_id: e.client_id,
                        text: e.text.clone(),
                        attachments: e.attachments.clone(),
                    })
                    .collect(),
            },
        };
        let results: Vec<SendResult> = match inner.link().request(request).await {
            Ok(Reply::Sent { client_id, seq, pos, ts, duplicate, .. }) => {
                vec![SendResult::Sent { client_id, seq, pos, ts, duplicate }]
            }
            Ok(Reply::SentMany { results, .. }) if results.len() == batch.len() => results,
            Ok(other) => {
                tracing::error!(?other, "unexpected reply to send");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(e) if e.is_transient() => {
                for entry in &batch {
                    let _ = inner.cache.bump_attempts(entry.id).await;
                }
                let delay = match &e {
                    Error::Server { retry_after_ms: Some(ms), .. } => Duration::from_millis(*ms),
                    _ => backoff.next_delay(),
                };
                tracing::debug!(%e, ?delay, entries = batch.len(), "send failed; will retry");
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(Error::Server { code, message, .. }) if batch.len() > 1 => {
                tracing::warn!(?code, %message, "the server refused send_many; sending one by one");
                batch_max = 1;
                continue;
            }
            // The request itself was refused (one `send`'s message).
            Err(Error::Server { code, message, .. }) => batch
                .iter()
                .map(|e| SendResult::Refused { client_id: e.client_id, code, message: message.clone() })
                .collect(),
            Err(e) => {
                tracing::error!(%e, "outbox step failed");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff.reset();
        if let Err(e) = record(&inner, conversation, &results).await {
            tracing::error!(%e, "outbox step failed");
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Records what the server said about each message, and tells the UI.
async fn record(
    inner: &Inner,
    conversation: confab_protocol::ConversationId,
    results: &[SendResult],
) -> crate::Result<()> {
    let sent: Vec<_> = results
        .iter()
        .filter_map(|r| match r {
            SendResult::Sent { client_id, seq, ts, .. } => Some((*client_id, *seq, *ts)),
            SendResult::Refused { .. } => None,
        })
        .collect();
    inner.cache.mark_sent_all(&sent).await?;
    let mut ids = Vec::with_capacity(results.len());
    for r in results {
        ids.push(match r {
            SendResult::Sent { client_id, .. } => *client_id,
            SendResult::Refused { client_id, code, message } => {
                tracing::info!(?code, %message, %client_id, "message refused");
                inner.cache.mark_failed(*client_id, *code, message).await?;
                *client_id
            }
        });
    }
    for message in inner.cache.own_messages(inner.me, conversation, &ids).await.unwrap_or_default() {
        inner.emit(ClientEvent::MessageUpdated { message });
    }
    Ok(())
}
