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
fn spawn(p: &Profile, args: &[&str]) -> Child {
    p.cmd(args)
        .env("CONFAB_MEDIA_BIND", "127.0.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn confab")
}

/// Waits for a call command to end; its JSON lines and whether it succeeded.
fn finish(child: Child, limit: Duration) -> (bool, Vec<Value>, String) {
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

fn summary(lines: &[Value]) -> &Value {
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
fn assert_hears(path: &Path, want: f64, other: f64, who: &str) {
    let (samples, rate) = read_wav(path);
    assert_eq!(rate, 48_000);
    // Skip the first half second (the link coming up, Opus settling).
    let samples = &samples[(rate as usize / 2).min(samples.len())..];
    let seconds = samples.len() as f64 / rate as f64;
    assert!(seconds > 3.0, "{who} recorded only {seconds:.1} s");
    let (share, windows) = share_hearing(samples, rate, want, other, 0.05);
    assert!(share > 0.8, "{who} heard {want} Hz in only {:.0}% of {windows} windows", share * 100.0);
    // A sensible level: the sender plays at half scale.
    let level = tone_level(samples, rate, want);
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
        assert!((logged - a_ms).abs() <= 1_000, "logged {logged} ms, alice measured {a_ms} ms");
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
