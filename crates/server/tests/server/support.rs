use confab_server::{Config, Limits, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

pub const PASSWORD: &str = "correct horse battery";
pub const T: Duration = Duration::from_secs(10);

/// Whether the tests run against Postgres (`CONFAB_TEST_STORE=postgres`)
/// rather than SQLite.
pub fn on_postgres() -> bool {
    std::env::var("CONFAB_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// A database for one test: a SQLite file in `dir`, or, on Postgres, a
/// fresh database of its own on the server at `CONFAB_TEST_POSTGRES`
/// (default `postgres://postgres@127.0.0.1:5432/postgres`). A Postgres run
/// without a reachable Postgres fails, loudly: it never falls back.
pub async fn database(dir: &std::path::Path) -> std::path::PathBuf {
    if !on_postgres() {
        return dir.join("server.db");
    }
    use sqlx::Connection;
    let admin = std::env::var("CONFAB_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!(
            "CONFAB_TEST_STORE=postgres, but Postgres at {admin} is unreachable ({e}). Start it \
             (CONFAB_SETUP_TESTS=1 scripts/setup does), point CONFAB_TEST_POSTGRES at one, or run \
             without CONFAB_TEST_STORE=postgres."
        )
    });
    // The prefix lets scripts/test drop what a run leaves behind.
    let name = format!("confab_t_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create a test database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
    std::path::PathBuf::from(format!("{base}/{name}"))
}

/// A store for one test (see [`database`]).
pub async fn store(dir: &std::path::Path) -> std::sync::Arc<dyn confab_server::store::Store> {
    let db = database(dir).await;
    confab_server::store::open(&db.to_string_lossy()).await.expect("open the store")
}

pub struct TestServer {
    pub server: Server,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with_limits(Limits { requests_per_sec: 100_000, request_burst: 100_000, ..Limits::default() }).await
    }

    pub async fn with_limits(limits: Limits) -> TestServer {
        TestServer::with_config(|c| c.limits = limits).await
    }

    /// A server with its default test limits, then `adjust`ed.
    pub async fn with_config(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new("127.0.0.1:0".parse().expect("addr"), database(dir.path()).await);
        config.media_dir = Some(dir.path().join("media"));
        config.limits = Limits { requests_per_sec: 100_000, request_burst: 100_000, ..Limits::default() };
        adjust(&mut config);
        let server = confab_server::start(config).await.expect("server starts");
        let url = format!("http://{}", server.addr);
        TestServer { server, url, _dir: dir }
    }

    pub async fn post(&self, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("http");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers `name` and returns its token.
    pub async fn register(&self, name: &str) -> String {
        let (status, body) =
            self.post("/v1/register", &json!({"username": name, "password": PASSWORD}).to_string(), None).await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Creates an account straight in the store (no password hashing, so a
    /// test can make a thousand) and returns its id and a session token.
    pub async fn quick_user(&self, name: &str) -> (uuid::Uuid, String) {
        let store = &self.server.state.service.store;
        let user = store.create_user(name, "no-login").await.expect("create user");
        let token = confab_server::auth::new_token();
        store.create_session(user, &confab_server::auth::token_hash(&token), None).await.expect("session");
        (user, token)
    }

    /// Registers `name` and connects an authenticated socket.
    pub async fn user(&self, name: &str) -> Ws {
        let token = self.register(name).await;
        self.connect(&token).await
    }

    /// Connects and authenticates; returns once the presence snapshot that
    /// follows `welcome` has arrived (it is kept in `presence`).
    pub async fn connect(&self, token: &str) -> Ws {
        let mut ws = Ws::open(&self.url).await;
        let reply = ws.req(json!({"type": "hello", "token": token, "protocol": 1})).await;
        assert_eq!(reply["type"], "result", "{reply}");
        ws.welcome = reply["result"].clone();
        ws.presence = ws.expect(|f| f["type"] == "presence_list" && f["snapshot"] == true).await;
        ws
    }
}

pub struct Ws {
    pub socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    /// Frames that arrived while waiting for a reply.
    pub backlog: VecDeque<Value>,
    pub welcome: Value,
    /// The presence snapshot sent after `welcome`.
    pub presence: Value,
}

impl Ws {
    pub async fn open(url: &str) -> Ws {
        let ws_url = format!("{}/v1/ws", url.replace("http://", "ws://"));
        let (socket, _) = tokio_tungstenite::connect_async(ws_url).await.expect("connect");
        Ws { socket, next_id: 0, backlog: VecDeque::new(), welcome: Value::Null, presence: Value::Null }
    }

    pub async fn send_text(&mut self, text: String) {
        self.socket.send(Message::text(text)).await.expect("send");
    }

    /// The next text frame as JSON (`None` when the socket closed).
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(T, self.socket.next()).await.expect("a frame within the timeout")?;
            match msg {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).expect("server frames are JSON")),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The close code, reading until the socket closes.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(T, self.socket.next()).await.expect("closes within the timeout") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Sends a request (adding an id) and returns its reply, keeping other
    /// frames in the backlog.
    pub async fn req(&mut self, mut body: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        body["id"] = json!(id);
        self.send_text(body.to_string()).await;
        self.reply_to(id).await
    }

    pub async fn reply_to(&mut self, id: u64) -> Value {
        loop {
            let frame = self.recv().await.expect("socket open while waiting for a reply");
            if (frame["type"] == "result" || frame["type"] == "error") && frame["id"] == id {
                return frame;
            }
            self.backlog.push_back(frame);
        }
    }

    /// The result of a request that must succeed.
    pub async fn ok(&mut self, body: Value) -> Value {
        let reply = self.req(body.clone()).await;
        assert_eq!(reply["type"], "result", "{body} -> {reply}");
        reply["result"].clone()
    }

    /// The error code of a request that must fail.
    pub async fn err(&mut self, body: Value) -> String {
        let reply = self.req(body.clone()).await;
        assert_eq!(reply["type"], "error", "{body} -> {reply}");
        reply["code"].as_str().expect("code").to_owned()
    }

    /// The next frame matching `pred`, from the backlog or the socket.
    pub async fn expect(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).expect("index");
        }
        loop {
            let frame = self.recv().await.expect("socket open while expecting a frame");
            if pred(&frame) {
                return frame;
            }
            self.backlog.push_back(frame);
        }
    }

    /// The next persisted event of a given type.
    pub async fn event(&mut self, kind: &str) -> Value {
        let kind = kind.to_owned();
        self.expect(move |f| f["type"] == "event" && f["event"]["body"]["type"] == kind).await["event"].clone()
    }

    /// Asserts nothing matching `pred` arrives within `wait`.
    pub async fn quiet(&mut self, wait: Duration, pred: impl Fn(&Value) -> bool) {
        assert!(!self.backlog.iter().any(&pred), "unexpected frame in backlog: {:?}", self.backlog);
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.socket.next()).await {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                assert!(!pred(&v), "unexpected frame: {v}");
                self.backlog.push_back(v);
            }
        }
    }
}

pub fn client_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Opens the direct conversation between `a` and `b` (usernames), from `a`.
pub async fn dm(a: &mut Ws, b: &str) -> String {
    let r = a.ok(json!({"type": "open_direct", "username": b})).await;
    r["conversation"]["id"].as_str().expect("id").to_owned()
}

pub async fn send(ws: &mut Ws, conv: &str, text: &str) -> Value {
    ws.ok(json!({"type": "send", "conversation": conv, "client_id": client_id(), "text": text})).await
}
