//! `confab-server [--listen ADDR] [--db PATH | --db postgres://…]`

use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Parser)]
#[command(
    name = "confab-server",
    version,
    about = "Confab chat server (WebSocket + HTTP, embedded SQLite or Postgres)"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "CONFAB_LISTEN", default_value = "127.0.0.1:7313")]
    listen: SocketAddr,
    /// SQLite database file, created on first start; or a Postgres URL
    /// (`postgres://user@host/db`) that several nodes share.
    #[arg(long, env = "CONFAB_DB")]
    db: Option<PathBuf>,
    /// Sustained requests per second allowed per user.
    #[arg(long, default_value_t = 50)]
    rate_limit: u32,
    /// Burst of requests allowed per user above the sustained rate.
    #[arg(long, default_value_t = 200)]
    rate_burst: u32,
    /// Simultaneous connections allowed per user.
    #[arg(long, default_value_t = 10)]
    max_connections: usize,
    /// Most members a group may have (at most 5000).
    #[arg(long, default_value_t = 1000)]
    max_group_members: usize,
    /// Accounts one address may create per hour.
    #[arg(long, default_value_t = 20)]
    accounts_per_hour: u32,
    /// Threads hashing passwords (default: one per core, up to 4); each
    /// keeps a 19 MiB argon2 area.
    #[arg(long)]
    hash_threads: Option<usize>,
    /// Days a device session may go unused before it expires.
    #[arg(long, default_value_t = 90)]
    session_days: u64,
    /// Take client addresses from X-Forwarded-For: only behind a reverse
    /// proxy that sets it (otherwise anyone could claim any address).
    #[arg(long)]
    trust_proxy: bool,
    /// Serve https/wss with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "CONFAB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "CONFAB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A STUN server for calls (`stun:host:port`); repeatable.
    #[arg(long)]
    stun: Vec<String>,
    /// A TURN server for calls (`turn:host:port?transport=udp`); repeatable,
    /// used with --turn-secret (coturn's use-auth-secret).
    #[arg(long, requires = "turn_secret")]
    turn: Vec<String>,
    /// The secret shared with the TURN server (coturn's static-auth-secret).
    #[arg(long, env = "CONFAB_TURN_SECRET")]
    turn_secret: Option<String>,
    /// How long a call rings before it is missed, in seconds.
    #[arg(long, default_value_t = 45, value_parser = clap::value_parser!(u64).range(1..=600))]
    call_ring_seconds: u64,
    /// How long a device that dropped out of an answered call may take to
    /// reconnect and rejoin it, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    call_rejoin_seconds: u64,
    /// Where attachments are kept (default: `media/` beside a SQLite
    /// database; required with Postgres, and shared by every node).
    #[arg(long, env = "CONFAB_MEDIA_DIR")]
    media_dir: Option<PathBuf>,
    /// On SIGTERM, seconds to report not-ready before closing sockets, so
    /// a load balancer moves clients to other nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=600))]
    drain_seconds: u64,
    /// How to write logs (to stderr): `text` for people, `json` (one
    /// object per line) for a log shipper.
    #[arg(long, env = "CONFAB_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// NATS server (`nats://host:4222`) through which nodes sharing one
    /// Postgres database fan events out to each other's clients.
    #[arg(long, env = "CONFAB_NATS")]
    nats: Option<String>,
    /// The largest file one may upload, in MiB.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_upload_mb: u64,
    /// Storage per account for files, in MiB.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    quota_mb: u64,
    /// Start a new store epoch: use after restoring the database from a
    /// backup, so every client syncs from scratch.
    #[arg(long)]
    new_epoch: bool,
    /// Wake Android devices through FCM: the Firebase service account's
    /// JSON key file.
    #[arg(long, env = "CONFAB_FCM_SERVICE_ACCOUNT", help_heading = "Push")]
    fcm_service_account: Option<PathBuf>,
    /// FCM's address (only to test against a stand-in).
    #[arg(long, default_value = confab_server::push::fcm::DEFAULT_URL, hide = true)]
    fcm_url: String,
    /// Wake iOS devices through APNs: the signing key (AuthKey_….p8);
    /// needs --apns-key-id, --apns-team-id and --apns-topic.
    #[arg(long, env = "CONFAB_APNS_KEY", requires_all = ["apns_key_id", "apns_team_id", "apns_topic"], help_heading = "Push")]
    apns_key: Option<PathBuf>,
    /// The APNs key's id (10 characters, from the developer account).
    #[arg(long, env = "CONFAB_APNS_KEY_ID", help_heading = "Push")]
    apns_key_id: Option<String>,
    /// The Apple developer team id.
    #[arg(long, env = "CONFAB_APNS_TEAM_ID", help_heading = "Push")]
    apns_team_id: Option<String>,
    /// The iOS app's bundle id (VoIP pushes go to `<topic>.voip`).
    #[arg(long, env = "CONFAB_APNS_TOPIC", help_heading = "Push")]
    apns_topic: Option<String>,
    /// APNs' address for both environments (only to test against a stand-in).
    #[arg(long, hide = true)]
    apns_url: Option<String>,
    /// Wake UnifiedPush devices: this server's VAPID key (P-256, PKCS #8
    /// PEM: `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`);
    /// needs --vapid-subject.
    #[arg(long, env = "CONFAB_VAPID_KEY", requires = "vapid_subject", help_heading = "Push")]
    vapid_key: Option<PathBuf>,
    /// Who runs this server, for push services: `mailto:ops@example.com`.
    #[arg(long, env = "CONFAB_VAPID_SUBJECT", help_heading = "Push")]
    vapid_subject: Option<String>,
    /// Let UnifiedPush endpoints be private addresses and plain http (a
    /// distributor on the local network).
    #[arg(long, help_heading = "Push")]
    unifiedpush_allow_private: bool,
    /// A CA certificate (PEM) push requests trust besides the public roots.
    #[arg(long, env = "CONFAB_PUSH_CA", help_heading = "Push")]
    push_ca: Option<PathBuf>,
}

fn default_db() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("confab-server").join("confab.db")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn,sqlx=warn,async_nats=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        // One JSON object per line, for a log shipper.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let mut config = confab_server::Config::new(args.listen, args.db.unwrap_or_else(default_db));
    config.limits.requests_per_sec = args.rate_limit;
    config.limits.request_burst = args.rate_burst;
    config.limits.max_connections_per_user = args.max_connections;
    config.limits.max_group_members = args.max_group_members;
    config.new_epoch = args.new_epoch;
    config.media_dir = args.media_dir;
    config.nats = args.nats;
    config.limits.drain_wait = std::time::Duration::from_secs(args.drain_seconds);
    config.limits.max_upload_bytes = args.max_upload_mb * 1024 * 1024;
    config.limits.quota_bytes = args.quota_mb * 1024 * 1024;
    config.limits.accounts_per_hour = args.accounts_per_hour;
    config.limits.trust_proxy = args.trust_proxy;
    config.limits.call_ring_timeout = std::time::Duration::from_secs(args.call_ring_seconds);
    config.limits.call_rejoin_grace = std::time::Duration::from_secs(args.call_rejoin_seconds);
    if let Some(n) = args.hash_threads {
        config.limits.hash_threads = n.clamp(1, 64);
    }
    config.limits.session_ttl = std::time::Duration::from_secs(args.session_days.max(1) * 24 * 3600);
    config.ice = confab_server::ice::IceConfig {
        stun: args.stun,
        turn: args.turn,
        turn_secret: args.turn_secret,
        turn_ttl: std::time::Duration::from_secs(24 * 3600),
    };
    config.push.fcm = args
        .fcm_service_account
        .map(|service_account| confab_server::push::fcm::FcmConfig { service_account, url: args.fcm_url });
    if let (Some(key), Some(key_id), Some(team_id), Some(topic)) =
        (args.apns_key, args.apns_key_id, args.apns_team_id, args.apns_topic)
    {
        config.push.apns =
            Some(confab_server::push::apns::ApnsConfig { key, key_id, team_id, topic, url: args.apns_url });
    }
    if let (Some(vapid_key), Some(subject)) = (args.vapid_key, args.vapid_subject) {
        config.push.webpush = Some(confab_server::push::webpush::WebPushConfig {
            vapid_key,
            subject,
            allow_private: args.unifiedpush_allow_private,
        });
    }
    config.push.extra_root = args.push_ca;
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(confab_server::TlsFiles { cert, key });
    }
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    tracing::info!(db = %config.db_display(), media = %config.media_dir().display(), "starting");
    let mut server = confab_server::start(config).await?;
    // Scripts and tests wait for this exact line to learn the real port.
    println!("listening on {scheme}://{}", server.addr);
    std::io::stdout().flush()?;
    let stop = server.stop_handle();
    tokio::select! {
        r = server.wait() => r?,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            if let Some(stop) = stop { let _ = stop.send(()); }
            server.wait().await?;
        }
    }
    Ok(())
}
