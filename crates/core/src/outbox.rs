//! The outbox: own messages persist before they are sent and leave only
//! when the server has accepted or refused them. The one home of sending.
//!
//! [`crate::Client::send`] writes the local message and its outbox entry in
//! one transaction and returns. This task sends entries one at a time in
//! the order they were written (so each conversation keeps its order, even
//! across retries and restarts), always with the entry's client id, so a
//! retry after a lost reply is deduplicated by the server. Transient
//! failures back off and retry the same entry; a permanent refusal (not a
//! member, too long, …) marks that message failed with the reason and moves
//! on.

use crate::backoff::Backoff;
use crate::types::{ClientEvent, ConnectionState};
use crate::{Error, Inner};
use confab_protocol::{Reply, RequestBody};
use std::sync::Arc;
use std::time::Duration;

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut state = inner.link().state();
    loop {
        // Wait for a connection.
        if state.wait_for(|s| matches!(s, ConnectionState::Connected)).await.is_err() {
            return;
        }
        let entry = match inner.cache.next_outbox().await {
            Ok(Some(entry)) => entry,
            Ok(None) => {
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
        let request = RequestBody::Send {
            conversation: entry.conversation,
            client_id: entry.client_id,
            text: entry.text.clone(),
        };
        let result = inner.link().request(request).await;
        let outcome = match result {
            Ok(Reply::Sent { seq, ts, .. }) => {
                backoff.reset();
                inner.cache.mark_sent(entry.client_id, seq, ts).await.map(drop)
            }
            Ok(other) => {
                tracing::error!(?other, "unexpected reply to send");
                Err(Error::Protocol("unexpected reply to send".into()))
            }
            Err(e) if e.is_transient() => {
                let _ = inner.cache.bump_attempts(entry.id).await;
                let delay = match &e {
                    Error::Server { retry_after_ms: Some(ms), .. } => Duration::from_millis(*ms),
                    _ => backoff.next_delay(),
                };
                tracing::debug!(%e, ?delay, "send failed; will retry");
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(Error::Server { code, message, .. }) => {
                tracing::info!(?code, %message, client_id = %entry.client_id, "message refused");
                inner.cache.mark_failed(entry.client_id, code, &message).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                if let Ok(Some(message)) = inner.cache.own_message(inner.me, entry.client_id).await {
                    inner.emit(ClientEvent::MessageUpdated { message });
                }
            }
            Err(e) => {
                tracing::error!(%e, "outbox step failed");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
