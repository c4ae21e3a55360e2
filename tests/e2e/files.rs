//! Big files through real processes: the server or the client SIGKILLed
//! half way through a 20 MB upload, and the upload resumes from what the
//! server had committed, not from zero.

use confab_tests::*;
use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SIZE: usize = 20 * 1024 * 1024;

fn file_bytes(seed: u64) -> Vec<u8> {
    // Not repeating, so a resume from the wrong offset cannot pass.
    let mut x = seed | 1;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A `confab send --file … --progress` or `confab flush --progress`, with
/// its progress lines (`upload <id> <file>: <sent>/<total>`) as numbers.
fn with_progress(profile: &Profile, args: &[&str]) -> (Child, mpsc::Receiver<u64>) {
    let mut child = profile.cmd(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let sent = line
                .strip_prefix("upload ")
                .and_then(|rest| rest.rsplit_once(": "))
                .and_then(|(_, n)| n.split_once('/'))
                .and_then(|(sent, _)| sent.parse().ok());
            if let Some(sent) = sent {
                let _ = tx.send(sent);
            } else {
                eprintln!("confab: {line}");
            }
        }
    });
    (child, rx)
}

/// Waits for progress of at least `at` bytes; returns the last seen.
fn progress_past(rx: &mpsc::Receiver<u64>, at: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let sent = rx.recv_timeout(left).expect("upload progress");
        if sent >= at {
            return sent;
        }
    }
}

/// The rest of the progress once the process ended, in order.
fn drain(rx: &mpsc::Receiver<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(n) = rx.recv_timeout(Duration::from_secs(2)) {
        out.push(n);
    }
    out
}

fn attachment_hashes(profile: &Profile, conversation: &str) -> Vec<String> {
    profile
        .history(conversation, 50)
        .iter()
        .flat_map(|m| m["attachments"].as_array().cloned().unwrap_or_default())
        .map(|a| a["hash"].as_str().expect("hash").to_owned())
        .collect()
}

#[test]
fn a_20_mb_upload_resumes_from_the_committed_offset_after_the_server_or_the_client_is_killed() {
    let dir = temp_dir("files");
    let mut server = Server::start(&dir.path().join("server"));
    let alice = Profile::register(dir.path(), &server.url, "alice");
    let bob = Profile::register(dir.path(), &server.url, "bob");
    let conv = alice.ok(&["dm", "bob"]);
    let half = (SIZE / 2) as u64;

    // The server is killed half way; the client waits, and resumes once
    // it is back.
    let first = file_bytes(1);
    let path = dir.path().join("first.bin");
    std::fs::write(&path, &first).expect("write");
    let (mut send, progress) =
        with_progress(&alice, &["send", &conv, "--file", path.to_str().expect("path"), "--progress"]);
    let acknowledged = progress_past(&progress, half);
    server.kill();
    assert!(acknowledged < SIZE as u64, "killed before the upload finished");
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    let status = wait_child(&mut send, Duration::from_secs(120));
    assert!(status.success(), "send finished: {status}");
    let after = drain(&progress);
    assert!(!after.is_empty(), "the upload went on after the restart");
    // What the server had acknowledged was not sent again.
    assert!(after[0] > acknowledged, "resumed at {} after {acknowledged} was committed", after[0]);
    assert!(after.windows(2).all(|w| w[0] <= w[1]), "progress never goes back: {after:?}");
    assert_eq!(after.last(), Some(&(SIZE as u64)));
    assert_eq!(attachment_hashes(&bob, &conv), vec![hex(&first)]);
    let out = dir.path().join("got-first.bin");
    bob.ok(&["download", &hex(&first), "--out", out.to_str().expect("path")]);
    assert!(std::fs::read(&out).expect("read") == first, "bob's copy is the file");

    // The client is killed half way; the next run of the same profile
    // resumes from the server's committed offset.
    let second = file_bytes(2);
    let path = dir.path().join("second.bin");
    std::fs::write(&path, &second).expect("write");
    let (mut send, progress) =
        with_progress(&alice, &["send", &conv, "--file", path.to_str().expect("path"), "--progress"]);
    let acknowledged = progress_past(&progress, half);
    let _ = send.kill();
    let _ = send.wait();
    assert!(acknowledged < SIZE as u64, "killed before the upload finished");
    let (mut flush, progress) = with_progress(&alice, &["flush", "--progress"]);
    let status = wait_child(&mut flush, Duration::from_secs(120));
    assert!(status.success(), "flush finished: {status}");
    let after = drain(&progress);
    assert!(!after.is_empty(), "the upload went on in the new process");
    assert!(after[0] > acknowledged, "resumed at {} after {acknowledged} was committed", after[0]);
    assert_eq!(after.last(), Some(&(SIZE as u64)));
    assert_eq!(attachment_hashes(&bob, &conv), vec![hex(&first), hex(&second)]);
    let out = dir.path().join("got-second.bin");
    bob.ok(&["download", &hex(&second), "--out", out.to_str().expect("path")]);
    assert!(std::fs::read(&out).expect("read") == second, "bob's copy is the file");
    // Nothing stayed behind in the server's unfinished uploads.
    let left = std::fs::read_dir(dir.path().join("server").join("media").join("uploads")).expect("dir").count();
    assert_eq!(left, 0);
}

#[test]
fn search_from_the_cli_never_crosses_into_other_peoples_conversations() {
    let dir = temp_dir("search");
    let server = Server::start(&dir.path().join("server"));
    let alice = Profile::register(dir.path(), &server.url, "alice");
    let bob = Profile::register(dir.path(), &server.url, "bob");
    let carol = Profile::register(dir.path(), &server.url, "carol");
    let ab = alice.ok(&["dm", "bob"]);
    let bc = bob.ok(&["dm", "carol"]);
    alice.ok(&["send", &ab, "secret rendezvous at noon"]);
    bob.ok(&["send", &bc, "another rendezvous, carol"]);
    let hits = |p: &Profile, extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["search", "rendezvous", "--json"];
        args.extend_from_slice(extra);
        p.ok(&args).lines().map(|l| serde_json::from_str(l).expect("json")).collect()
    };
    let convs = |hits: &[serde_json::Value]| -> Vec<String> {
        let mut c: Vec<String> = hits.iter().map(|h| h["conversation"].as_str().expect("c").to_owned()).collect();
        c.sort();
        c
    };
    assert_eq!(convs(&hits(&alice, &[])), vec![ab.clone()]);
    assert_eq!(convs(&hits(&carol, &[])), vec![bc.clone()]);
    let mut both = vec![ab.clone(), bc.clone()];
    both.sort();
    assert_eq!(convs(&hits(&bob, &[])), both);
    let h = &hits(&alice, &[])[0];
    assert_eq!(h["sender"], "alice");
    assert!(h["snippet"].as_str().expect("snippet").contains("\u{2}rendezvous\u{3}"), "{h}");
    let text = alice.ok(&["search", "rendezvous"]);
    assert!(text.contains("[rendezvous]"), "{text}");
    // Asking about someone else's conversation by id gets nothing.
    let out = alice.run(&["search", "rendezvous", "--conversation", &bc]);
    assert!(!out.status.success() || out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}
