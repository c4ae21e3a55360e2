//! Calls between real `confab` processes through the real server, with
//! real audio: each side plays a tone from a WAV file and records what it
//! hears, and the recordings are checked for the *other* side's tone.
//! Every test here runs in a network namespace with only loopback.

use confab_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

/// Spawns a CLI call command with its media on loopback.
pub(crate) fn spawn(p: &Profile, args: &[&str]) -> Child {
    spawn_with(p, args, &[])
}

/// The same, with extra environment (`CONFAB_RELAY_ONLY`, …).
pub(crate) fn spawn_with(p: &Profile, args: &[&str], env: &[(&str, &str)]) -> Child {
    p.cmd(args)
        .env("CONFAB_MEDIA_BIND", "127.0.0.1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn confab")
}

/// Waits for a call command to end; its JSON lines and whether it succeeded.
pub(crate) fn finish(child: Child, limit: Duration) -> (bool, Vec<Value>, String) {
    let pid = child.id();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().expect("wait confab");
    drop(timer);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out.status.success(), lines, format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

pub(crate) fn summary(lines: &[Value]) -> &Value {
    lines.iter().find(|l| l["type"] == "call_summary").expect("a call summary")
}

fn phases(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["type"] == "call")
        .map(|l| l["call"]["phase"]["phase"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Checks a recording for `want` (and not `other`) through most of the call.
pub(crate) fn assert_hears(path: &Path, want: f64, other: f64, who: &str) {
    let (samples, rate) = read_wav(path);
    assert_eq!(rate, 48_000);
    // Skip the first half second (the link coming up, Opus settling).
    assert_hears_samples(&samples, rate, 0.5, want, other, who);
}

fn assert_hears_samples(samples: &[f64], rate: u32, skip_s: f64, want: f64, other: f64, who: &str) {
    let samples = &samples[((rate as f64 * skip_s) as usize).min(samples.len())..];
    let seconds = samples.len() as f64 / rate as f64;
    assert!(seconds > 3.0, "{who} recorded only {seconds:.1} s");
    let (share, windows) = share_hearing(samples, rate, want, other, 0.05);
    let map: String = samples
        .chunks_exact(rate as usize / 10)
        .map(|w| {
            let (a, b) = (tone_level(w, rate, want), tone_level(w, rate, other));
            if a > 0.05 && a > 10.0 * b {
                '#'
            } else if a > 0.05 {
                'x'
            } else {
                '.'
            }
        })
        .collect();
    assert!(share > 0.8, "{who} heard {want} Hz in only {:.0}% of {windows} windows: {map}", share * 100.0);
    // A sensible level where it is heard (the median 100 ms window): the
    // sender plays at half scale.
    let mut levels: Vec<f64> =
        samples.chunks_exact(rate as usize / 10).map(|w| tone_level(w, rate, want)).filter(|l| *l > 0.05).collect();
    levels.sort_by(f64::total_cmp);
    let level = levels.get(levels.len() / 2).copied().unwrap_or(0.0);
    assert!((0.1..=0.8).contains(&level), "{who} heard {want} Hz at level {level:.3}");
}

#[test]
fn two_clis_call_each_other_and_each_hears_the_others_tone() {
    if ran_in_loopback_namespace("calls::two_clis_call_each_other_and_each_hears_the_others_tone") {
        return;
    }
    let dir = temp_dir("call-audio");
    let server = Server::start(dir.path());
    let alice = Profile::register(dir.path(), &server.url, "alice");
    let bob = Profile::register(dir.path(), &server.url, "bob");
    let conv = alice.ok(&["dm", "bob"]);
    let (a_tone, b_tone) = (dir.path().join("a440.wav"), dir.path().join("b660.wav"));
    write_tone(&a_tone, 440.0, 12.0);
    write_tone(&b_tone, 660.0, 12.0);
    let (a_heard, b_heard) = (dir.path().join("alice-heard.wav"), dir.path().join("bob-heard.wav"));

    let answer =
        spawn(&bob, &["answer", "--json", "--wait", "30s", "--play", path(&b_tone), "--record", path(&b_heard)]);
    let call =
        spawn(&alice, &["call", "bob", "--json", "--for", "6s", "--play", path(&a_tone), "--record", path(&a_heard)]);
    let (a_ok, a_lines, a_out) = finish(call, Duration::from_secs(60));
    let (b_ok, b_lines, b_out) = finish(answer, Duration::from_secs(30));
    assert!(a_ok, "alice's call failed:\n{a_out}");
    assert!(b_ok, "bob's answer failed:\n{b_out}");
    assert_eq!(phases(&a_lines), ["calling", "connecting", "active", "ended"], "{a_out}");
    assert_eq!(phases(&b_lines), ["ringing", "connecting", "active", "ended"], "{b_out}");
    let (a_sum, b_sum) = (summary(&a_lines), summary(&b_lines));
    assert_eq!(a_sum["reason"], "ended_here", "{a_out}");
    assert_eq!(b_sum["reason"], "hung_up", "{b_out}");
    let (a_ms, b_ms) = (a_sum["duration_ms"].as_i64().unwrap_or(0), b_sum["duration_ms"].as_i64().unwrap_or(0));
    assert!((5_500..8_000).contains(&a_ms), "alice's call lasted {a_ms} ms");
    assert!((a_ms - b_ms).abs() <= 1_000, "alice says {a_ms} ms, bob {b_ms} ms");

    assert_hears(&a_heard, 660.0, 440.0, "alice");
    assert_hears(&b_heard, 440.0, 660.0, "bob");

    // The call is in the conversation's history, for both.
    for p in [&alice, &bob] {
        let history = p.history(&conv, 10);
        let entry = history.iter().find(|m| m["call"].is_object()).unwrap_or_else(|| panic!("{history:?}"));
        assert_eq!(entry["call"]["outcome"]["type"], "completed", "{entry}");
        let logged = entry["call"]["outcome"]["duration_ms"].as_i64().unwrap_or(0);
        // The server counts from the answer, the devices from media up:
        // they differ by the setup time, which is ~30 ms but once in ~20
        // calls ~1 s (a DTLS retransmit, see docs/performance.md).
        assert!((logged - a_ms).abs() <= 2_000, "logged {logged} ms, alice measured {a_ms} ms");
    }
}

/// A PulseAudio daemon of the test's own: a null sink is the speaker (its
/// monitor is recorded) and another, fed a WAV, is the microphone (its
/// monitor is the default source). Programs reach it through ALSA's
/// `default` device (the pulse plugin) with `PULSE_SERVER` set.
struct Pulse {
    server: String,
    daemon: Child,
    helpers: Vec<Child>,
    heard: std::path::PathBuf,
}

impl Pulse {
    fn start(dir: &Path) -> Pulse {
        let runtime = dir.join("pulse");
        std::fs::create_dir_all(&runtime).expect("pulse dir");
        let server = format!("unix:{}", runtime.join("native").display());
        let daemon = std::process::Command::new("pulseaudio")
            .args(["-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--disable-shm=yes"])
            .args(["--use-pid-file=no", "--log-target=stderr"])
            .args(["-L", "module-native-protocol-unix"])
            .args(["-L", "module-null-sink sink_name=speaker rate=48000 channels=1"])
            .args(["-L", "module-null-sink sink_name=mic rate=48000 channels=1"])
            .env("PULSE_RUNTIME_PATH", &runtime)
            .env("HOME", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pulseaudio (apt-get install pulseaudio)");
        let pulse = Pulse { server, daemon, helpers: Vec::new(), heard: dir.join("speaker.raw") };
        let up = wait_until(Duration::from_secs(10), || pulse.pactl(&["info"]));
        assert!(up, "pulseaudio did not start");
        assert!(pulse.pactl(&["set-default-sink", "speaker"]) && pulse.pactl(&["set-default-source", "mic.monitor"]));
        pulse
    }

    fn pactl(&self, args: &[&str]) -> bool {
        std::process::Command::new("pactl")
            .args(args)
            .env("PULSE_SERVER", &self.server)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Plays `wav` into the microphone and records the speaker.
    fn play_and_record(&mut self, wav: &Path) {
        let heard = std::fs::File::create(&self.heard).expect("speaker recording");
        for (cmd, args, out) in [
            ("paplay", vec!["--device=mic", path(wav)], Stdio::null()),
            (
                "parec",
                vec!["--device=speaker.monitor", "--format=s16le", "--rate=48000", "--channels=1", "--raw"],
                Stdio::from(heard),
            ),
        ] {
            let child = std::process::Command::new(cmd)
                .args(args)
                .env("PULSE_SERVER", &self.server)
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .expect("pulseaudio-utils");
            self.helpers.push(child);
        }
    }

    /// What the speaker played, as samples at 48 kHz.
    fn heard(&self) -> Vec<f64> {
        let raw = std::fs::read(&self.heard).expect("speaker recording");
        raw.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f64 / 32768.0).collect()
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        for c in self.helpers.iter_mut().chain(std::iter::once(&mut self.daemon)) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_cli_on_the_sound_devices_calls_and_hears_through_them() {
    if ran_in_loopback_namespace("calls::a_cli_on_the_sound_devices_calls_and_hears_through_them") {
        return;
    }
    let dir = temp_dir("call-devices-audio");
    let server = Server::start(dir.path());
    let alice = Profile::register(dir.path(), &server.url, "alice");
    let bob = Profile::register(dir.path(), &server.url, "bob");
    alice.ok(&["dm", "bob"]);
    let (a_tone, b_tone) = (dir.path().join("a440.wav"), dir.path().join("b660.wav"));
    write_tone(&a_tone, 440.0, 20.0);
    write_tone(&b_tone, 660.0, 12.0);
    let b_heard = dir.path().join("bob-heard.wav");
    let mut pulse = Pulse::start(dir.path());
    pulse.play_and_record(&a_tone);

    let answer =
        spawn(&bob, &["answer", "--json", "--wait", "30s", "--play", path(&b_tone), "--record", path(&b_heard)]);
    // Alice uses the default microphone and speaker (cpal on ALSA).
    let call = spawn_with(&alice, &["call", "bob", "--json", "--for", "6s"], &[("PULSE_SERVER", &pulse.server)]);
    let (a_ok, a_lines, a_out) = finish(call, Duration::from_secs(60));
    let (b_ok, _, b_out) = finish(answer, Duration::from_secs(30));
    assert!(a_ok, "alice's call failed:\n{a_out}");
    assert!(b_ok, "bob's answer failed:\n{b_out}");
    assert_eq!(summary(&a_lines)["reason"], "ended_here", "{a_out}");
    // Bob hears alice's microphone; alice's speaker played bob's tone.
    // The speaker's recording runs from before the call to after it.
    let heard = pulse.heard();
    assert_hears_samples(&heard, 48_000, 0.0, 660.0, 440.0, "alice's speaker");
    // PulseAudio hands a process its first capture ~1.5 s late (a second
    // stream in the same process starts at once), so skip two seconds.
    let (samples, rate) = read_wav(&b_heard);
    assert_hears_samples(&samples, rate, 2.0, 440.0, 660.0, "bob");
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A real coturn on loopback with the REST-API shared secret.
struct Turn(Child);

impl Turn {
    fn start(dir: &Path, port: u16, secret: &str) -> Turn {
        let log = dir.join("turnserver.log");
        let child = std::process::Command::new("turnserver")
            .args(["-n", "-v", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint", "--allow-loopback-peers"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string(), "--min-port", "40000", "--max-port", "40100"])
            .args(["--use-auth-secret", "--static-auth-secret", secret, "--realm", "confab.test"])
            .args(["--simple-log", "--no-stdout-log", "--log-file"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver (Debian package `coturn`)");
        let up = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Total UDP servers"))
                || std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
        });
        assert!(up, "turnserver did not start");
        Turn(child)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn with_relay_only_ice_the_call_goes_through_coturn_with_rest_credentials() {
    if ran_in_loopback_namespace("calls::with_relay_only_ice_the_call_goes_through_coturn_with_rest_credentials") {
        return;
    }
    let dir = temp_dir("call-turn");
    let secret = "turn-shared-secret";
    let turn = Turn::start(dir.path(), 3478, secret);
    let server = Server::start_with(
        dir.path(),
        0,
        &[
            "--rate-limit",
            "1000000",
            "--rate-burst",
            "1000000",
            "--turn",
            "turn:127.0.0.1:3478?transport=udp",
            "--turn-secret",
            secret,
        ],
    );
    let alice = Profile::register(dir.path(), &server.url, "alice");
    let bob = Profile::register(dir.path(), &server.url, "bob");
    let (a_tone, b_tone) = (dir.path().join("a440.wav"), dir.path().join("b660.wav"));
    write_tone(&a_tone, 440.0, 10.0);
    write_tone(&b_tone, 660.0, 10.0);
    let (a_heard, b_heard) = (dir.path().join("alice-heard.wav"), dir.path().join("bob-heard.wav"));
    let relay = |p: &Profile, args: &[&str]| spawn_with(p, args, &[("CONFAB_RELAY_ONLY", "true")]);
    let answer =
        relay(&bob, &["answer", "--json", "--wait", "30s", "--play", path(&b_tone), "--record", path(&b_heard)]);
    let call =
        relay(&alice, &["call", "bob", "--json", "--for", "4s", "--play", path(&a_tone), "--record", path(&a_heard)]);
    let (a_ok, _, a_out) = finish(call, Duration::from_secs(60));
    let (b_ok, _, b_out) = finish(answer, Duration::from_secs(30));
    assert!(a_ok, "alice's relayed call failed:\n{a_out}");
    assert!(b_ok, "bob's relayed answer failed:\n{b_out}");
    assert_hears(&a_heard, 660.0, 440.0, "alice (relayed)");
    assert_hears(&b_heard, 440.0, 660.0, "bob (relayed)");
    // coturn accounts for each allocation when it closes (the engines
    // release theirs on hangup): both sides' media went through it, under
    // REST usernames `<expiry>:<user id>`.
    let log_path = dir.path().join("turnserver.log");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(Duration::from_secs(15), || read_log().matches("usage:").count() >= 2);
    drop(turn);
    let log = read_log();
    let usage: Vec<&str> = log.lines().filter(|l| l.contains("usage:") && l.contains("realm=<confab.test>")).collect();
    let relayed: Vec<u64> = usage
        .iter()
        .filter_map(|l| l.split("rp=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert!(relayed.iter().filter(|rp| **rp > 100).count() >= 2, "coturn relayed too little: {usage:?}\n{log}");
    assert!(
        usage.iter().all(|l| l
            .split("username=<")
            .nth(1)
            .is_some_and(|u| u.split(':').next().is_some_and(|e| e.parse::<u64>().is_ok()))),
        "{usage:?}"
    );
}

/// Headless Chromium (Debian's) on `page`, its fake microphone playing
/// `tone` and a fake camera. Killed on drop (its profile directory with it).
pub(crate) struct Browser(Child, #[allow(dead_code)] tempfile::TempDir);

impl Browser {
    pub(crate) fn open(url: &str, tone: &Path, log: &Path) -> Browser {
        Browser::open_with(url, tone, log, true)
    }

    /// `grant_media: false` refuses the page its microphone and camera, as
    /// a user who says no to the prompt.
    pub(crate) fn open_with(url: &str, tone: &Path, log: &Path, grant_media: bool) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(log).expect("browser log");
        let child = std::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                if grant_media { "--use-fake-ui-for-media-stream" } else { "--deny-permission-prompts" },
                "--use-fake-device-for-media-stream",
                "--allow-loopback-in-peer-connection",
                "--autoplay-policy=no-user-gesture-required",
                "--enable-logging=stderr",
            ])
            .arg(format!("--use-file-for-fake-audio-capture={}", tone.display()))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chromium (Debian package `chromium`)");
        Browser(child, profile)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The page's URL, its parameters in the fragment.
fn page(server: &str, token: &str, conversation: &str, mode: &str, hangup_after_ms: Option<u64>) -> String {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/browser/call.html");
    let params = serde_json::json!({
        "ws": format!("{}/v1/ws", server.replacen("http", "ws", 1)),
        "token": token,
        "conversation": conversation,
        "mode": mode,
        "video": true,
        "hangup_after_ms": hangup_after_ms,
    });
    format!("file://{}#{}", here.display(), fragment(&params))
}

/// JSON parameters for a page's URL fragment, percent-encoded.
pub(crate) fn fragment(params: &Value) -> String {
    params
        .to_string()
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The page's report (its `RESULT` message), as seen in the history.
fn browser_report(p: &Profile, conversation: &str, nth: usize) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(20), || {
        let results: Vec<Value> = p
            .history(conversation, 50)
            .into_iter()
            .filter_map(|m| m["text"].as_str().and_then(|t| t.strip_prefix("RESULT ")).map(str::to_owned))
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect();
        found = results.get(nth).cloned();
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("the browser reported nothing (call {nth})"))
}

fn assert_browser_got_media(report: &Value, want_hz: f64) {
    let packets = report["in_audio_packets"].as_u64().unwrap_or(0);
    assert!(packets > 100, "the browser got {packets} audio packets: {report}");
    assert!(report["out_video_packets"].as_u64().unwrap_or(0) > 20, "the browser sent no video: {report}");
    assert_peaks_near(&report["peaks"], want_hz, "the browser");
}

/// Most of what a page heard (its dominant frequencies every 100 ms)
/// peaks at `want_hz` (an FFT bin is ~6 Hz wide).
pub(crate) fn assert_peaks_near(peaks: &Value, want_hz: f64, who: &str) {
    let peaks: Vec<f64> = peaks.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    let near = peaks.iter().filter(|p| (**p - want_hz).abs() < 15.0).count();
    assert!(peaks.len() > 10 && near * 10 > peaks.len() * 7, "{who} heard peaks at {peaks:?}, wanted {want_hz} Hz");
}

/// The next view of a call from `events` that satisfies `want`, within 20 s.
pub(crate) async fn next_call(
    events: &mut tokio::sync::broadcast::Receiver<confab_core::ClientEvent>,
    what: &str,
    mut want: impl FnMut(&confab_core::CallView) -> bool,
) -> confab_core::CallView {
    use tokio::sync::broadcast::error::RecvError;
    let wait = async {
        loop {
            match events.recv().await {
                Ok(confab_core::ClientEvent::Call { call }) if want(&call) => return call,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(e) => panic!("{what}: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[test]
fn the_native_engine_calls_and_is_called_by_chromium_with_audio_both_ways_and_video() {
    if ran_in_loopback_namespace(
        "calls::the_native_engine_calls_and_is_called_by_chromium_with_audio_both_ways_and_video",
    ) {
        return;
    }
    let dir = temp_dir("call-chromium");
    let server = Server::start(dir.path());
    let alice = Profile::register(dir.path(), &server.url, "alice");
    let body = serde_json::json!({"username": "web", "password": PASSWORD}).to_string();
    let (status, reply) = http_post(&server.url, "/v1/register", &body, &[]);
    assert_eq!(status, 201, "{reply}");
    let token = serde_json::from_str::<Value>(&reply).expect("json")["token"].as_str().expect("token").to_owned();
    let conv = alice.ok(&["dm", "web"]);
    let (native_tone, browser_tone) = (dir.path().join("660.wav"), dir.path().join("440.wav"));
    write_tone(&native_tone, 660.0, 12.0);
    write_tone(&browser_tone, 440.0, 12.0);

    // Chromium answers a video call from the CLI.
    let browser = Browser::open(
        &page(&server.url, &token, &conv, "answer", None),
        &browser_tone,
        &dir.path().join("chromium-1.log"),
    );
    let heard = dir.path().join("native-heard-1.wav");
    let call = spawn(
        &alice,
        &["call", "web", "--video", "--json", "--for", "5s", "--play", path(&native_tone), "--record", path(&heard)],
    );
    let (ok, lines, out) = finish(call, Duration::from_secs(60));
    assert!(ok, "the CLI's call to the browser failed:\n{out}");
    let s = summary(&lines);
    assert!(s["video_packets_received"].as_u64().unwrap_or(0) > 20, "no video from the browser: {s}");
    assert_hears(&heard, 440.0, 660.0, "the CLI (calling)");
    assert_browser_got_media(&browser_report(&alice, &conv, 0), 660.0);
    drop(browser);

    // Chromium calls the CLI, and hangs up after 5 s.
    let heard = dir.path().join("native-heard-2.wav");
    let answer =
        spawn(&alice, &["answer", "--json", "--wait", "30s", "--play", path(&native_tone), "--record", path(&heard)]);
    let browser = Browser::open(
        &page(&server.url, &token, &conv, "call", Some(5000)),
        &browser_tone,
        &dir.path().join("chromium-2.log"),
    );
    let (ok, lines, out) = finish(answer, Duration::from_secs(60));
    assert!(ok, "the CLI's answer to the browser failed:\n{out}");
    let s = summary(&lines);
    assert_eq!(s["reason"], "hung_up", "{out}");
    assert!(s["video_packets_received"].as_u64().unwrap_or(0) > 20, "no video from the browser: {s}");
    assert_hears(&heard, 440.0, 660.0, "the CLI (answering)");
    assert_browser_got_media(&browser_report(&alice, &conv, 1), 660.0);
    drop(browser);
}

/// The cases around one call, with clients of the core in this process
/// (their native engines sending silence on loopback) and the real server.
mod cases {
    use super::*;
    use confab_core::call::native::audio::{AudioInput, AudioOutput};
    use confab_core::call::native::{NativeConfig, NativeEngine};
    use confab_core::{CallEndReason, CallPhase, CallView, Client, ClientEvent};
    use std::sync::Arc;
    use tokio::sync::broadcast;

    const T: Duration = Duration::from_secs(20);

    struct Device {
        client: Client,
        events: broadcast::Receiver<ClientEvent>,
        engine: Arc<NativeEngine>,
    }

    async fn device(root: &Path, server: &str, name: &str, profile: &str, register: bool) -> Device {
        device_with(root, server, name, profile, register, AudioInput::Silence, AudioOutput::Discard).await
    }

    async fn device_with(
        root: &Path,
        server: &str,
        name: &str,
        profile: &str,
        register: bool,
        input: AudioInput,
        output: AudioOutput,
    ) -> Device {
        let engine = Arc::new(NativeEngine::new(NativeConfig {
            input,
            output,
            bind: vec![[127, 0, 0, 1].into()],
            relay_only: false,
        }));
        let client = Client::open(&root.join(profile)).await.expect("profile").with_media_engine(engine.clone());
        if register {
            client.register(server, name, PASSWORD).await.expect("register");
        } else {
            client.login(server, name, PASSWORD).await.expect("login");
        }
        let events = client.subscribe();
        client.start().await.expect("start");
        client.wait_connected(T).await.expect("connected");
        Device { client, events, engine }
    }

    impl Device {
        /// The next view of a call that satisfies `want`.
        async fn until(&mut self, what: &str, want: impl FnMut(&CallView) -> bool) -> CallView {
            next_call(&mut self.events, what, want).await
        }

        async fn ringing(&mut self) -> CallView {
            self.until("ringing", |c| c.phase == CallPhase::Ringing).await
        }

        async fn active(&mut self, call: confab_protocol::CallId) -> CallView {
            self.until("active", |c| c.call == call && matches!(c.phase, CallPhase::Active { .. })).await
        }

        fn decoded(&self) -> u64 {
            self.engine.stats().audio_frames_decoded.load(std::sync::atomic::Ordering::Relaxed)
        }

        /// The call's phase now; panics if it ended since the last look.
        async fn still_in(&mut self, call: confab_protocol::CallId) -> CallPhase {
            while let Ok(e) = self.events.try_recv() {
                if let ClientEvent::Call { call: v } = e {
                    assert!(!matches!(v.phase, CallPhase::Ended { .. }), "the call ended: {v:?}");
                }
            }
            let view = self.client.current_call().await.expect("current call").expect("a call");
            assert_eq!(view.call, call);
            view.phase
        }

        async fn ended(&mut self, call: confab_protocol::CallId) -> CallEndReason {
            let v = self.until("ended", |c| c.call == call && matches!(c.phase, CallPhase::Ended { .. })).await;
            let CallPhase::Ended { reason, .. } = v.phase else { unreachable!() };
            reason
        }
    }

    fn run(test: impl std::future::Future<Output = ()>) {
        tokio::runtime::Runtime::new().expect("runtime").block_on(test)
    }

    #[test]
    fn when_both_call_at_once_one_call_survives_and_both_join_it() {
        if ran_in_loopback_namespace("calls::cases::when_both_call_at_once_one_call_survives_and_both_join_it") {
            return;
        }
        let dir = temp_dir("call-glare");
        let server = Server::start(dir.path());
        run(async {
            let mut alice = device(dir.path(), &server.url, "alice", "a", true).await;
            let mut bob = device(dir.path(), &server.url, "bob", "b", true).await;
            let conv = alice.client.open_direct("bob").await.expect("dm");
            let (a, b) = tokio::join!(alice.client.call(conv, false), bob.client.call(conv, false));
            let (a, b) = (a.expect("alice dials"), b.expect("bob dials"));
            let survivor = a.min(b);
            // The side whose call lost rings for the other's, and answers.
            let (caller, callee) = if survivor == a { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };
            let ring = callee.ringing().await;
            assert_eq!(ring.call, survivor);
            callee.client.accept_call(survivor).await.expect("accept");
            caller.active(survivor).await;
            callee.active(survivor).await;
            caller.client.hang_up(survivor).await.expect("hang up");
            assert_eq!(callee.ended(survivor).await, CallEndReason::HungUp);
            // One call, one entry.
            let calls = |h: Vec<confab_core::ChatMessage>| h.into_iter().filter_map(|m| m.call).collect::<Vec<_>>();
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let entries = calls(alice.client.history(conv, None, 20).await.expect("history"));
                if !entries.is_empty() {
                    assert_eq!(entries.len(), 1, "{entries:?}");
                    assert_eq!(entries[0].call, survivor);
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "no call entry");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    #[test]
    fn a_second_device_answers_the_first_stops_ringing_and_others_get_busy() {
        if ran_in_loopback_namespace(
            "calls::cases::a_second_device_answers_the_first_stops_ringing_and_others_get_busy",
        ) {
            return;
        }
        let dir = temp_dir("call-devices");
        let server = Server::start(dir.path());
        run(async {
            let mut alice = device(dir.path(), &server.url, "alice", "a", true).await;
            let mut bob_phone = device(dir.path(), &server.url, "bob", "b1", true).await;
            let mut bob_laptop = device(dir.path(), &server.url, "bob", "b2", false).await;
            let mut carol = device(dir.path(), &server.url, "carol", "c", true).await;
            let conv = alice.client.open_direct("bob").await.expect("dm");
            let call = alice.client.call(conv, false).await.expect("dial");
            assert_eq!(bob_phone.ringing().await.call, call);
            assert_eq!(bob_laptop.ringing().await.call, call);
            bob_laptop.client.accept_call(call).await.expect("accept");
            assert_eq!(bob_phone.ended(call).await, CallEndReason::AnsweredElsewhere);
            // The phone can no longer take it.
            assert!(bob_phone.client.accept_call(call).await.is_err());
            alice.active(call).await;
            bob_laptop.active(call).await;
            // Carol calls either of them: busy.
            for who in ["bob", "alice"] {
                let c_conv = carol.client.open_direct(who).await.expect("dm");
                let c_call = carol.client.call(c_conv, false).await.expect("dial");
                assert_eq!(carol.ended(c_call).await, CallEndReason::Busy, "calling {who}");
            }
            bob_laptop.client.hang_up(call).await.expect("hang up");
            assert_eq!(alice.ended(call).await, CallEndReason::HungUp);
        });
    }

    #[test]
    fn decline_cancel_and_no_answer_end_the_call_and_a_missed_call_is_unread() {
        if ran_in_loopback_namespace(
            "calls::cases::decline_cancel_and_no_answer_end_the_call_and_a_missed_call_is_unread",
        ) {
            return;
        }
        let dir = temp_dir("call-outcomes");
        let server = Server::start_with(
            dir.path(),
            0,
            &["--rate-limit", "1000000", "--rate-burst", "1000000", "--call-ring-seconds", "2"],
        );
        run(async {
            let mut alice = device(dir.path(), &server.url, "alice", "a", true).await;
            let mut bob = device(dir.path(), &server.url, "bob", "b", true).await;
            let conv = alice.client.open_direct("bob").await.expect("dm");

            let call = alice.client.call(conv, false).await.expect("dial");
            bob.ringing().await;
            bob.client.decline_call(call).await.expect("decline");
            assert_eq!(alice.ended(call).await, CallEndReason::Declined);
            assert_eq!(bob.ended(call).await, CallEndReason::EndedHere);

            let call = alice.client.call(conv, false).await.expect("dial");
            bob.ringing().await;
            alice.client.hang_up(call).await.expect("cancel");
            assert_eq!(bob.ended(call).await, CallEndReason::Cancelled);

            let call = alice.client.call(conv, true).await.expect("dial");
            bob.ringing().await;
            assert_eq!(alice.ended(call).await, CallEndReason::Missed);
            assert_eq!(bob.ended(call).await, CallEndReason::Missed);

            // The entries, in order; the missed and cancelled ones are unread.
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let summary = bob.client.conversations().await.expect("list");
                let history = bob.client.history(conv, None, 20).await.expect("history");
                let outcomes: Vec<String> =
                    history.iter().filter_map(|m| m.call).map(|c| confab_protocol::CallRecord::summary(&c)).collect();
                if outcomes.len() == 3 {
                    assert_eq!(outcomes, ["Declined voice call", "Cancelled voice call", "Missed video call"]);
                    let unread = summary.iter().find(|c| c.id == conv).map(|c| c.unread);
                    assert_eq!(unread, Some(2));
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "entries: {outcomes:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    /// Alice calls bob and bob answers; both see media flowing.
    async fn answered(
        alice: &mut Device,
        bob: &mut Device,
    ) -> (confab_protocol::ConversationId, confab_protocol::CallId) {
        let conv = alice.client.open_direct("bob").await.expect("dm");
        let call = alice.client.call(conv, false).await.expect("dial");
        bob.ringing().await;
        bob.client.accept_call(call).await.expect("accept");
        alice.active(call).await;
        bob.active(call).await;
        (conv, call)
    }

    async fn entry(device: &Device, conv: confab_protocol::ConversationId) -> confab_protocol::CallRecord {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let history = device.client.history(conv, None, 20).await.expect("history");
            if let Some(c) = history.iter().rev().find_map(|m| m.call) {
                return c;
            }
            assert!(tokio::time::Instant::now() < deadline, "no call entry");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn an_answered_call_outlives_a_signaling_outage_and_the_device_rejoins_it() {
        if ran_in_loopback_namespace(
            "calls::cases::an_answered_call_outlives_a_signaling_outage_and_the_device_rejoins_it",
        ) {
            return;
        }
        let dir = temp_dir("call-outage");
        // A grace well beyond the link's reconnect backoff after a 2 s cut
        // (attempts at 0.25, 0.75, 1.75, 3.75 s …, with jitter).
        let server = Server::start_with(dir.path(), 0, &["--call-rejoin-seconds", "10"]);
        // Alice reaches the server through a link the test can cut.
        let proxy = Proxy::start(&server.url);
        run(async {
            let mut alice = device(dir.path(), &proxy.url, "alice", "a", true).await;
            let mut bob = device(dir.path(), &server.url, "bob", "b", true).await;
            // The server counts from its answer, which comes between
            // ringing and media flowing (set-up takes a second longer now
            // and then: a DTLS flight retransmitted).
            let ringing = tokio::time::Instant::now();
            let (conv, call) = answered(&mut alice, &mut bob).await;
            let started = tokio::time::Instant::now();
            let before = (alice.decoded(), bob.decoded());
            proxy.cut();
            let cut_at = tokio::time::Instant::now();
            tokio::time::sleep(Duration::from_secs(2)).await;
            // Media runs peer to peer: both still hear each other.
            let during = (alice.decoded(), bob.decoded());
            assert!(during.0 >= before.0 + 50 && during.1 >= before.1 + 50, "{before:?} -> {during:?}");
            assert!(matches!(alice.still_in(call).await, CallPhase::Active { .. }));
            proxy.restore();
            alice.client.wait_connected(T).await.expect("reconnects");
            // Past the server's rejoin grace, counted from the cut: had
            // alice not rejoined, the server would have ended the call.
            tokio::time::sleep_until(cut_at + Duration::from_secs(11)).await;
            assert!(matches!(alice.still_in(call).await, CallPhase::Active { .. }));
            assert!(matches!(bob.still_in(call).await, CallPhase::Active { .. }));
            // Signaling reaches alice again: bob hangs up, she hears of it.
            bob.client.hang_up(call).await.expect("hang up");
            assert_eq!(alice.ended(call).await, CallEndReason::HungUp);
            let (least, most) = (started.elapsed().as_millis() as i64, ringing.elapsed().as_millis() as i64);
            match entry(&bob, conv).await.outcome {
                confab_protocol::CallOutcome::Completed { duration_ms } => {
                    assert!((least - 1000..=most + 1000).contains(&duration_ms), "{duration_ms} vs {least}..{most}")
                }
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn a_device_that_stays_away_ends_the_call_as_connection_lost_and_learns_it_on_return() {
        if ran_in_loopback_namespace(
            "calls::cases::a_device_that_stays_away_ends_the_call_as_connection_lost_and_learns_it_on_return",
        ) {
            return;
        }
        let dir = temp_dir("call-gone");
        let server = Server::start_with(dir.path(), 0, &["--call-rejoin-seconds", "2"]);
        let proxy = Proxy::start(&server.url);
        run(async {
            let mut alice = device(dir.path(), &proxy.url, "alice", "a", true).await;
            let mut bob = device(dir.path(), &server.url, "bob", "b", true).await;
            let (conv, call) = answered(&mut alice, &mut bob).await;
            proxy.cut();
            assert_eq!(bob.ended(call).await, CallEndReason::ConnectionLost);
            assert!(matches!(entry(&bob, conv).await.outcome, confab_protocol::CallOutcome::Completed { .. }));
            // Back online, alice learns at once that the call is over,
            // rather than after her own media grace.
            proxy.restore();
            let back = tokio::time::Instant::now();
            assert_eq!(alice.ended(call).await, CallEndReason::ConnectionLost);
            assert!(back.elapsed() < Duration::from_secs(10), "{:?}", back.elapsed());
            // And both are free for the next call.
            answered(&mut alice, &mut bob).await;
        });
    }

    fn set_loopback(up: bool) {
        let state = if up { "up" } else { "down" };
        let out = std::process::Command::new("ip").args(["link", "set", "lo", state]).output().expect("ip");
        assert!(out.status.success(), "ip link set lo {state}: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn a_network_drop_shows_reconnecting_and_the_call_comes_back() {
        if ran_in_loopback_namespace("calls::cases::a_network_drop_shows_reconnecting_and_the_call_comes_back") {
            return;
        }
        let dir = temp_dir("call-network-drop");
        let server = Server::start(dir.path());
        run(async {
            let mut alice = device(dir.path(), &server.url, "alice", "a", true).await;
            let mut bob = device(dir.path(), &server.url, "bob", "b", true).await;
            let (_conv, call) = answered(&mut alice, &mut bob).await;
            // The whole network goes: media and signaling alike (this
            // namespace has nothing but loopback).
            set_loopback(false);
            let reconnecting = |c: &CallView| c.call == call && matches!(c.phase, CallPhase::Reconnecting { .. });
            alice.until("alice reconnecting", reconnecting).await;
            bob.until("bob reconnecting", reconnecting).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            set_loopback(true);
            alice.active(call).await;
            bob.active(call).await;
            // Sound flows both ways again (within a few seconds: ICE is
            // up, the first packets may still be on their way).
            let before = (alice.decoded(), bob.decoded());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let after = (alice.decoded(), bob.decoded());
                if after.0 >= before.0 + 25 && after.1 >= before.1 + 25 {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{before:?} -> {after:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            alice.client.hang_up(call).await.expect("hang up");
            assert_eq!(bob.ended(call).await, CallEndReason::HungUp);
        });
    }

    #[test]
    fn a_running_call_switches_to_another_microphone_and_speaker() {
        if ran_in_loopback_namespace("calls::cases::a_running_call_switches_to_another_microphone_and_speaker") {
            return;
        }
        let dir = temp_dir("call-switch-devices");
        let server = Server::start(dir.path());
        let (a1, a2, b_tone) = (dir.path().join("a440.wav"), dir.path().join("a550.wav"), dir.path().join("b660.wav"));
        write_tone(&a1, 440.0, 20.0);
        write_tone(&a2, 550.0, 20.0);
        write_tone(&b_tone, 660.0, 20.0);
        let (bob_heard, alice_first, alice_second) =
            (dir.path().join("bob-heard.wav"), dir.path().join("alice-1.wav"), dir.path().join("alice-2.wav"));
        run(async {
            let mut alice = device_with(
                dir.path(),
                &server.url,
                "alice",
                "a",
                true,
                AudioInput::Wav(a1.clone()),
                AudioOutput::Wav(alice_first.clone()),
            )
            .await;
            let mut bob = device_with(
                dir.path(),
                &server.url,
                "bob",
                "b",
                true,
                AudioInput::Wav(b_tone.clone()),
                AudioOutput::Wav(bob_heard.clone()),
            )
            .await;
            let (_conv, call) = answered(&mut alice, &mut bob).await;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            // A device that does not exist changes nothing.
            let missing = alice.engine.use_devices(AudioInput::Wav(dir.path().join("none.wav")), AudioOutput::Discard);
            assert!(missing.is_err());
            alice
                .engine
                .use_devices(AudioInput::Wav(a2.clone()), AudioOutput::Wav(alice_second.clone()))
                .expect("switch devices");
            tokio::time::sleep(Duration::from_millis(2500)).await;
            bob.client.hang_up(call).await.expect("hang up");
            alice.ended(call).await;
        });
        // Bob heard the first microphone, then the second.
        let (samples, rate) = read_wav(&bob_heard);
        let map: String = samples
            .chunks_exact(rate as usize / 10)
            .map(|w| {
                let (a, b) = (tone_level(w, rate, 440.0), tone_level(w, rate, 550.0));
                if a > 0.05 && a > 10.0 * b {
                    '1'
                } else if b > 0.05 && b > 10.0 * a {
                    '2'
                } else {
                    '.'
                }
            })
            .collect();
        let first = map.find('1').expect(&map);
        let switch = map.find('2').expect(&map);
        assert!(switch > first && !map[switch..].contains('1'), "{map}");
        assert!(map[first..switch].matches('1').count() >= 15 && map[switch..].matches('2').count() >= 15, "{map}");
        // Alice's first speaker played bob until the switch, the second after it.
        for (wav, who) in [(&alice_first, "alice's first speaker"), (&alice_second, "alice's second speaker")] {
            let (samples, rate) = read_wav(wav);
            assert!(samples.len() as u32 > rate * 2, "{who} got {} samples", samples.len());
            let (share, windows) = share_hearing(&samples[rate as usize / 2..], rate, 660.0, 440.0, 0.05);
            assert!(share > 0.8, "{who} heard bob in {:.0}% of {windows} windows", share * 100.0);
        }
    }

    #[test]
    fn a_muted_microphone_sends_silence_until_unmuted() {
        if ran_in_loopback_namespace("calls::cases::a_muted_microphone_sends_silence_until_unmuted") {
            return;
        }
        let dir = temp_dir("call-mute");
        let server = Server::start(dir.path());
        let (tone, heard) = (dir.path().join("a440.wav"), dir.path().join("bob-heard.wav"));
        write_tone(&tone, 440.0, 20.0);
        run(async {
            let mut alice = device_with(
                dir.path(),
                &server.url,
                "alice",
                "a",
                true,
                AudioInput::Wav(tone.clone()),
                AudioOutput::Discard,
            )
            .await;
            let mut bob = device_with(
                dir.path(),
                &server.url,
                "bob",
                "b",
                true,
                AudioInput::Silence,
                AudioOutput::Wav(heard.clone()),
            )
            .await;
            let (_conv, call) = answered(&mut alice, &mut bob).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            alice.client.set_call_muted(call, true).await.expect("mute");
            assert!(alice.until("muted", |c| c.muted).await.muted);
            tokio::time::sleep(Duration::from_millis(2000)).await;
            alice.client.set_call_muted(call, false).await.expect("unmute");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            bob.client.hang_up(call).await.expect("hang up");
            alice.ended(call).await;
            // An ended call cannot be muted.
            assert!(bob.client.set_call_muted(call, true).await.is_err());
        });
        // Tone, then about two seconds of silence, then tone again.
        let (samples, rate) = read_wav(&heard);
        let windows: Vec<bool> =
            samples.chunks_exact(rate as usize / 10).map(|w| tone_level(w, rate, 440.0) > 0.05).collect();
        let map: String = windows.iter().map(|t| if *t { '#' } else { '.' }).collect();
        let first = windows.iter().position(|t| *t).expect(&map);
        let gap_start = first + windows[first..].iter().position(|t| !*t).expect(&map);
        let gap = windows[gap_start..].iter().position(|t| *t).expect(&map);
        assert!((15..=25).contains(&gap), "a gap of {gap} windows: {map}");
        let after = windows[gap_start + gap..].iter().filter(|t| **t).count();
        assert!(after >= 10, "the tone came back: {map}");
    }
}
