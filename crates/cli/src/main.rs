//! `confab`: the command line on the client core, for scripting, bots and
//! black-box tests. Its surface is a contract; see `confab --help`.

mod call;
mod output;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use confab_core::{Client, ClientEvent, ConnectionState, Error as CoreError, SendOutcome};
use confab_protocol::{ConversationId, ErrorCode};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_SERVER: &str = "http://127.0.0.1:7313";

#[derive(Parser)]
#[command(name = "confab", version, about = "Confab chat from the command line")]
struct Cli {
    /// Profile directory: session, cache and outbox.
    #[arg(long, global = true, env = "CONFAB_PROFILE")]
    profile: Option<PathBuf>,
    /// Server URL (default: the one this profile signed in to, else http://127.0.0.1:7313).
    #[arg(long, global = true, env = "CONFAB_SERVER")]
    server: Option<String>,
    /// Also trust this certificate authority (PEM), for a server with a
    /// private CA or a self-signed certificate.
    #[arg(long, global = true, env = "CONFAB_CA_CERT")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account and sign in (password from CONFAB_PASSWORD, else prompted).
    Register { username: String },
    /// Sign in (password from CONFAB_PASSWORD, else prompted).
    Login { username: String },
    /// Sign this device out.
    Logout,
    /// Open or create the direct conversation with a user; prints its id.
    Dm { username: String },
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Send one message, or one per line of stdin when no text is given.
    /// With --file, one message carrying the files (the text is its
    /// caption); it waits until they are uploaded and the message is sent.
    Send {
        conversation: String,
        text: Vec<String>,
        /// A file to attach; repeatable.
        #[arg(long = "file")]
        files: Vec<PathBuf>,
        /// Print upload progress to stderr.
        #[arg(long)]
        progress: bool,
    },
    /// Send what this profile has queued (messages, unfinished uploads)
    /// and wait until the queue is empty.
    Flush {
        /// Print upload progress to stderr.
        #[arg(long)]
        progress: bool,
    },
    /// Search messages: this device's copy first, then the server's
    /// (history this device never downloaded).
    Search {
        query: Vec<String>,
        /// Only this conversation.
        #[arg(long)]
        conversation: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only what this device holds (works offline).
        #[arg(long)]
        local: bool,
        #[arg(long)]
        json: bool,
    },
    /// Save a message's file (or its thumbnail) by its hash.
    Download {
        hash: String,
        /// Where to write it.
        #[arg(long, short)]
        out: PathBuf,
        #[arg(long)]
        thumbnail: bool,
    },
    /// Stay connected and print incoming events until interrupted.
    Listen {
        #[arg(long)]
        json: bool,
    },
    /// Print a conversation's messages, oldest first.
    History {
        conversation: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// List conversations.
    Conversations {
        #[arg(long)]
        json: bool,
    },
    /// Edit one of your messages.
    Edit { conversation: String, seq: i64, text: Vec<String> },
    /// Delete a message (yours, or any as a group admin).
    Delete { conversation: String, seq: i64 },
    /// Add (or with --remove, remove) a reaction.
    React {
        conversation: String,
        seq: i64,
        emoji: String,
        #[arg(long)]
        remove: bool,
    },
    /// Pin (or with --unpin, unpin) a message.
    Pin {
        conversation: String,
        seq: i64,
        #[arg(long)]
        unpin: bool,
    },
    /// Mark messages as read up to SEQ (default: the newest).
    Read { conversation: String, seq: Option<i64> },
    /// Tell the others you are typing.
    Typing { conversation: String },
    /// Call a user (voice, or video with --video) and stay in the call until
    /// it ends, --for runs out, or Ctrl-C.
    Call {
        username: String,
        #[arg(long)]
        video: bool,
        #[command(flatten)]
        media: call::MediaArgs,
    },
    /// Wait for a call to ring on this device (up to --wait) and take it.
    Answer {
        #[arg(long, default_value = "60s", value_parser = call::parse_wait)]
        wait: Duration,
        #[command(flatten)]
        media: call::MediaArgs,
    },
    /// Wait for a call to ring on this device (up to --wait) and decline it.
    Decline {
        #[arg(long, default_value = "60s", value_parser = call::parse_wait)]
        wait: Duration,
        #[arg(long)]
        json: bool,
    },
    /// List the microphones and speakers calls can use (for --mic, --speaker).
    SoundDevices {
        #[arg(long)]
        json: bool,
    },
    /// List this account's signed-in devices, or sign some out.
    Sessions {
        #[command(subcommand)]
        action: Option<SessionsCommand>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Sign one device out (its id from `confab sessions`).
    Revoke { session: String },
    /// Sign out every device but this one.
    RevokeOthers,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group with you as admin; prints its id.
    Create {
        name: String,
        members: Vec<String>,
    },
    Add {
        conversation: String,
        username: String,
    },
    Remove {
        conversation: String,
        username: String,
    },
    Rename {
        conversation: String,
        name: String,
    },
}

fn default_profile() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("confab")
}

fn conversation_id(s: &str) -> anyhow::Result<ConversationId> {
    s.trim().parse().map_err(|_| anyhow!("`{s}` is not a conversation id (see `confab dm` or `confab conversations`)"))
}

fn password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("CONFAB_PASSWORD") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: set CONFAB_PASSWORD or run in a terminal");
    }
    rpassword::prompt_password("Password: ").context("cannot read the password")
}

/// A person-readable sentence for a core error.
fn explain(err: &CoreError) -> String {
    match err {
        CoreError::Server { code: ErrorCode::InvalidToken, .. } => {
            "your session has expired or was signed out; run `confab login`".into()
        }
        CoreError::Server { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CONFAB_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let msg = match e.downcast_ref::<CoreError>() {
                Some(core) => explain(core),
                None => format!("{e:#}"),
            };
            eprintln!("confab: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let profile = cli.profile.unwrap_or_else(default_profile);
    let mut client =
        Client::open(&profile).await.with_context(|| format!("cannot open profile {}", profile.display()))?;
    let host = confab_core::host_name().unwrap_or_else(|| std::env::consts::OS.to_owned());
    client = client.with_device_name(format!("confab CLI on {host}"));
    if let Some(path) = &cli.ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        client = client.with_ca_cert(&pem)?;
    }
    let server = match cli.server {
        Some(s) => s,
        None => client.server().await?.unwrap_or_else(|| DEFAULT_SERVER.into()),
    };
    match cli.command {
        Command::SoundDevices { json } => return call::sound_devices(json),
        Command::Call { username, video, media } => return call::call(client, &username, video, media).await,
        Command::Answer { wait, media } => return call::answer(client, wait, media).await,
        Command::Decline { wait, json } => return call::decline(client, wait, json).await,
        Command::Register { username } => {
            let pw = password()?;
            client.register(&server, &username, &pw).await?;
            eprintln!("registered and signed in as {} on {server}", username.to_lowercase());
        }
        Command::Login { username } => {
            let pw = password()?;
            client.login(&server, &username, &pw).await?;
            eprintln!("signed in as {} on {server}", username.to_lowercase());
        }
        Command::Logout => {
            client.logout().await?;
            eprintln!("signed out");
        }
        Command::Dm { username } => {
            start(&client).await?;
            output::line(&client.open_direct(&username).await?.to_string());
        }
        Command::Group(cmd) => {
            start(&client).await?;
            match cmd {
                GroupCommand::Create { name, members } => {
                    output::line(&client.create_group(&name, &members).await?.to_string())
                }
                GroupCommand::Add { conversation, username } => {
                    client.add_member(conversation_id(&conversation)?, &username).await?
                }
                GroupCommand::Remove { conversation, username } => {
                    client.remove_member(conversation_id(&conversation)?, &username).await?
                }
                GroupCommand::Rename { conversation, name } => {
                    client.rename_group(conversation_id(&conversation)?, &name).await?
                }
            }
        }
        Command::Send { conversation, text, files, progress } if !files.is_empty() => {
            return send_files(&client, conversation_id(&conversation)?, text.join(" "), files, progress).await
        }
        Command::Send { conversation, text, .. } => return send(&client, conversation_id(&conversation)?, text).await,
        Command::Flush { progress } => return flush(&client, progress).await,
        Command::Search { query, conversation, limit, local, json } => {
            let conversation = conversation.as_deref().map(conversation_id).transpose()?;
            search(&client, &query.join(" "), conversation, limit, local, json).await?
        }
        Command::Download { hash, out, thumbnail } => {
            let path = client.media(&hash, thumbnail).await?;
            std::fs::copy(&path, &out).with_context(|| format!("cannot write {}", out.display()))?;
        }
        Command::Listen { json } => listen(&client, json).await?,
        Command::History { conversation, json, limit } => {
            history(&client, conversation_id(&conversation)?, json, limit).await?
        }
        Command::Conversations { json } => {
            start_and_sync(&client).await?;
            for c in client.conversations().await? {
                output::conversation(&c, json);
            }
        }
        Command::Edit { conversation, seq, text } => {
            start(&client).await?;
            client.edit(conversation_id(&conversation)?, seq, &text.join(" ")).await?;
        }
        Command::Delete { conversation, seq } => {
            start(&client).await?;
            client.delete(conversation_id(&conversation)?, seq).await?;
        }
        Command::React { conversation, seq, emoji, remove } => {
            start(&client).await?;
            client.react(conversation_id(&conversation)?, seq, &emoji, !remove).await?;
        }
        Command::Pin { conversation, seq, unpin } => {
            start(&client).await?;
            client.pin(conversation_id(&conversation)?, seq, !unpin).await?;
        }
        Command::Read { conversation, seq } => {
            let conversation = conversation_id(&conversation)?;
            start_and_sync(&client).await?;
            let seq = match seq {
                Some(s) => s,
                None => client.history(conversation, None, 1).await?.iter().filter_map(|m| m.seq).max().unwrap_or(0),
            };
            client.mark_read(conversation, seq).await?;
        }
        Command::Sessions { action, json } => {
            start(&client).await?;
            match action {
                None => {
                    for session in client.sessions().await? {
                        output::session(&session, json);
                    }
                }
                Some(SessionsCommand::Revoke { session }) => {
                    let id = session.trim().parse().map_err(|_| anyhow!("`{session}` is not a session id"))?;
                    client.revoke_session(id).await?;
                    eprintln!("signed that device out");
                }
                Some(SessionsCommand::RevokeOthers) => {
                    client.revoke_other_sessions().await?;
                    eprintln!("signed out every other device");
                }
            }
        }
        Command::Typing { conversation } => {
            start(&client).await?;
            client.wait_connected(Duration::from_secs(20)).await?;
            client.typing(conversation_id(&conversation)?).await?;
            // Give the frame a moment to leave before the process exits.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    client.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn start(client: &Client) -> anyhow::Result<()> {
    client.start().await.map_err(|e| match e {
        CoreError::NotSignedIn => anyhow!("not signed in: run `confab register` or `confab login` first"),
        e => e.into(),
    })
}

/// Starts and waits for the first sync, so the cache is fresh. When the
/// server cannot be reached (the first attempt fails), the cache is used as
/// it is, at once.
async fn start_and_sync(client: &Client) -> anyhow::Result<bool> {
    enum Outcome {
        Synced,
        Offline,
        SignedOut,
    }
    let mut events = client.subscribe();
    start(client).await?;
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Ok(ClientEvent::SyncCompleted) => return Outcome::Synced,
                Ok(ClientEvent::Connection { state: ConnectionState::SignedOut }) => return Outcome::SignedOut,
                Ok(ClientEvent::Connection { state: ConnectionState::Offline { .. } }) => return Outcome::Offline,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return Outcome::Offline,
            }
        }
    })
    .await
    .unwrap_or(Outcome::Offline);
    match outcome {
        Outcome::Synced => Ok(true),
        Outcome::SignedOut => bail!("your session has expired or was signed out; run `confab login`"),
        Outcome::Offline => {
            eprintln!("confab: offline; showing what this device has cached");
            Ok(false)
        }
    }
}

async fn send(client: &Client, conversation: ConversationId, text: Vec<String>) -> anyhow::Result<ExitCode> {
    // Only send: a `listen` on this profile is the one that applies and
    // prints what arrives.
    client.start_sending_only().await.map_err(|e| match e {
        CoreError::NotSignedIn => anyhow!("not signed in: run `confab register` or `confab login` first"),
        e => e.into(),
    })?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<std::io::Result<String>>(256);
    if text.is_empty() {
        // stdin is read on its own thread; each line is persisted as soon as
        // it is read, so a kill mid-stream loses nothing that was read.
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if lines_tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
    } else {
        lines_tx.send(Ok(text.join(" "))).await.ok();
        drop(lines_tx);
    }
    let mut ids = Vec::new();
    let mut failed = 0;
    // What has been read so far is queued at once, in one local commit.
    let mut chunk = Vec::new();
    while lines.recv_many(&mut chunk, 500).await > 0 {
        let mut texts = Vec::with_capacity(chunk.len());
        for line in chunk.drain(..) {
            let line = line.context("cannot read stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            match confab_protocol::validate_text(&line) {
                Ok(()) => texts.push(line),
                Err(code) => {
                    eprintln!("confab: not sent: {}", code.describe());
                    failed += 1;
                }
            }
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        ids.extend(client.send_all(conversation, &texts).await?);
    }
    let outcomes = client.wait_sent(&ids).await?;
    client.stop().await;
    for outcome in &outcomes {
        if let SendOutcome::Failed(err) = outcome {
            eprintln!("confab: message refused: {}", err.message);
            failed += 1;
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints upload progress lines (`upload <client id> <file>: <sent>/<total>`)
/// until the task is dropped.
fn print_progress(client: &Client) -> tokio::task::JoinHandle<()> {
    let mut events = client.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ClientEvent::UploadProgress { client_id, file, sent, total }) => {
                    eprintln!("upload {client_id} {file}: {sent}/{total}");
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    })
}

async fn send_files(
    client: &Client,
    conversation: ConversationId,
    text: String,
    files: Vec<PathBuf>,
    progress: bool,
) -> anyhow::Result<ExitCode> {
    let printer = progress.then(|| print_progress(client));
    client.start_sending_only().await?;
    let id = client.send_files(conversation, &text, &files).await?;
    let outcome = client.wait_sent(&[id]).await?;
    client.stop().await;
    if let Some(p) = printer {
        p.abort();
    }
    match outcome.first() {
        Some(SendOutcome::Failed(err)) => {
            eprintln!("confab: message refused: {}", err.message);
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

async fn flush(client: &Client, progress: bool) -> anyhow::Result<ExitCode> {
    let printer = progress.then(|| print_progress(client));
    client.start_sending_only().await?;
    let mut events = client.subscribe();
    while client.outbox_len().await? > 0 {
        let _ = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
    }
    client.stop().await;
    if let Some(p) = printer {
        p.abort();
    }
    Ok(ExitCode::SUCCESS)
}

async fn search(
    client: &Client,
    query: &str,
    conversation: Option<ConversationId>,
    limit: u32,
    local_only: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut hits = client.search(query, conversation, limit).await?;
    if !local_only && start_and_sync(client).await? {
        let (server, _) = client.search_server(query, conversation, None, limit).await?;
        for h in server {
            if !hits.iter().any(|l| l.conversation == h.conversation && l.seq.is_some() && l.seq == h.seq) {
                hits.push(h);
            }
        }
        hits.sort_by_key(|h| std::cmp::Reverse(h.ts));
        hits.truncate(limit as usize);
    }
    for h in &hits {
        output::search_hit(client, h, json).await;
    }
    Ok(())
}

async fn listen(client: &Client, json: bool) -> anyhow::Result<()> {
    let mut events = client.subscribe();
    start(client).await?;
    let printer = output::Printer::new(client, json);
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = events.recv() => match ev {
                Ok(ClientEvent::Connection { state: ConnectionState::SignedOut }) => {
                    bail!("your session has expired or was signed out; run `confab login`");
                }
                Ok(ev) => printer.print(&ev).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("confab: output fell behind; {n} events not printed (they are in the cache)");
                }
                Err(_) => break,
            }
        }
    }
    client.stop().await;
    Ok(())
}

async fn history(client: &Client, conversation: ConversationId, json: bool, limit: u32) -> anyhow::Result<()> {
    let online = start_and_sync(client).await?;
    let known = client.conversation(conversation).await?.is_some();
    if !known {
        if online {
            return Err(CoreError::Server {
                code: ErrorCode::NotMember,
                message: ErrorCode::NotMember.describe().into(),
                retry_after_ms: None,
            }
            .into());
        }
        bail!("this device has nothing cached for that conversation and the server is unreachable");
    }
    for m in client.history(conversation, None, limit).await? {
        output::message(&m, json);
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
