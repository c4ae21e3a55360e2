//! Confab's server: HTTP for accounts, one WebSocket per device for
//! everything else. Every change is committed to the store before anyone is
//! told about it; see `docs/architecture.md`.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = confab_server::Config::new("127.0.0.1:0".parse()?, "/tmp/confab.db".into());
//! let server = confab_server::start(config).await?;
//! println!("listening on http://{}", server.addr);
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod auth;
mod calls;
pub mod cluster;
pub mod epoch;
pub mod error;
pub mod files;
pub mod guard;
pub mod hasher;
pub mod hub;
pub mod ice;
mod locks;
pub mod media;
pub mod push;
pub mod receipts;
pub mod service;
pub mod store;
pub mod thumbs;
pub mod tls;
mod ws;

use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use service::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_http::trace::TraceLayer;

/// Limits and timings; the defaults suit a real deployment.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Sustained requests per second per user, and the burst above it.
    pub requests_per_sec: u32,
    pub request_burst: u32,
    pub max_connections_per_user: usize,
    /// Frames queued per connection before it counts as a slow consumer.
    pub queue_len: usize,
    /// Bytes queued per connection before it counts as a slow consumer
    /// (at least twice the largest frame, so one always fits).
    pub queue_bytes: usize,
    /// A peer that does not take a frame within this long is gone (or
    /// hostile): its connection is closed rather than held forever.
    pub write_timeout: Duration,
    /// Most members a group may have.
    pub max_group_members: usize,
    /// Threads that hash passwords (each keeps one 19 MiB argon2 area),
    /// and how many requests may wait for them before `rate_limited`.
    pub hash_threads: usize,
    pub hash_queue: usize,
    /// Accounts one address may create per hour.
    pub accounts_per_hour: u32,
    /// A device session unused this long expires.
    pub session_ttl: Duration,
    /// A call nobody answers within this long is missed.
    pub call_ring_timeout: Duration,
    /// How long a device that dropped out of an answered call may take to
    /// reconnect and rejoin it.
    pub call_rejoin_grace: Duration,
    /// Take the client's address from `X-Forwarded-For` (only behind a
    /// proxy that sets it).
    pub trust_proxy: bool,
    /// Time allowed for `hello` after connecting.
    pub hello_timeout: Duration,
    /// How often the server pings each socket.
    pub ping_interval: Duration,
    /// A socket silent this long (no frame, no pong) is dropped as dead.
    pub idle_timeout: Duration,
    /// The largest file one may upload.
    pub max_upload_bytes: u64,
    /// Bytes of files (uploaded, plus unfinished uploads) per account.
    pub quota_bytes: u64,
    /// An unfinished upload untouched this long is discarded.
    pub upload_ttl: Duration,
    /// A blob no message carries is removed once its uploader has not
    /// uploaded or attached it for this long.
    pub media_grace: Duration,
    /// On shutdown, how long the node reports itself not ready (so the
    /// load balancer stops sending it connections) before it closes its
    /// sockets, whose clients then reconnect to another node.
    pub drain_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests_per_sec: 50,
            request_burst: 200,
            max_connections_per_user: 10,
            queue_len: 1024,
            queue_bytes: 2 * confab_protocol::MAX_SERVER_FRAME_BYTES,
            write_timeout: Duration::from_secs(10),
            max_group_members: 1000,
            // One per core, up to four: each keeps a 19 MiB area for good.
            hash_threads: std::thread::available_parallelism().map(|n| n.get().min(4)).unwrap_or(2),
            hash_queue: 8,
            accounts_per_hour: 20,
            session_ttl: Duration::from_secs(90 * 24 * 3600),
            call_ring_timeout: Duration::from_secs(45),
            call_rejoin_grace: Duration::from_secs(20),
            trust_proxy: false,
            hello_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_upload_bytes: 100 * 1024 * 1024,
            quota_bytes: 2 * 1024 * 1024 * 1024,
            upload_ttl: Duration::from_secs(24 * 3600),
            media_grace: Duration::from_secs(24 * 3600),
            // A lone server has nobody to hand over to.
            drain_wait: Duration::ZERO,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub limits: Limits,
    /// Start a new store epoch (after restoring a backup by hand).
    pub new_epoch: bool,
    /// Serve https/wss with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// STUN and TURN servers for calls.
    pub ice: ice::IceConfig,
    /// Where attachments are kept; `media/` beside the database if `None`.
    pub media_dir: Option<PathBuf>,
    /// NATS, to fan out through the other nodes on the same database.
    pub nats: Option<String>,
    /// Push providers for waking away devices (each off unless set).
    pub push: push::PushConfig,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    pub fn new(listen: SocketAddr, db: PathBuf) -> Self {
        Config {
            listen,
            db,
            limits: Limits::default(),
            new_epoch: false,
            tls: None,
            ice: ice::IceConfig::default(),
            media_dir: None,
            nats: None,
            push: push::PushConfig::default(),
        }
    }

    /// Whether `db` is a Postgres URL rather than a SQLite file.
    pub fn is_postgres(&self) -> bool {
        self.db.to_str().is_some_and(store::is_postgres_url)
    }

    /// The database, for logs: a Postgres URL without its password.
    pub fn db_display(&self) -> String {
        let db = self.db.to_string_lossy();
        match (self.is_postgres(), db.split_once("://"), db.rfind('@')) {
            (true, Some((scheme, rest)), Some(at)) => match rest[..at - scheme.len() - 3].split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***{}", &db[at..]),
                None => db.into_owned(),
            },
            _ => db.into_owned(),
        }
    }

    /// The media directory in use.
    pub fn media_dir(&self) -> PathBuf {
        match &self.media_dir {
            Some(dir) => dir.clone(),
            None if self.is_postgres() => PathBuf::from("media"),
            None => self.db.parent().unwrap_or(std::path::Path::new(".")).join("media"),
        }
    }
}

/// Largest group size the server can be configured for: a 1000-member
/// `created` event or conversation info is about 200 KB; this keeps the
/// largest one well inside [`confab_protocol::MAX_SERVER_FRAME_BYTES`].
pub const MAX_GROUP_MEMBERS_CEILING: usize = 5000;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub limits: Arc<Limits>,
    pub request_limiter: Arc<DefaultKeyedRateLimiter<confab_protocol::UserId>>,
    pub auth_guard: Arc<guard::AuthGuard>,
    pub hasher: Arc<hasher::Hasher>,
    pub dummy_hash: Arc<str>,
    pub media: Arc<files::Media>,
    /// Shutting down: not ready, no new connections.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// What a node is connected to besides its store.
pub struct Parts {
    pub ice: ice::IceConfig,
    pub blobs: Arc<dyn media::BlobStore>,
    pub cluster: Option<Arc<cluster::Cluster>>,
    pub push: Arc<push::Push>,
}

impl AppState {
    pub async fn new(
        store: Arc<dyn Store>,
        limits: Limits,
        epoch: String,
        log_total: i64,
        parts: Parts,
    ) -> error::Result<Self> {
        let Parts { ice, blobs, cluster, push } = parts;
        let nz = guard::nz;
        let quota = Quota::per_second(nz(limits.requests_per_sec)).allow_burst(nz(limits.request_burst));
        let queue_bytes = limits.queue_bytes.max(2 * confab_protocol::MAX_SERVER_FRAME_BYTES);
        let hub = hub::Hub::new(limits.max_connections_per_user, limits.queue_len, queue_bytes);
        let max_members = limits.max_group_members.clamp(2, MAX_GROUP_MEMBERS_CEILING);
        let hasher = hasher::Hasher::new(limits.hash_threads, limits.hash_queue)
            .map_err(|e| error::ApiError::internal("cannot start the hashing threads", e))?;
        let dummy_hash = auth::make_dummy_hash(&hasher).await?.into();
        Ok(AppState {
            draining: Arc::default(),
            media: Arc::new(files::Media::new(blobs, &limits)),
            hasher: Arc::new(hasher),
            dummy_hash,
            service: Arc::new({
                let service = Service::new(store, hub, max_members, epoch, log_total)
                    .with_call_timeouts(limits.call_ring_timeout, limits.call_rejoin_grace)
                    .with_ice(ice)
                    .with_push(push);
                match cluster {
                    Some(cluster) => service.with_cluster(cluster),
                    None => service,
                }
            }),
            limits: Arc::new(limits.clone()),
            request_limiter: Arc::new(RateLimiter::keyed(quota)),
            auth_guard: Arc::new(guard::AuthGuard::new(limits.accounts_per_hour, limits.trust_proxy)),
        })
    }
}

/// Liveness: the process answers.
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: whether a load balancer should send this node connections:
/// not while it drains, nor while its database does not answer. A NATS
/// link that is down does not make a node unready (its clients are served
/// from the log, late), or every node would leave at once.
async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    let store = state.service.store.meta("epoch").await.is_ok();
    let nats = state.service.cluster.as_ref().map(|c| c.is_connected());
    let ok = !draining && store;
    let status = if ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "ready": ok, "draining": draining, "store": store, "nats": nats });
    (status, Json(body)).into_response()
}

/// The process's metrics recorder. The `metrics` facade is global, so
/// every server in one process (tests) shares it.
pub fn metrics_handle() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
            let installed = builder
                .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("confab_commit_jobs".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                })
                .and_then(|b| b.install_recorder());
            match installed {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(%e, "no metrics: another recorder is installed");
                    None
                }
            }
        })
        .as_ref()
}

/// `GET /metrics`, in Prometheus's text format. Meant for the monitoring
/// network: the load balancer's example config does not forward it.
async fn metrics_endpoint(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(handle) = metrics_handle() else {
        return error::ApiError::from(confab_protocol::ErrorCode::NoSuchEndpoint).into_response();
    };
    if let Some(cluster) = &state.service.cluster {
        metrics::gauge!("confab_fanout_queue_bytes").set(cluster.queued_bytes() as f64);
        metrics::gauge!("confab_nats_connected").set(if cluster.is_connected() { 1.0 } else { 0.0 });
    }
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!("confab_draining").set(if draining { 1.0 } else { 0.0 });
    handle.run_upkeep();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// The largest HTTP request body (register, login): a username, a password
/// and a device name.
pub const MAX_HTTP_BODY: usize = 16 * 1024;

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    // Bodies are small; the extractor refuses a larger one with a JSON
    // `frame_too_large` (413) before reading it all.
    let http = Router::new()
        .route("/v1/register", post(auth::register))
        .route("/v1/login", post(auth::login))
        .route("/v1/logout", post(auth::logout))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_HTTP_BODY));
    // Upload bodies stream to disk as they come (never whole in memory);
    // their size is bounded by Upload-Length.
    let files = Router::new()
        .route("/v1/uploads", post(files::create).options(files::options))
        .route("/v1/uploads/{id}", axum::routing::head(files::head).patch(files::patch).delete(files::terminate))
        .route("/v1/media/{hash}", get(files::download))
        .route("/v1/media/{hash}/thumbnail", get(files::thumbnail))
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .merge(http)
        .merge(files)
        .route("/v1/health", get(health))
        .route("/v1/live", get(health))
        .route("/v1/ready", get(ready))
        .route("/metrics", get(metrics_endpoint))
        .route("/v1/ws", get(ws::upgrade))
        .fallback(|| async { error::ApiError::from(confab_protocol::ErrorCode::NoSuchEndpoint) })
        .method_not_allowed_fallback(|| async { error::ApiError::from(confab_protocol::ErrorCode::MethodNotAllowed) })
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Stops accepting, closes every socket with 1001 and waits for the
    /// server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Resolves when the server stops by itself (an accept error).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    pub fn stop_handle(&mut self) -> Option<oneshot::Sender<()>> {
        self.stop.take()
    }
}

/// Opens the database, binds `config.listen` and serves in the background.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    if config.is_postgres() && config.media_dir.is_none() {
        anyhow::bail!("with a Postgres database, say where attachments go (--media-dir, shared by every node)");
    }
    let store = store::open(&config.db.to_string_lossy())
        .await
        .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", config.db_display()))?;
    // The sidecar that detects a restored SQLite file sits beside it; a
    // shared database has none (restore it with `--new-epoch`).
    let sidecar = (!config.is_postgres()).then(|| Arc::new(epoch::Sidecar::new(&config.db)));
    let (epoch, log_total) =
        epoch::establish(&*store, sidecar.as_ref().map(|_| config.db.as_path()), config.new_epoch).await?;
    let media_dir = config.media_dir();
    let blobs = media::DiskBlobStore::open(&media_dir)
        .map_err(|e| anyhow::anyhow!("cannot open the media directory {}: {e}", media_dir.display()))?;
    let cluster = match &config.nats {
        Some(url) => {
            if !config.is_postgres() {
                anyhow::bail!("--nats joins nodes that share one database: it needs --db postgres://…");
            }
            Some(cluster::Cluster::connect(url).await.map_err(|e| anyhow::anyhow!("cannot reach NATS at {url}: {e}"))?)
        }
        None => None,
    };
    let push = Arc::new(push::Push::new(config.push.clone())?);
    let parts = Parts { ice: config.ice, blobs: Arc::new(blobs), cluster, push: push.clone() };
    let state = AppState::new(store, config.limits, epoch, log_total, parts).await?;
    let pusher =
        tokio::spawn(push::run(push, state.service.store.clone(), state.service.clone() as Arc<dyn push::Devices>));
    let bus = tokio::spawn(cluster::run(state.service.clone() as Arc<dyn cluster::Node>));
    let tls = match &config.tls {
        Some(t) => Some(tls::server_config(&t.cert, &t.key)?),
        None => None,
    };
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let router = app(state.clone());
    let service = state.service.clone();
    let (draining, drain_wait) = (state.draining.clone(), state.limits.drain_wait);
    metrics_handle();
    // Keep the sidecar's count of the log fresh, so a database restored
    // from an older copy is noticed at the next start.
    let recorder = {
        let service = service.clone();
        let sidecar = sidecar.clone();
        tokio::spawn(async move {
            let Some(sidecar) = sidecar else { return };
            let mut recorded = -1;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let total = service.log_total.load(std::sync::atomic::Ordering::Relaxed);
                if total == recorded {
                    continue;
                }
                match sidecar.record(&service.epoch, total).await {
                    Ok(()) => recorded = total,
                    Err(e) => tracing::warn!(%e, "cannot update the epoch sidecar"),
                }
            }
        })
    };
    // Forget rate-limit keys that have recovered, so junk names and
    // one-off addresses cost no lasting memory.
    // Committed receipts go out coalesced.
    let receipts = {
        let service = state.service.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(receipts::FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                service.flush_receipts().await;
            }
        })
    };
    // Stale uploads and blobs no message needs any more go.
    let sweeper = {
        let (media, store) = (state.media.clone(), state.service.store.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(600)).await;
                match media.sweep(&store).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(n, "removed media no message refers to"),
                    Err(e) => tracing::warn!(%e, "cannot sweep media"),
                }
            }
        })
    };
    // Calls that rang too long become missed calls.
    let ringer = {
        let service = state.service.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                service.expire_calls().await;
            }
        })
    };
    // Also expire device sessions unused for the configured time.
    let pruner = {
        let guard = state.auth_guard.clone();
        let (store, ttl) = (state.service.store.clone(), state.limits.session_ttl.as_millis() as i64);
        let service = state.service.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                guard.prune();
                match store.expire_sessions(store::now_ms() - ttl).await {
                    Ok(expired) => {
                        if !expired.is_empty() {
                            tracing::info!(n = expired.len(), "expired idle sessions");
                        }
                        service.kick_sessions(&expired);
                    }
                    Err(e) => tracing::warn!(%e, "cannot expire sessions"),
                }
            }
        })
    };
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
            // Not ready: the load balancer moves new connections elsewhere,
            // then the sockets here close and their clients follow.
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
            if !drain_wait.is_zero() {
                tracing::info!(seconds = drain_wait.as_secs_f64(), "draining");
                tokio::time::sleep(drain_wait).await;
            }
            pruner.abort();
            pusher.abort();
            bus.abort();
            sweeper.abort();
            ringer.abort();
            receipts.abort();
            // The other nodes stop counting this one's connections, whose
            // clients are about to reconnect to them.
            if let Some(cluster) = &service.cluster {
                cluster.leave().await;
            }
            // Upgraded sockets are not tracked by the HTTP server's graceful
            // shutdown; tell them ourselves.
            service.hub.kick_all();
            recorder.abort();
            let total = service.log_total.load(std::sync::atomic::Ordering::Relaxed);
            if let Some(sidecar) = &sidecar {
                if let Err(e) = sidecar.record(&service.epoch, total).await {
                    tracing::warn!(%e, "cannot update the epoch sidecar");
                }
            }
        };
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        match tls {
            Some(config) => {
                // tap_io adds nothing here but the connect-info plumbing.
                let listener = tls::TlsListener::new(listener, config)?.tap_io(|_| {});
                axum::serve(listener, app).with_graceful_shutdown(shutdown).await
            }
            None => {
                // Chat frames are small and latency-bound: no Nagle delay.
                let listener = listener.tap_io(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(%e, "cannot set TCP_NODELAY");
                    }
                });
                axum::serve(listener, app).with_graceful_shutdown(shutdown).await
            }
        }
    });
    Ok(Server { addr, state, stop: Some(stop), task })
}
