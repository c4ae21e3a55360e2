//! Confab's client core: one async API and one event stream for the CLI, the
//! app and the tests. No UI dependency.
//!
//! - [`connection`]: the link, with heartbeat and reconnect (backoff + full jitter).
//! - [`sync`]: gap-free, exactly-once application of server events to the cache.
//! - [`outbox`]: persist-first sending with client ids, surviving restarts.
//! - [`files`]: resumable uploads before their message is sent; the media cache.
//! - [`cache`]: the SQLite cache the views are read from.
//! - [`notify`]: the notification policy, as plain logic.
//! - [`call`]: calls: the state machine, the media seam and the native engine.
//! - [`wake`]: push targets, and catching up when a push wakes the app.
//!
//! ```no_run
//! # async fn demo() -> confab_core::Result<()> {
//! let client = confab_core::Client::open("/tmp/alice".as_ref()).await?;
//! client.login("http://127.0.0.1:7313", "alice", "correct horse").await?;
//! client.start().await?;
//! let conv = client.open_direct("bob").await?;
//! client.send(conv, "hi bob").await?; // queued: sent as soon as possible
//! # Ok(()) }
//! ```

mod backoff;
pub mod cache;
pub mod call;
pub mod connection;
mod error;
pub mod files;
pub mod notify;
mod outbox;
pub mod secrets;
mod sync;
pub mod tls;
mod types;
pub mod wake;

pub use backoff::Backoff;
pub use connection::LinkConfig;
pub use error::{Error, Result};
pub use secrets::SecretStore;
pub use types::*;
pub use wake::{CaughtUp, Notice};

use cache::{Cache, StoredSession};
use confab_protocol::{AuthRequest, AuthResponse, ClientId, ConversationId, HttpError, Reply, RequestBody, UserId};
use connection::Link;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::task::JoinHandle;

/// A signed-in client on one profile directory.
pub struct Client {
    profile: PathBuf,
    cache: Cache,
    events: broadcast::Sender<ClientEvent>,
    link_config: LinkConfig,
    secrets: Option<Arc<dyn SecretStore>>,
    trust: Option<tls::Trust>,
    device_name: Option<String>,
    media: Option<Arc<dyn call::MediaEngine>>,
    running: tokio::sync::Mutex<Option<Running>>,
    /// Size cap of the media cache, in bytes.
    media_cap: u64,
    /// One download per media key at a time.
    fetching: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct Running {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// State shared by the background tasks of a started client.
pub(crate) struct Inner {
    pub(crate) cache: Cache,
    pub(crate) me: UserId,
    link: Mutex<Option<Link>>,
    events: broadcast::Sender<ClientEvent>,
    pub(crate) outbox_wakeup: Notify,
    pub(crate) uploads_wakeup: Notify,
    pub(crate) http: files::Http,
    pub(crate) media_dir: PathBuf,
    calls: mpsc::Sender<call::manager::Command>,
    /// The link generation whose full sync finished (0: none yet).
    synced_generation: std::sync::atomic::AtomicU64,
}

impl Inner {
    pub(crate) fn link(&self) -> Link {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone().expect("link is set before tasks start")
    }

    /// Whether the current connection has finished its sync: what the
    /// server held when it connected is in the cache, and what came since
    /// arrived live.
    pub(crate) fn is_synced(&self) -> bool {
        let link = self.link();
        link.is_connected() && self.synced_generation.load(std::sync::atomic::Ordering::SeqCst) == link.generation()
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        // No subscriber is fine: events are also in the cache.
        let _ = self.events.send(event);
    }
}

/// What happened to one sent message, for [`Client::wait_sent`].
#[derive(Clone, Debug, PartialEq)]
pub enum SendOutcome {
    Sent { seq: i64 },
    Failed(SendError),
}

impl Client {
    /// Opens (creating if needed) the profile at `profile`: its cache and
    /// saved session.
    pub async fn open(profile: &Path) -> Result<Client> {
        std::fs::create_dir_all(profile)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The profile holds the session token.
            let _ = std::fs::set_permissions(profile, std::fs::Permissions::from_mode(0o700));
        }
        let cache = Cache::open(&profile.join("cache.db")).await?;
        // Large enough that a consumer printing a burst of thousands of
        // messages does not lag behind.
        let (events, _) = broadcast::channel(16 * 1024);
        Ok(Client {
            profile: profile.to_owned(),
            cache,
            events,
            link_config: LinkConfig::default(),
            secrets: None,
            trust: None,
            device_name: None,
            media: None,
            running: Default::default(),
            media_cap: files::DEFAULT_MEDIA_CAP,
            fetching: Mutex::default(),
        })
    }

    /// Caps the media cache (downloaded files and thumbnails) at `bytes`.
    pub fn with_media_cache_cap(mut self, bytes: u64) -> Self {
        self.media_cap = bytes;
        self
    }

    fn media_dir(&self) -> PathBuf {
        self.profile.join("media")
    }

    async fn files_http(&self) -> Result<files::Http> {
        let session = self.session().await?.ok_or(Error::NotSignedIn)?;
        Ok(files::Http { client: self.http(Duration::from_secs(120))?, server: session.server, token: session.token })
    }

    fn link_config(&self) -> LinkConfig {
        LinkConfig { tls: self.trust.as_ref().map(|t| t.config.clone()), ..self.link_config.clone() }
    }

    pub fn with_link_config(mut self, config: LinkConfig) -> Self {
        self.link_config = config;
        self
    }

    /// Trusts the certificate authority in `pem` (PEM) besides the public
    /// ones: for a server with a private CA or a self-signed certificate.
    pub fn with_ca_cert(mut self, pem: &[u8]) -> Result<Self> {
        self.trust = Some(tls::Trust::with_extra_roots(pem)?);
        Ok(self)
    }

    /// How this device is listed among the account's sessions ("Confab on
    /// alice-laptop"); set before signing in.
    pub fn with_device_name(mut self, name: impl Into<String>) -> Self {
        self.device_name = Some(name.into());
        self
    }

    fn http(&self, timeout: Duration) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(trust) = &self.trust {
            builder = trust.http(builder)?;
        }
        builder.build().map_err(|e| Error::Unreachable(e.to_string()))
    }

    /// Carries calls' media with `engine`: the native one (feature
    /// `native-calls`), or the webview's through [`call::ExternalEngine`].
    /// Without one, calls still ring but cannot be placed or answered.
    pub fn with_media_engine(mut self, engine: Arc<dyn call::MediaEngine>) -> Self {
        self.media = Some(engine);
        self
    }

    /// Keeps the session token in `store` (the OS keychain) rather than in
    /// the profile.
    pub fn with_secret_store(mut self, store: Arc<dyn SecretStore>) -> Self {
        self.secrets = Some(store);
        self
    }

    pub fn profile(&self) -> &Path {
        &self.profile
    }

    /// The saved session, with its token (from the secret store if it is
    /// kept there). `None` when signed out.
    pub async fn session(&self) -> Result<Option<StoredSession>> {
        let Some(mut session) = self.cache.session().await? else { return Ok(None) };
        if session.token == secrets::IN_SECRET_STORE {
            let Some(store) = &self.secrets else { return Ok(None) };
            let key = secrets::key(&session.server, &session.username);
            match secrets::run(store, move |s| s.get(&key)).await {
                Ok(Some(token)) => session.token = token,
                Ok(None) => return Ok(None),
                Err(e) => return Err(Error::Invalid(format!("cannot read the keychain: {e}"))),
            }
        }
        Ok(Some(session))
    }

    /// Saves a new session, its token in the secret store when there is one.
    async fn save_session(&self, mut session: StoredSession) -> Result<()> {
        if let Some(store) = &self.secrets {
            let key = secrets::key(&session.server, &session.username);
            let token = session.token.clone();
            match secrets::run(store, move |s| s.set(&key, &token)).await {
                Ok(()) => session.token = secrets::IN_SECRET_STORE.to_owned(),
                Err(e) => tracing::warn!(%e, "keychain unavailable; keeping the session token in the profile"),
            }
        }
        self.cache.save_session(&session).await
    }

    /// The saved server URL, if any.
    pub async fn server(&self) -> Result<Option<String>> {
        self.cache.meta("server").await
    }

    async fn auth(&self, server: &str, path: &str, username: &str, password: &str) -> Result<()> {
        connection::ws_url(server)?;
        let server = server.trim_end_matches('/').to_owned();
        let username = username.trim().to_lowercase();
        let body = AuthRequest {
            username: username.clone(),
            password: password.to_owned(),
            device: Some(self.device_name.clone().unwrap_or_else(|| format!("Confab on {}", std::env::consts::OS))),
        };
        let http = self.http(Duration::from_secs(30))?;
        let resp = http
            .post(format!("{server}{path}"))
            .json(&body)
            .send()
            .await
            .map_err(|e| Error::Unreachable(format!("{server}: {e}")))?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(match resp.json::<HttpError>().await {
                Ok(err) => Error::Server { code: err.code, message: err.message, retry_after_ms: err.retry_after_ms },
                Err(_) => Error::Protocol(format!("HTTP {status} from {server}")),
            });
        }
        let auth: AuthResponse = resp.json().await.map_err(|e| Error::Protocol(e.to_string()))?;
        self.save_session(StoredSession { server, token: auth.token, user: auth.user, username: auth.username }).await
    }

    /// Creates an account and signs this profile in.
    pub async fn register(&self, server: &str, username: &str, password: &str) -> Result<()> {
        self.auth(server, "/v1/register", username, password).await
    }

    /// Signs this profile in.
    pub async fn login(&self, server: &str, username: &str, password: &str) -> Result<()> {
        self.auth(server, "/v1/login", username, password).await
    }

    /// Revokes this device's session on the server and forgets the token.
    pub async fn logout(&self) -> Result<()> {
        let session = self.session().await?.ok_or(Error::NotSignedIn)?;
        self.stop().await;
        let result = match self.http(Duration::from_secs(15)) {
            Ok(http) => http
                .post(format!("{}/v1/logout", session.server))
                .bearer_auth(&session.token)
                .send()
                .await
                .map_err(|e| Error::Unreachable(e.to_string())),
            Err(e) => Err(e),
        };
        // Forget the token even if the server is unreachable: the user asked
        // to sign out of this device.
        self.cache.clear_token().await?;
        if let Some(store) = &self.secrets {
            let key = secrets::key(&session.server, &session.username);
            if let Err(e) = secrets::run(store, move |s| s.delete(&key)).await {
                tracing::warn!(%e, "could not remove the token from the keychain");
            }
        }
        result?;
        Ok(())
    }

    /// Starts the background tasks: connection, sync and outbox. Idempotent.
    pub async fn start(&self) -> Result<()> {
        self.start_with(true).await
    }

    /// Starts only the connection and the outbox: for a process that sends
    /// and exits (`confab send`) while another process on the same profile
    /// (`confab listen`) is the one that applies and reports incoming events.
    pub async fn start_sending_only(&self) -> Result<()> {
        self.start_with(false).await
    }

    async fn start_with(&self, sync: bool) -> Result<()> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let session = self.session().await?.ok_or(Error::NotSignedIn)?;
        let (calls_tx, calls_rx) = mpsc::channel(16);
        let inner = Arc::new(Inner {
            cache: self.cache.clone(),
            me: session.user,
            link: Mutex::new(None),
            events: self.events.clone(),
            outbox_wakeup: Notify::new(),
            uploads_wakeup: Notify::new(),
            http: files::Http {
                client: self.http(Duration::from_secs(120))?,
                server: session.server.clone(),
                token: session.token.clone(),
            },
            media_dir: self.media_dir(),
            calls: calls_tx,
            synced_generation: Default::default(),
        });
        let (inbound_tx, inbound_rx) = mpsc::channel(4096);
        let (frames_tx, frames_rx) = mpsc::channel(256);
        let (link, mut state, link_task) =
            connection::spawn(session.server.clone(), session.token.clone(), self.link_config(), inbound_tx, frames_tx);
        *inner.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
        let events = self.events.clone();
        let state_task = tokio::spawn(async move {
            loop {
                let s = state.borrow_and_update().clone();
                let _ = events.send(ClientEvent::Connection { state: s });
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
        let incoming = if sync {
            tokio::spawn(sync::run(inner.clone(), inbound_rx))
        } else {
            tokio::spawn(async move {
                let mut inbound_rx = inbound_rx;
                while inbound_rx.recv().await.is_some() {}
            })
        };
        let calls = tokio::spawn(call::manager::run(inner.clone(), self.media.clone(), calls_rx, frames_rx));
        let tasks = vec![
            link_task,
            state_task,
            incoming,
            tokio::spawn(outbox::run(inner.clone())),
            tokio::spawn(files::run(inner.clone())),
            calls,
        ];
        *running = Some(Running { inner, tasks });
        Ok(())
    }

    /// Stops the background tasks (the outbox keeps its entries).
    pub async fn stop(&self) {
        if let Some(running) = self.running.lock().await.take() {
            for t in running.tasks {
                t.abort();
            }
        }
    }

    async fn inner(&self) -> Result<Arc<Inner>> {
        self.running.lock().await.as_ref().map(|r| r.inner.clone()).ok_or(Error::NotSignedIn)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    pub async fn connection_state(&self) -> Result<watch::Receiver<ConnectionState>> {
        Ok(self.inner().await?.link().state())
    }

    /// How many requests this client has sent since it started (heartbeats
    /// aside): what syncing costs, for tests and benchmarks.
    pub async fn requests_sent(&self) -> Result<u64> {
        Ok(self.inner().await?.link().requests_sent())
    }

    /// Waits until connected (or fails after `limit`).
    pub async fn wait_connected(&self, limit: Duration) -> Result<()> {
        self.inner().await?.link().wait_connected(limit).await
    }

    /// Sends a request over the connection, waiting up to the request
    /// timeout for a connection first.
    async fn request(&self, body: RequestBody) -> Result<Reply> {
        let link = self.inner().await?.link();
        link.wait_connected(self.link_config.request_timeout).await?;
        link.request(body).await
    }

    fn conversation_of(reply: Reply) -> Result<ConversationId> {
        match reply {
            Reply::Conversation { conversation } => Ok(conversation.id),
            other => Err(Error::Protocol(format!("expected a conversation, got {other:?}"))),
        }
    }

    /// Opens (or creates) the direct conversation with `username`.
    pub async fn open_direct(&self, username: &str) -> Result<ConversationId> {
        Self::conversation_of(self.request(RequestBody::OpenDirect { username: username.trim().to_lowercase() }).await?)
    }

    pub async fn create_group(&self, name: &str, members: &[String]) -> Result<ConversationId> {
        let members = members.iter().map(|m| m.trim().to_lowercase()).collect();
        Self::conversation_of(self.request(RequestBody::CreateGroup { name: name.to_owned(), members }).await?)
    }

    pub async fn add_member(&self, conversation: ConversationId, username: &str) -> Result<()> {
        self.request(RequestBody::AddMember { conversation, username: username.trim().to_lowercase() }).await.map(drop)
    }

    pub async fn remove_member(&self, conversation: ConversationId, username: &str) -> Result<()> {
        self.request(RequestBody::RemoveMember { conversation, username: username.trim().to_lowercase() })
            .await
            .map(drop)
    }

    pub async fn rename_group(&self, conversation: ConversationId, name: &str) -> Result<()> {
        self.request(RequestBody::RenameGroup { conversation, name: name.to_owned() }).await.map(drop)
    }

    pub async fn set_admin(&self, conversation: ConversationId, username: &str, admin: bool) -> Result<()> {
        let username = username.trim().to_lowercase();
        self.request(RequestBody::SetAdmin { conversation, username, admin }).await.map(drop)
    }

    /// Queues a message: it is saved locally and sent as soon as possible,
    /// surviving restarts. Returns its client id at once.
    pub async fn send(&self, conversation: ConversationId, text: &str) -> Result<ClientId> {
        let ids = self.send_all(conversation, &[text]).await?;
        ids.into_iter().next().ok_or_else(|| Error::Protocol("nothing was queued".into()))
    }

    /// [`Client::send`] for several messages to one conversation, queued in
    /// order in one local transaction (a script piping many lines). Fails,
    /// queueing none, if any text is invalid.
    pub async fn send_all(&self, conversation: ConversationId, texts: &[&str]) -> Result<Vec<ClientId>> {
        for text in texts {
            confab_protocol::validate_text(text).map_err(|code| Error::Invalid(code.describe().to_owned()))?;
        }
        let session = self.cache.session().await?.ok_or(Error::NotSignedIn)?;
        let ids = self.cache.enqueue_all(conversation, session.user, texts).await?;
        for message in self.cache.own_messages(session.user, conversation, &ids).await.unwrap_or_default() {
            let _ = self.events.send(ClientEvent::MessageUpdated { message });
        }
        if let Ok(inner) = self.inner().await {
            inner.outbox_wakeup.notify_one();
        }
        Ok(ids)
    }

    /// Queues a message with files (and an optional caption): each file is
    /// copied into the profile and hashed now, uploaded when the link
    /// allows (resuming where it stopped), and the message is sent once
    /// every file is up. Returns its client id at once.
    pub async fn send_files(&self, conversation: ConversationId, text: &str, paths: &[PathBuf]) -> Result<ClientId> {
        if paths.is_empty() {
            return self.send(conversation, text).await;
        }
        if paths.len() > confab_protocol::media::MAX_ATTACHMENTS {
            let max = confab_protocol::media::MAX_ATTACHMENTS;
            return Err(Error::Invalid(format!("a message carries at most {max} files")));
        }
        if text.chars().count() > confab_protocol::MAX_MESSAGE_CHARS {
            return Err(Error::Invalid(confab_protocol::ErrorCode::MessageTooLong.describe().to_owned()));
        }
        let session = self.cache.session().await?.ok_or(Error::NotSignedIn)?;
        let outgoing = self.profile.join("outgoing");
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            match files::prepare(&outgoing, path, None).await {
                Ok(f) => files.push(f),
                Err(e) => {
                    for f in &files {
                        let _ = std::fs::remove_file(&f.path);
                    }
                    return Err(e);
                }
            }
        }
        let client_id = self.cache.enqueue_files(conversation, session.user, text, &files).await?;
        if let Some(message) = self.cache.own_message(session.user, client_id).await? {
            let _ = self.events.send(ClientEvent::MessageUpdated { message });
        }
        if let Ok(inner) = self.inner().await {
            inner.uploads_wakeup.notify_one();
        }
        Ok(client_id)
    }

    /// Gives up on an own message not yet sent (queued, uploading or
    /// failed): it is removed here, and its unfinished uploads on the
    /// server. `false` if it was already sent.
    pub async fn cancel_send(&self, client_id: ClientId) -> Result<bool> {
        let me = self.cache.session().await?.ok_or(Error::NotSignedIn)?.user;
        let Some(message) = self.cache.own_message(me, client_id).await? else { return Ok(false) };
        let Some(files) = self.cache.discard_unsent(client_id).await? else { return Ok(false) };
        let http = self.files_http().await.ok();
        for f in files {
            let _ = tokio::fs::remove_file(&f.path).await;
            if let (Some(http), Some(url)) = (&http, &f.upload_url) {
                let url = if url.starts_with("http") { url.clone() } else { format!("{}{url}", http.server) };
                let req = http.client.delete(url).bearer_auth(&http.token).header("tus-resumable", "1.0.0");
                if let Err(e) = req.send().await {
                    tracing::debug!(%e, "cannot cancel the upload on the server; it expires there");
                }
            }
        }
        let _ = self.events.send(ClientEvent::MessageRemoved { conversation: message.conversation, id: message.id });
        Ok(true)
    }

    /// A file (or its thumbnail) of a message, from the media cache or
    /// downloaded into it: the path of the local copy.
    pub async fn media(&self, hash: &str, thumbnail: bool) -> Result<PathBuf> {
        let key = format!("{hash}{}", if thumbnail { ".thumb" } else { "" });
        let lock = {
            let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(key).or_default().clone()
        };
        let _one = lock.lock().await;
        let http = self.files_http().await?;
        files::fetch(&self.cache, &http, &self.media_dir(), hash, thumbnail, self.media_cap).await
    }

    /// Searches this device's cache: instant, offline, over every message
    /// it holds (read or not). Newest first.
    pub async fn search(
        &self,
        query: &str,
        conversation: Option<ConversationId>,
        limit: u32,
    ) -> Result<Vec<SearchResult>> {
        if query.chars().count() > confab_protocol::media::MAX_QUERY_CHARS {
            return Err(Error::Invalid("the search is too long".into()));
        }
        self.cache.search(query, conversation, None, limit).await
    }

    /// Searches the server's copy of the user's conversations: history
    /// this device never downloaded. Newest first, `ts < before`; the flag
    /// says whether more hits follow.
    pub async fn search_server(
        &self,
        query: &str,
        conversation: Option<ConversationId>,
        before: Option<confab_protocol::Millis>,
        limit: u32,
    ) -> Result<(Vec<SearchResult>, bool)> {
        let reply = self.request(RequestBody::Search { query: query.to_owned(), conversation, before, limit }).await?;
        let Reply::Search { hits, has_more } = reply else {
            return Err(Error::Protocol("expected search results".into()));
        };
        let mut out = Vec::with_capacity(hits.len());
        for h in hits {
            let local = self.cache.message_by_seq_id(h.conversation, h.seq).await?;
            out.push(SearchResult {
                conversation: h.conversation,
                seq: Some(h.seq),
                local_id: local,
                sender: h.sender,
                sender_name: self.cache.username(h.sender).await?.unwrap_or_default(),
                ts: h.ts,
                snippet: h.snippet,
                on_device: local.is_some(),
            });
        }
        Ok((out, has_more))
    }

    /// Puts a failed message back in the outbox.
    pub async fn retry(&self, client_id: ClientId) -> Result<bool> {
        let queued = self.cache.retry(client_id).await?;
        if let Ok(inner) = self.inner().await {
            inner.outbox_wakeup.notify_one();
            inner.uploads_wakeup.notify_one();
        }
        Ok(queued)
    }

    /// Waits until each message has left the outbox: accepted or refused.
    pub async fn wait_sent(&self, ids: &[ClientId]) -> Result<Vec<SendOutcome>> {
        let mut events = self.subscribe();
        let mut out = Vec::with_capacity(ids.len());
        // The outbox is FIFO, so messages settle in order: resume checking
        // from the first unsettled one.
        while out.len() < ids.len() {
            let id = ids[out.len()];
            let state = self.cache.send_state(id).await?;
            let settled = match state {
                None => return Err(Error::Invalid(format!("unknown message {id}"))),
                Some((status, _, Some(err))) if status == "failed" => Some(SendOutcome::Failed(err)),
                Some((status, Some(seq), _)) if status != "queued" && status != "failed" => {
                    Some(SendOutcome::Sent { seq })
                }
                Some(_) => None,
            };
            match settled {
                Some(outcome) => out.push(outcome),
                // Re-check on the next event, or after a while regardless.
                None => {
                    let _ = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
                }
            }
        }
        Ok(out)
    }

    pub async fn outbox_len(&self) -> Result<i64> {
        self.cache.outbox_len().await
    }

    pub async fn edit(&self, conversation: ConversationId, seq: i64, text: &str) -> Result<()> {
        self.request(RequestBody::Edit { conversation, seq, text: text.to_owned() }).await.map(drop)
    }

    pub async fn delete(&self, conversation: ConversationId, seq: i64) -> Result<()> {
        self.request(RequestBody::Delete { conversation, seq }).await.map(drop)
    }

    pub async fn react(&self, conversation: ConversationId, seq: i64, emoji: &str, add: bool) -> Result<()> {
        self.request(RequestBody::React { conversation, seq, emoji: emoji.to_owned(), add }).await.map(drop)
    }

    pub async fn pin(&self, conversation: ConversationId, seq: i64, pinned: bool) -> Result<()> {
        self.request(RequestBody::Pin { conversation, seq, pinned }).await.map(drop)
    }

    /// Marks messages up to `seq` as read.
    pub async fn mark_read(&self, conversation: ConversationId, seq: i64) -> Result<()> {
        self.request(RequestBody::Read { conversation, seq }).await?;
        // Committed: count it read here now, not when the coalesced frame
        // comes back (the version held stays, so a sync still checks).
        let inner = self.inner().await?;
        let mark = confab_protocol::Watermark { user: inner.me, delivered_seq: seq, read_seq: seq };
        inner.cache.apply_watermarks(conversation, &[mark], crate::cache::MarksVersion::Unchanged).await?;
        Ok(())
    }

    /// This account's signed-in devices (the current one marked).
    pub async fn sessions(&self) -> Result<Vec<confab_protocol::DeviceSession>> {
        match self.request(RequestBody::Sessions {}).await? {
            Reply::Sessions { sessions } => Ok(sessions),
            other => Err(Error::Protocol(format!("expected sessions, got {other:?}"))),
        }
    }

    /// Signs another of this account's devices out.
    pub async fn revoke_session(&self, session: uuid::Uuid) -> Result<()> {
        self.request(RequestBody::RevokeSession { session }).await.map(drop)
    }

    /// Signs out every other device of this account.
    pub async fn revoke_other_sessions(&self) -> Result<()> {
        self.request(RequestBody::RevokeOtherSessions {}).await.map(drop)
    }

    async fn call_command<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> call::manager::Command,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner().await?.calls.send(make(tx)).await.map_err(|_| Error::Invalid("calls are not running".into()))?;
        rx.await.map_err(|_| Error::Invalid("calls are not running".into()))
    }

    /// Calls the other member of a direct conversation. Progress comes as
    /// [`ClientEvent::Call`]; a busy callee ends it with `busy` at once.
    pub async fn call(&self, conversation: ConversationId, video: bool) -> Result<confab_protocol::CallId> {
        self.call_command(|reply| call::manager::Command::Dial { conversation, video, reply }).await?
    }

    /// Takes the call ringing on this device.
    pub async fn accept_call(&self, call: confab_protocol::CallId) -> Result<()> {
        self.call_command(|reply| call::manager::Command::Accept { call, reply }).await?
    }

    /// Declines the call ringing on this device (all devices stop ringing).
    pub async fn decline_call(&self, call: confab_protocol::CallId) -> Result<()> {
        self.call_command(|reply| call::manager::Command::Decline { call, reply }).await?
    }

    /// Cancels (while it rings) or hangs up this device's call.
    pub async fn hang_up(&self, call: confab_protocol::CallId) -> Result<()> {
        self.call_command(|reply| call::manager::Command::HangUp { call, reply }).await?
    }

    /// Mutes or unmutes this device's microphone in its call.
    pub async fn set_call_muted(&self, call: confab_protocol::CallId, muted: bool) -> Result<()> {
        self.call_command(|reply| call::manager::Command::Mute { call, muted, reply }).await?
    }

    /// This device's call, if any (the last one, once ended).
    pub async fn current_call(&self) -> Result<Option<CallView>> {
        self.call_command(|reply| call::manager::Command::Current { reply }).await
    }

    /// Tells the others this user is typing (throttled by the server).
    pub async fn typing(&self, conversation: ConversationId) -> Result<()> {
        self.inner().await?.link().send_and_forget(RequestBody::Typing { conversation });
        Ok(())
    }

    /// Conversations from the cache, most recent first.
    pub async fn conversations(&self) -> Result<Vec<ConversationSummary>> {
        let me = self.cache.session().await?.ok_or(Error::NotSignedIn)?.user;
        self.cache.conversations(me).await
    }

    /// Unread messages in all conversations (without loading the list).
    pub async fn unread_total(&self) -> Result<i64> {
        let me = self.cache.session().await?.ok_or(Error::NotSignedIn)?.user;
        self.cache.unread_total(me).await
    }

    /// One conversation's summary (without loading the whole list).
    pub async fn conversation(&self, conversation: ConversationId) -> Result<Option<ConversationSummary>> {
        let me = self.cache.session().await?.ok_or(Error::NotSignedIn)?.user;
        self.cache.conversation(me, conversation).await
    }

    /// A user's name, as far as this device knows it.
    pub async fn username(&self, user: UserId) -> Result<Option<String>> {
        self.cache.username(user).await
    }

    /// One of this account's own messages, by the client id `send` gave.
    pub async fn own_message(&self, client_id: ClientId) -> Result<Option<ChatMessage>> {
        let me = self.cache.session().await?.ok_or(Error::NotSignedIn)?.user;
        self.cache.own_message(me, client_id).await
    }

    /// A page of history, oldest first: the newest `limit` messages before
    /// `before` (plus unsent ones when `before` is `None`). Served from the
    /// cache; when the cache runs out and the server is reachable, older
    /// messages are fetched, cached, and served.
    pub async fn history(
        &self,
        conversation: ConversationId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>> {
        let me = self.cache.session().await?.ok_or(Error::NotSignedIn)?.user;
        loop {
            let page = self.cache.messages(me, conversation, before, limit).await?;
            let have = page.iter().filter(|m| m.seq.is_some()).count() as u32;
            let oldest = self.cache.oldest_seq(conversation).await?;
            // The cache holds a contiguous run of the newest messages, so it
            // is complete once it reaches seq 1.
            let more_on_server = oldest.is_none_or(|s| s > 1);
            let online = match self.inner().await {
                Ok(inner) => inner.link().is_connected(),
                Err(_) => false,
            };
            if have >= limit || !more_on_server || !online {
                return Ok(page);
            }
            let (from, want) = match (before, oldest) {
                (Some(b), Some(o)) if b > o => (Some(o), (limit - have).min(confab_protocol::MAX_PAGE)),
                // Older than anything cached (opening a search hit): fill
                // the gap from the oldest cached message back, so the cache
                // stays one unbroken run.
                (Some(_), Some(o)) => (Some(o), confab_protocol::MAX_PAGE),
                (b, o) => (o.or(b), (limit - have).min(confab_protocol::MAX_PAGE)),
            };
            let reply = self.request(RequestBody::History { conversation, before: from, limit: want }).await?;
            let Reply::Messages { messages, has_more, .. } = reply else {
                return Err(Error::Protocol("expected messages".into()));
            };
            if messages.is_empty() {
                return Ok(page);
            }
            self.cache.store_history(me, conversation, &messages).await?;
            // Storing may have found an own message the server lost (after a
            // restore) and queued it again.
            if let Ok(inner) = self.inner().await {
                inner.outbox_wakeup.notify_one();
            }
            // Every round must move the cache's oldest message back, or this
            // would ask the server for the same page forever.
            let now_oldest = self.cache.oldest_seq(conversation).await?;
            let moved = now_oldest.is_some_and(|n| oldest.is_none_or(|o| n < o));
            if !has_more || !moved {
                return self.cache.messages(me, conversation, before, limit).await;
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.try_lock() {
            if let Some(r) = running.take() {
                for t in r.tasks {
                    t.abort();
                }
            }
        }
    }
}

/// This machine's name, for naming a device's session ("alice-laptop"),
/// where the system tells it.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
