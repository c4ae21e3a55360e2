//! Helpers for the end-to-end tests: the real `confab-server` and `confab`
//! binaries as processes, on loopback, with real SQLite files in temporary
//! directories. Build the binaries first (`cargo build --workspace --bins`;
//! `scripts/test` does).

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery";

/// Path of a workspace binary, next to the test executable's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

/// Waits until `check` holds, polling; false on timeout.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// A `confab-server` process.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    dir: PathBuf,
    db: String,
    extra: Vec<String>,
}

impl Server {
    /// Starts a server on a free loopback port with its database in `dir`.
    /// The per-user rate limit is lifted, since tests stream thousands of
    /// messages; the `rate_limit` tests set their own.
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, 0, &["--rate-limit", "1000000", "--rate-burst", "1000000"])
    }

    pub fn start_with(dir: &Path, port: u16, extra: &[&str]) -> Server {
        let db = dir.join("server.db").to_string_lossy().into_owned();
        Server::start_on(dir, port, &db, extra)
    }

    /// A server on the database `db` (a file, or a `postgres://` URL
    /// several servers share); its log and media in `dir`.
    pub fn start_on(dir: &Path, port: u16, db: &str, extra: &[&str]) -> Server {
        std::fs::create_dir_all(dir).expect("server dir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).expect("log");
        let mut child = Command::new(bin("confab-server"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--db")
            .arg(db)
            .args(extra)
            .env("RUST_LOG", "info,tower_http=warn,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn confab-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("server printed its address");
        let port = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in url");
        Server {
            child: Some(child),
            url,
            port,
            dir: dir.to_owned(),
            db: db.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The process id (for reading its memory use).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// Resident memory of the process, in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// SIGKILL: no graceful anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        false
    }

    /// Starts again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        // The port was just released; retry briefly if it is not free yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = std::panic::catch_unwind(|| Server::start_on(&self.dir, self.port, &self.db, &extra));
            match attempt {
                Ok(mut s) => {
                    self.child = s.child.take();
                    return;
                }
                Err(e) if Instant::now() > deadline => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("server.db")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CLI profile (one device of one user).
#[derive(Clone)]
pub struct Profile {
    pub dir: PathBuf,
    pub server: String,
    pub username: String,
    /// A CA certificate to trust (`--ca-cert`), for a TLS server.
    pub ca_cert: Option<PathBuf>,
}

impl Profile {
    pub fn new(root: &Path, server: &str, username: &str) -> Profile {
        Profile {
            dir: root.join(format!("profile-{username}")),
            server: server.to_owned(),
            username: username.to_owned(),
            ca_cert: None,
        }
    }

    /// Registers the user with a fresh profile that trusts `ca`.
    pub fn register_trusting(root: &Path, server: &str, username: &str, ca: &Path) -> Profile {
        let p = Profile { ca_cert: Some(ca.to_owned()), ..Profile::new(root, server, username) };
        p.ok(&["register", username]);
        p
    }

    /// Registers the user with a fresh profile.
    pub fn register(root: &Path, server: &str, username: &str) -> Profile {
        let p = Profile::new(root, server, username);
        p.ok(&["register", username]);
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("confab"));
        c.arg("--profile")
            .arg(&self.dir)
            .arg("--server")
            .arg(&self.server)
            .args(args)
            .env("CONFAB_PASSWORD", PASSWORD)
            .env("CONFAB_LOG", "warn")
            .stdin(Stdio::null());
        if let Some(ca) = &self.ca_cert {
            c.arg("--ca-cert").arg(ca);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run confab")
    }

    /// Runs a command that must succeed; returns its trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "confab {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "confab {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts `confab send <conv>` with `lines` on stdin.
    pub fn send_lines(&self, conversation: &str, lines: &[String]) -> Child {
        let (child, mut stdin) = self.spawn_send(conversation);
        let text = lines.join("\n") + "\n";
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
        child
    }

    /// [`Profile::send_lines`], the lines written at about `per_second`,
    /// so the stream lasts a while.
    pub fn send_lines_paced(&self, conversation: &str, lines: &[String], per_second: usize) -> Child {
        let (child, mut stdin) = self.spawn_send(conversation);
        let lines = lines.to_vec();
        let per_tick = (per_second / 50).max(1);
        std::thread::spawn(move || {
            for chunk in lines.chunks(per_tick) {
                if stdin.write_all((chunk.join("\n") + "\n").as_bytes()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        child
    }

    /// `confab send <conv>` reading its lines from the returned stdin.
    fn spawn_send(&self, conversation: &str) -> (Child, std::process::ChildStdin) {
        let mut child = self
            .cmd(&["send", conversation])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn send");
        let stdin = child.stdin.take().expect("stdin");
        (child, stdin)
    }

    /// `history --json`, as parsed objects.
    pub fn history(&self, conversation: &str, limit: usize) -> Vec<Value> {
        let out = self.ok(&["history", conversation, "--json", "--limit", &limit.to_string()]);
        out.lines().map(|l| serde_json::from_str(l).expect("history line is JSON")).collect()
    }

    pub fn listen(&self) -> Listener {
        let mut child =
            self.cmd(&["listen", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn listen");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink.lock().expect("lines").push(v),
                    Err(e) => panic!("listen printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        Listener { child, lines }
    }
}

/// A running `confab listen --json`.
pub struct Listener {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Listener {
    pub fn events(&self) -> Vec<Value> {
        self.lines.lock().expect("lines").clone()
    }

    pub fn of_type(&self, kind: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["type"] == kind).collect()
    }

    pub fn messages(&self) -> Vec<Value> {
        self.of_type("message")
    }

    /// Waits until `check` holds over everything printed so far.
    pub fn wait(&self, timeout: Duration, mut check: impl FnMut(&[Value]) -> bool) -> bool {
        wait_until(timeout, || check(&self.lines.lock().expect("lines")))
    }

    pub fn wait_messages(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, |evs| evs.iter().filter(|e| e["type"] == "message").count() >= n)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for a child with a deadline; kills it and panics on timeout.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("process did not finish within {timeout:?}; stderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts `texts` (in arrival order) contain each of `expected` exactly
/// once and in the same relative order.
pub fn assert_exactly_once_in_order(texts: &[String], expected: &[String]) {
    let mut counts = std::collections::HashMap::new();
    for t in texts {
        *counts.entry(t.as_str()).or_insert(0) += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(t, n)| format!("{t}×{n}")).collect();
    assert!(dups.is_empty(), "duplicates: {:?}", &dups[..dups.len().min(10)]);
    let missing: Vec<_> = expected.iter().filter(|e| !counts.contains_key(e.as_str())).collect();
    assert!(missing.is_empty(), "{} missing, first: {:?}", missing.len(), &missing[..missing.len().min(10)]);
    let wanted: std::collections::HashSet<&str> = expected.iter().map(String::as_str).collect();
    let seen: Vec<&str> = texts.iter().map(String::as_str).filter(|t| wanted.contains(t)).collect();
    let expected_order: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(seen, expected_order, "order differs");
}

/// A temporary directory kept on failure for inspection when
/// `CONFAB_KEEP_TEST_DIRS` is set.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(&format!("confab-{name}-")).tempdir().expect("tempdir");
    if std::env::var_os("CONFAB_KEEP_TEST_DIRS").is_some() {
        eprintln!("test dir: {}", dir.path().display());
    }
    dir
}

/// A bare HTTP/1.1 POST on loopback: (status, body). `headers` are extra
/// header lines ("Name: value").
pub fn http_post(url: &str, path: &str, body: &str, headers: &[String]) -> (u16, String) {
    use std::io::Read;
    let host = url.strip_prefix("http://").expect("http url");
    let mut tcp = std::net::TcpStream::connect(host).expect("connect");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).expect("read");
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A private certificate authority and a certificate it issued for
/// 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
pub fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Confab e2e CA");
    let ca = ca.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    leaf.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let leaf = leaf.signed_by(&key, &ca, &ca_key).expect("leaf");
    std::fs::create_dir_all(dir).expect("dir");
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, leaf.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

/// Runs the calling test inside a private network namespace that has only
/// loopback, so no call traffic can leave this machine however ICE
/// gathers. Returns true when this is the outer process (the test ran in
/// the child, and passed); false inside the namespace, where the test body
/// runs. `test` is the test's full name (`module::name`).
///
/// Needs `unshare -n` (root, as in CI). Without it the test fails with a
/// message rather than skipping.
pub fn ran_in_loopback_namespace(test: &str) -> bool {
    if std::env::var_os("CONFAB_IN_NETNS").is_some() {
        return false;
    }
    let _turn = heavy_turn();
    let exe = std::env::current_exe().expect("test executable path");
    let out = Command::new("unshare")
        .args(["-n", "--", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("CONFAB_IN_NETNS", "1")
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test} failed in a loopback-only network namespace (made with `unshare -n`, which needs root):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 passed"), "{test} did not run in the namespace:\n{stdout}\n{stderr}");
    true
}

/// A WAV file of a sine tone: 48 kHz mono, 16-bit, at half scale.
pub fn write_tone(path: &Path, hz: f64, seconds: f64) {
    let rate = 48_000u32;
    let n = (seconds * rate as f64) as u32;
    let mut data = Vec::with_capacity(n as usize * 2);
    for i in 0..n {
        let s = (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin() * 0.5;
        data.extend_from_slice(&((s * i16::MAX as f64) as i16).to_le_bytes());
    }
    let mut f = Vec::with_capacity(44 + data.len());
    f.extend_from_slice(b"RIFF");
    f.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    f.extend_from_slice(b"WAVEfmt ");
    f.extend_from_slice(&16u32.to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // PCM
    f.extend_from_slice(&1u16.to_le_bytes()); // mono
    f.extend_from_slice(&rate.to_le_bytes());
    f.extend_from_slice(&(rate * 2).to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&16u16.to_le_bytes());
    f.extend_from_slice(b"data");
    f.extend_from_slice(&(data.len() as u32).to_le_bytes());
    f.extend_from_slice(&data);
    std::fs::write(path, f).expect("write wav");
}

/// The samples of a 16-bit PCM mono WAV file (as the CLI records them),
/// and its rate.
pub fn read_wav(path: &Path) -> (Vec<f64>, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() >= 44 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let rate = u32::from_le_bytes(bytes[24..28].try_into().expect("rate"));
    // Find the data chunk.
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("len")) as usize;
        if id == b"data" {
            let data = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
            let samples =
                data.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f64 / i16::MAX as f64).collect();
            return (samples, rate);
        }
        at += 8 + len;
    }
    panic!("{} has no data chunk", path.display());
}

/// The amplitude of the `hz` component of `samples` (Goertzel).
pub fn tone_level(samples: &[f64], rate: u32, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / rate as f64;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.max(0.0).sqrt() / samples.len().max(1) as f64
}

/// The share of 100 ms windows of a recording in which `want` is clearly
/// present (amplitude over `min_level`) and stronger than `other` by 10×.
pub fn share_hearing(samples: &[f64], rate: u32, want: f64, other: f64, min_level: f64) -> (f64, usize) {
    let window = rate as usize / 10;
    let windows: Vec<&[f64]> = samples.chunks_exact(window).collect();
    let good = windows
        .iter()
        .filter(|w| {
            let (a, b) = (tone_level(w, rate, want), tone_level(w, rate, other));
            a > min_level && a > 10.0 * b
        })
        .count();
    (good as f64 / windows.len().max(1) as f64, windows.len())
}

/// A TCP proxy in front of a server whose links a test can cut, as a
/// network outage would: every proxied connection closes at once, and new
/// ones are closed on arrival until [`Proxy::restore`].
pub struct Proxy {
    /// `http://127.0.0.1:<port>` of the proxy.
    pub url: String,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    cut: bool,
    /// Both ends of every proxied connection, to shut down on a cut.
    open: Vec<std::net::TcpStream>,
}

impl Proxy {
    /// Proxies to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let target = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
                if st.cut {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                st.open.extend([c2, s2]);
                for (mut from, mut to) in
                    [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())]
                        .into_iter()
                        .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { url, state }
    }

    /// Closes every link through the proxy and refuses new ones.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.cut = true;
        for s in st.open.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Lets links through again.
    pub fn restore(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).cut = false;
    }
}

/// Whether the tests that need Postgres, NATS and HAProxy were switched off
/// (`CONFAB_SKIP_POSTGRES=1`); otherwise a missing one fails them.
pub fn skip_postgres(test: &str) -> bool {
    let skip = std::env::var("CONFAB_SKIP_POSTGRES").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("{test}: NOT RUN (CONFAB_SKIP_POSTGRES=1)");
    }
    skip
}

/// A fresh Postgres database on the server at `CONFAB_TEST_POSTGRES`
/// (default `postgres://postgres@127.0.0.1:5432/postgres`); its URL.
pub fn postgres_database() -> String {
    let admin = std::env::var("CONFAB_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("confab_t_{}", uuid::Uuid::now_v7().simple());
    let out = Command::new("psql")
        .arg(&admin)
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql (Postgres's client) is needed: CONFAB_SETUP_TESTS=1 scripts/setup installs it");
    assert!(
        out.status.success(),
        "cannot create a database on Postgres at {admin} (start it: scripts/services): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Waits until something accepts connections on a loopback port.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
}

/// A `nats-server` of the test's own, on a loopback port.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
}

impl Nats {
    pub fn start() -> Nats {
        let mut nats = Nats { child: None, port: free_port() };
        nats.restart();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts it on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is needed: CONFAB_SETUP_TESTS=1 scripts/setup installs it");
        self.child = Some(child);
        assert!(wait_port(self.port, Duration::from_secs(10)), "nats-server did not start");
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy in front of the nodes, with the configuration given.
pub struct Haproxy {
    child: Child,
}

impl Haproxy {
    /// Runs `haproxy` on `config` (written to `dir`); waits for `ports`.
    pub fn start(dir: &Path, config: &str, ports: &[u16]) -> Haproxy {
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("haproxy is needed: CONFAB_SETUP_TESTS=1 scripts/setup installs it");
        assert!(check.status.success(), "haproxy.cfg: {}", String::from_utf8_lossy(&check.stdout));
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).expect("log"))
            .spawn()
            .expect("start haproxy");
        for p in ports {
            assert!(wait_port(*p, Duration::from_secs(10)), "haproxy is not listening on {p}");
        }
        Haproxy { child }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tests that load both cores for a while (three server nodes streaming
/// 10,000 messages) and the call tests that time real-time media take
/// turns, so a call's timing is not measured under another test's load.
pub fn heavy_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}
