//! Shared helpers: an in-process server on a loopback port and clients on
//! real SQLite profiles in a temporary directory.

use confab_core::{Client, ClientEvent, LinkConfig, MessageStatus};
use confab_server::{Config, Limits, Server};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const PASSWORD: &str = "correct horse battery";
pub const T: Duration = Duration::from_secs(20);

pub struct World {
    pub dir: tempfile::TempDir,
    pub server: Option<Server>,
    pub url: String,
    limits: Limits,
    push: confab_server::push::PushConfig,
}

impl World {
    pub async fn new() -> World {
        World::with_limits(Limits { requests_per_sec: 100_000, request_burst: 100_000, ..Limits::default() }).await
    }

    pub async fn with_limits(limits: Limits) -> World {
        World::with(limits, confab_server::push::PushConfig::default()).await
    }

    /// A server that wakes away devices through these push providers.
    pub async fn with_push(push: confab_server::push::PushConfig) -> World {
        World::with(Limits { requests_per_sec: 100_000, request_burst: 100_000, ..Limits::default() }, push).await
    }

    async fn with(limits: Limits, push: confab_server::push::PushConfig) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = start_server(&dir.path().join("server.db"), 0, limits.clone(), push.clone()).await;
        let url = format!("http://{}", server.addr);
        World { dir, server: Some(server), url, limits, push }
    }

    pub fn profile(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn client(&self, profile: &str) -> Client {
        let config = LinkConfig {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            ..LinkConfig::default()
        };
        Client::open(&self.profile(profile)).await.expect("open profile").with_link_config(config)
    }

    /// A registered, started client whose first sync is done.
    pub async fn user(&self, name: &str) -> Client {
        let c = self.client(name).await;
        c.register(&self.url, name, PASSWORD).await.expect("register");
        start_synced(&c).await;
        c
    }

    pub async fn stop_server(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    pub async fn restart_server(&mut self) {
        self.stop_server().await;
        let port: u16 = self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        let db = self.dir.path().join("server.db");
        self.server = Some(start_server(&db, port, self.limits.clone(), self.push.clone()).await);
    }
}

pub async fn start_server(db: &Path, port: u16, limits: Limits, push: confab_server::push::PushConfig) -> Server {
    let mut config = Config::new(format!("127.0.0.1:{port}").parse().expect("addr"), db.to_owned());
    config.limits = limits;
    config.push = push;
    confab_server::start(config).await.expect("server")
}

pub async fn start_synced(c: &Client) {
    let mut events = c.subscribe();
    c.start().await.expect("start");
    wait_for(&mut events, |e| matches!(e, ClientEvent::SyncCompleted)).await;
}

pub async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    pred: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    tokio::time::timeout(T, async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("expected event within the timeout")
}

pub async fn status_of(c: &Client, id: uuid::Uuid) -> MessageStatus {
    c.own_message(id).await.expect("cache").expect("message").status
}

/// Texts of a conversation as `c` shows it, oldest first, once it has `n`.
pub async fn texts_when(c: &Client, conv: uuid::Uuid, n: usize) -> Vec<String> {
    let mut last = Vec::new();
    let got = tokio::time::timeout(T, async {
        loop {
            let page = c.history(conv, None, 500).await.expect("history");
            if page.len() >= n && page.iter().all(|m| m.seq.is_some()) {
                return page.into_iter().map(|m| m.text).collect::<Vec<_>>();
            }
            last = page
                .iter()
                .map(|m| format!("{:?} {:?} {}", m.seq, m.status, m.text.chars().take(20).collect::<String>()))
                .collect();
            tokio::time::sleep(Duration::from_millis(20)).await
        }
    })
    .await;
    match got {
        Ok(texts) => texts,
        Err(_) => panic!("the conversation did not converge to {n} messages; last seen: {last:#?}"),
    }
}

/// A private certificate authority and a certificate it issued for
/// 127.0.0.1, as PEM files in `dir`: (ca, cert, key). One maker of them,
/// shared with the stand-in push providers.
pub use crate::providers::private_ca;
