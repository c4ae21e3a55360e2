//! Push wake-ups for devices with no socket open.
//!
//! When a committed event reaches a user, every device session of theirs
//! that has a push target ([`crate::store::PushStore`]) and no live socket
//! gets a wake-up with no content ([`Wake`]): the device connects, catches
//! up and shows what it read from its own copy.
//!
//! - **Collapsing**: a user's events are gathered for [`PushConfig::collapse`]
//!   before anything is sent; a device that was woken is not woken again
//!   until it has connected, or [`PushConfig::quiet`] has passed (the wake
//!   was lost, or the OS did not run the app). A burst of 50 messages is
//!   one wake-up.
//! - **Priority**: messages high, other changes normal, receipts and typing
//!   never; an incoming call is pushed at once, high (APNs: a VoIP push).
//! - **Never in the way**: [`Push::wake`] only queues (bounded); delivery
//!   runs in its own tasks with retries and backoff (429, 5xx, timeouts).
//!   A target the provider calls gone is deleted.
//!
//! Each provider is off unless configured ([`PushConfig`]).

pub mod apns;
pub mod fcm;
pub mod webpush;

use crate::store::{PushRow, Store};
use async_trait::async_trait;
use confab_protocol::{CallId, ConversationId, ErrorCode, PushTarget, UserId, Wake, WakeKind};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Recipients waiting in the queue to the dispatcher, over all jobs: 16
/// bytes each, so the queue stays under a few MiB however large the groups.
const MAX_QUEUED_USERS: usize = 200_000;
/// Pushes being delivered (or waiting to retry) at once.
const MAX_IN_FLIGHT: usize = 256;
/// How long one request to a provider may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait between retries, whatever a provider's Retry-After says.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Which providers to push through, and how.
#[derive(Clone, Debug)]
pub struct PushConfig {
    pub fcm: Option<fcm::FcmConfig>,
    pub apns: Option<apns::ApnsConfig>,
    pub webpush: Option<webpush::WebPushConfig>,
    /// A CA certificate (PEM) trusted besides the public roots: a company
    /// proxy's, or a test's stand-in provider's.
    pub extra_root: Option<PathBuf>,
    /// How long a user's events are gathered into one wake-up.
    pub collapse: Duration,
    /// How long a woken device that has not connected is left alone.
    pub quiet: Duration,
    /// The first retry's delay; each next one doubles it.
    pub retry_base: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            fcm: None,
            apns: None,
            webpush: None,
            extra_root: None,
            collapse: Duration::from_millis(500),
            quiet: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            retries: 5,
        }
    }
}

impl PushConfig {
    pub fn is_enabled(&self) -> bool {
        self.fcm.is_some() || self.apns.is_some() || self.webpush.is_some()
    }
}

/// What became of one attempt to push.
#[derive(Debug)]
pub enum Delivery {
    Sent,
    /// The provider says the target no longer exists: delete it.
    Gone(String),
    /// Worth trying again (throttled, provider trouble, network), after
    /// `after` if the provider said.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Will not work however often it is tried (bad configuration, a
    /// payload refused).
    Failed(String),
}

/// One provider.
#[async_trait]
pub trait Pusher: Send + Sync + 'static {
    /// For logs and metrics.
    fn name(&self) -> &'static str;
    async fn push(&self, target: &PushTarget, wake: &Wake) -> Delivery;
}

/// Whether a wake-up should reach the device quickly.
pub fn is_urgent(wake: &Wake) -> bool {
    matches!(wake.kind, WakeKind::Message | WakeKind::Call)
}

/// Seconds a provider may hold a wake-up for an offline device: a call is
/// worthless once it stopped ringing.
pub fn ttl(wake: &Wake) -> Duration {
    match wake.kind {
        WakeKind::Call => Duration::from_secs(45),
        WakeKind::Message | WakeKind::Update => Duration::from_secs(24 * 3600),
    }
}

/// The delay before retry `attempt` (0-based): `base`·2^attempt, a
/// provider's Retry-After if longer, with up to 25% jitter so many
/// waiting pushes do not come back at once.
pub fn backoff(base: Duration, attempt: u32, after: Option<Duration>) -> Duration {
    use rand::Rng;
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let wait = after.map_or(exp, |a| a.max(exp)).min(MAX_BACKOFF);
    let jitter = rand::thread_rng().gen_range(0.0..0.25);
    wait + wait.mul_f64(jitter)
}

/// The HTTP client for FCM and APNs: public roots plus the configured one.
pub(crate) fn http_client(extra_root: Option<&PathBuf>, http2_only: bool) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(600))
        .user_agent(concat!("confab-server/", env!("CARGO_PKG_VERSION")));
    if http2_only {
        builder = builder.http2_prior_knowledge();
    }
    if let Some(path) = extra_root {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("no certificate in {}: {e}", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| anyhow::anyhow!("cannot set up the push client: {e}"))
}

/// A provider's Retry-After header (seconds), if any.
pub(crate) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// What reading a provider's answer on a status usually means.
pub(crate) fn transient(status: reqwest::StatusCode, after: Option<Duration>, what: &str) -> Delivery {
    Delivery::Retry { after, why: format!("{what}: {status}") }
}

/// Whether the devices of a session have a live socket (here, or for all
/// this node can tell, on another node).
pub trait Devices: Send + Sync + 'static {
    fn is_live(&self, user: UserId, session: Uuid) -> bool;
}

enum Job {
    Events { users: Vec<UserId>, conversation: ConversationId, kind: WakeKind },
    Call { user: UserId, call: CallId, conversation: ConversationId, video: bool },
}

/// The configured providers.
pub struct Pushers {
    fcm: Option<fcm::Fcm>,
    apns: Option<apns::Apns>,
    webpush: Option<webpush::WebPush>,
}

impl Pushers {
    fn get(&self, target: &PushTarget) -> Option<&dyn Pusher> {
        match target {
            PushTarget::Fcm { .. } => self.fcm.as_ref().map(|p| p as &dyn Pusher),
            PushTarget::Apns { .. } => self.apns.as_ref().map(|p| p as &dyn Pusher),
            PushTarget::UnifiedPush { .. } => self.webpush.as_ref().map(|p| p as &dyn Pusher),
        }
    }
}

/// The push dispatcher's handle: cheap to call from the delivery path.
pub struct Push {
    pushers: Arc<Pushers>,
    tx: Option<mpsc::Sender<Job>>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    queued: Arc<AtomicUsize>,
    /// Sessions woken and not connected since, with when.
    woken: Mutex<HashMap<Uuid, Instant>>,
    config: PushConfig,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Push {
    /// No providers: every call is a no-op.
    pub fn disabled() -> Push {
        Push {
            pushers: Arc::new(Pushers { fcm: None, apns: None, webpush: None }),
            tx: None,
            rx: Mutex::new(None),
            queued: Arc::default(),
            woken: Mutex::default(),
            config: PushConfig::default(),
        }
    }

    /// Reads the configured credentials; fails on a bad file, so a
    /// misconfigured server does not start and silently never push.
    pub fn new(config: PushConfig) -> anyhow::Result<Push> {
        if !config.is_enabled() {
            return Ok(Push::disabled());
        }
        let root = config.extra_root.as_ref();
        let pushers = Pushers {
            fcm: config.fcm.as_ref().map(|c| fcm::Fcm::new(c, root)).transpose()?,
            apns: config.apns.as_ref().map(|c| apns::Apns::new(c, root)).transpose()?,
            webpush: config.webpush.as_ref().map(|c| webpush::WebPush::new(c, root)).transpose()?,
        };
        let (tx, rx) = mpsc::channel(4096);
        Ok(Push {
            pushers: Arc::new(pushers),
            tx: Some(tx),
            rx: Mutex::new(Some(rx)),
            queued: Arc::default(),
            woken: Mutex::default(),
            config,
        })
    }

    /// Checks a target a device registers: a kind this server pushes to,
    /// well formed (`invalid_request` says what is wrong).
    pub fn check(&self, target: &PushTarget) -> crate::error::Result<()> {
        target.check_shape().map_err(|why| crate::error::ApiError::new(ErrorCode::InvalidRequest, why))?;
        if self.pushers.get(target).is_none() {
            return Err(ErrorCode::PushUnavailable.into());
        }
        if let (PushTarget::UnifiedPush { endpoint, p256dh, auth }, Some(w)) = (target, &self.pushers.webpush) {
            w.check(endpoint, p256dh, auth)
                .map_err(|why| crate::error::ApiError::new(ErrorCode::InvalidRequest, why))?;
        }
        Ok(())
    }

    /// New events for `users` (the actor excluded): queue a wake-up for
    /// their devices that are away. Never waits.
    pub fn wake(&self, actor: UserId, users: &[UserId], conversation: ConversationId, kind: WakeKind) {
        let Some(tx) = &self.tx else { return };
        let users: Vec<UserId> = users.iter().copied().filter(|u| *u != actor).collect();
        if users.is_empty() {
            return;
        }
        let n = users.len();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > MAX_QUEUED_USERS {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            metrics::counter!("confab_push_dropped_total").increment(1);
            return;
        }
        if tx.try_send(Job::Events { users, conversation, kind }).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            metrics::counter!("confab_push_dropped_total").increment(1);
        }
    }

    /// A call rings for `user`: push their away devices at once.
    pub fn call(&self, user: UserId, call: CallId, conversation: ConversationId, video: bool) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(Job::Call { user, call, conversation, video }).is_err() {
            metrics::counter!("confab_push_dropped_total").increment(1);
        }
    }

    /// A device session connected: it has caught up, so the next event
    /// after it leaves may wake it again.
    pub fn connected(&self, session: Uuid) {
        if self.tx.is_some() {
            lock(&self.woken).remove(&session);
        }
    }

    /// Marks `session` woken now, unless it was woken within `quiet` (or
    /// `force`, for calls). Whether to push.
    fn claim(&self, session: Uuid, force: bool) -> bool {
        let mut woken = lock(&self.woken);
        let now = Instant::now();
        match woken.get(&session) {
            Some(at) if !force && now.duration_since(*at) < self.config.quiet => false,
            _ => {
                woken.insert(session, now);
                true
            }
        }
    }
}

/// A user's events gathered for one wake-up.
struct Pending {
    since: Instant,
    conversation: ConversationId,
    count: u32,
    kind: WakeKind,
}

/// The dispatcher: gathers events per user, then pushes to their away
/// devices. Returns at once when no provider is configured.
pub async fn run(push: Arc<Push>, store: Arc<dyn Store>, devices: Arc<dyn Devices>) {
    let Some(mut rx) = lock(&push.rx).take() else { return };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut pending: HashMap<UserId, Pending> = HashMap::new();
    let mut tick = tokio::time::interval((push.config.collapse / 4).max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                None => return,
                Some(Job::Events { users, conversation, kind }) => {
                    push.queued.fetch_sub(users.len(), Ordering::Relaxed);
                    let now = Instant::now();
                    for user in users {
                        let p = pending.entry(user).or_insert(Pending { since: now, conversation, count: 0, kind });
                        p.conversation = conversation;
                        p.count = p.count.saturating_add(1);
                        if kind == WakeKind::Message {
                            p.kind = WakeKind::Message;
                        }
                    }
                }
                Some(Job::Call { user, call, conversation, video }) => {
                    let wake = Wake { kind: WakeKind::Call, conversation: Some(conversation), count: 1, call: Some(call), video: Some(video) };
                    let targets = targets(&*store, &*devices, &[user]).await;
                    for row in targets {
                        if push.claim(row.session, true) {
                            deliver(&push, &store, &in_flight, row, wake.clone());
                        }
                    }
                }
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let due: Vec<UserId> = pending
                    .iter()
                    .filter(|(_, p)| now.duration_since(p.since) >= push.config.collapse)
                    .map(|(u, _)| *u)
                    .collect();
                if due.is_empty() {
                    continue;
                }
                let due: HashMap<UserId, Pending> = due.into_iter().filter_map(|u| pending.remove_entry(&u)).collect();
                let users: Vec<UserId> = due.keys().copied().collect();
                for row in targets(&*store, &*devices, &users).await {
                    let Some(p) = due.get(&row.user) else { continue };
                    if !push.claim(row.session, false) {
                        continue;
                    }
                    let wake = Wake { kind: p.kind, conversation: Some(p.conversation), count: p.count, call: None, video: None };
                    deliver(&push, &store, &in_flight, row, wake);
                }
                let quiet = push.config.quiet;
                lock(&push.woken).retain(|_, at| now.duration_since(*at) < quiet);
            }
        }
    }
}

/// The targets of `users`' sessions that are away.
async fn targets(store: &dyn Store, devices: &dyn Devices, users: &[UserId]) -> Vec<PushRow> {
    match store.push_targets(users).await {
        Ok(rows) => rows.into_iter().filter(|r| !devices.is_live(r.user, r.session)).collect(),
        Err(e) => {
            tracing::warn!(%e, "cannot read push targets");
            Vec::new()
        }
    }
}

/// Pushes in a task of its own, retrying with backoff.
fn deliver(
    push: &Arc<Push>,
    store: &Arc<dyn Store>,
    in_flight: &Arc<tokio::sync::Semaphore>,
    row: PushRow,
    wake: Wake,
) {
    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
        // Too much in flight: the device catches up at its next wake-up or
        // when the user opens the app.
        lock(&push.woken).remove(&row.session);
        metrics::counter!("confab_push_dropped_total").increment(1);
        return;
    };
    let (push, store) = (push.clone(), store.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let Some(pusher) = push.pushers.get(&row.target) else { return };
        let name = pusher.name();
        for attempt in 0..=push.config.retries {
            let outcome = pusher.push(&row.target, &wake).await;
            let result = match &outcome {
                Delivery::Sent => "sent",
                Delivery::Gone(_) => "gone",
                Delivery::Retry { .. } => "retry",
                Delivery::Failed(_) => "failed",
            };
            metrics::counter!("confab_push_total", "provider" => name, "result" => result).increment(1);
            match outcome {
                Delivery::Sent => {
                    tracing::debug!(provider = name, session = %row.session, kind = ?wake.kind, "pushed");
                    return;
                }
                Delivery::Gone(why) => {
                    tracing::info!(provider = name, session = %row.session, %why, "push target gone: forgetting it");
                    if let Err(e) = store.drop_push(row.session, &row.target).await {
                        tracing::warn!(%e, "cannot forget a push target");
                    }
                    return;
                }
                Delivery::Failed(why) => {
                    tracing::warn!(provider = name, session = %row.session, %why, "push failed");
                    return;
                }
                Delivery::Retry { after, why } => {
                    if attempt == push.config.retries {
                        tracing::warn!(provider = name, session = %row.session, %why, "push failed after retries");
                        return;
                    }
                    tracing::debug!(provider = name, %why, attempt, "push will be retried");
                    tokio::time::sleep(backoff(push.config.retry_base, attempt, after)).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_honours_retry_after_and_is_capped() {
        let base = Duration::from_millis(100);
        let b0 = backoff(base, 0, None);
        assert!(b0 >= base && b0 <= base.mul_f64(1.25));
        let b3 = backoff(base, 3, None);
        assert!(b3 >= base * 8 && b3 <= (base * 8).mul_f64(1.25));
        let told = backoff(base, 0, Some(Duration::from_secs(7)));
        assert!(told >= Duration::from_secs(7));
        assert!(backoff(base, 30, Some(Duration::from_secs(100_000))) <= MAX_BACKOFF.mul_f64(1.25));
    }
}
