//! Two and three users chatting through the CLI: receipts, edits, deletes,
//! reactions, pins, typing, presence, groups and authorization.

use confab_tests::*;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn has(events: &[Value], pred: impl Fn(&Value) -> bool) -> bool {
    events.iter().any(pred)
}

#[test]
fn two_users_exchange_messages_with_receipts_edits_deletes_reactions_and_pins() {
    let tmp = temp_dir("chat");
    let server = Server::start(&tmp.path().join("server"));
    let alice = Profile::register(tmp.path(), &server.url, "alice");
    let bob = Profile::register(tmp.path(), &server.url, "bob");
    let conv = alice.ok(&["dm", "bob"]);
    assert_eq!(bob.ok(&["dm", "alice"]), conv, "exactly one direct conversation per pair");

    let a = alice.listen();
    let b = bob.listen();
    alice.ok(&["send", &conv, "hello", "bob"]);
    assert!(b.wait(T, |e| has(e, |v| v["type"] == "message"
        && v["text"] == "hello bob"
        && v["sender"] == "alice"
        && v["seq"] == 1)));

    // Bob's device acknowledged delivery; alice sees the receipt live.
    assert!(a.wait(T, |e| has(e, |v| v["type"] == "receipt" && v["user"] == "bob" && v["delivered_seq"] == 1)));
    bob.ok(&["read", &conv]);
    assert!(a.wait(T, |e| has(e, |v| v["type"] == "receipt" && v["user"] == "bob" && v["read_seq"] == 1)));
    let h = alice.history(&conv, 10);
    assert_eq!(h[0]["status"], "read");

    bob.ok(&["send", &conv, "hi alice"]);
    assert!(a.wait(T, |e| has(e, |v| v["type"] == "message"
        && v["text"] == "hi alice"
        && v["sender"] == "bob"
        && v["seq"] == 2)));

    alice.ok(&["edit", &conv, "1", "hello bob (fixed)"]);
    assert!(b.wait(T, |e| has(e, |v| v["type"] == "message_updated"
        && v["text"] == "hello bob (fixed)"
        && v["edited"] == true)));

    bob.ok(&["react", &conv, "1", "👍"]);
    assert!(a.wait(T, |e| has(e, |v| v["type"] == "message_updated"
        && v["seq"] == 1
        && v["reactions"][0]["emoji"] == "👍")));
    bob.ok(&["react", &conv, "1", "👍", "--remove"]);
    assert!(a.wait(T, |e| has(e, |v| v["type"] == "message_updated"
        && v["seq"] == 1
        && v["reactions"].as_array().is_some_and(|r| r.is_empty()))));

    alice.ok(&["pin", &conv, "2"]);
    assert!(b.wait(T, |e| has(e, |v| v["type"] == "message_updated" && v["seq"] == 2 && v["pinned"] == true)));

    // Only the sender may edit; delete leaves a tombstone.
    let err = bob.fails(&["edit", &conv, "1", "not mine"]);
    assert!(err.contains("sender"), "{err}");
    alice.ok(&["delete", &conv, "1"]);
    assert!(b.wait(T, |e| has(e, |v| v["type"] == "message_updated"
        && v["seq"] == 1
        && v["deleted"] == true
        && v["text"] == "")));
    let h = bob.history(&conv, 10);
    assert_eq!(h.len(), 2);
    assert_eq!(h[0]["deleted"], true);
    assert_eq!(h[1]["pinned"], true);

    // All of it was persisted: a fresh device of bob's sees the same state.
    let fresh = Profile::new(&tmp.path().join("fresh"), &server.url, "bob");
    fresh.ok(&["login", "bob"]);
    let h2 = fresh.history(&conv, 10);
    assert_eq!(h2.len(), 2);
    assert_eq!(h2[0]["deleted"], true);
    assert_eq!(h2[1]["pinned"], true);
    assert_eq!(h2[1]["text"], "hi alice");
}

#[test]
fn typing_and_presence_reach_only_people_who_share_a_conversation() {
    let tmp = temp_dir("presence");
    let server = Server::start(&tmp.path().join("server"));
    let alice = Profile::register(tmp.path(), &server.url, "alice");
    let bob = Profile::register(tmp.path(), &server.url, "bob");
    let carol = Profile::register(tmp.path(), &server.url, "carol");
    let conv = alice.ok(&["dm", "bob"]);
    let b = bob.listen();
    let c = carol.listen();
    assert!(b.wait(T, |e| has(e, |v| v["type"] == "synced")));
    assert!(c.wait(T, |e| has(e, |v| v["type"] == "synced")));

    let mut a = alice.listen();
    assert!(b.wait(T, |e| has(e, |v| v["type"] == "presence" && v["user"] == "alice" && v["online"] == true)));
    alice.ok(&["typing", &conv]);
    assert!(
        b.wait(T, |e| has(e, |v| v["type"] == "typing" && v["user"] == "alice" && v["conversation"] == conv.as_str()))
    );
    a.kill();
    assert!(b.wait(T, |e| has(e, |v| v["type"] == "presence"
        && v["user"] == "alice"
        && v["online"] == false
        && v["last_seen"].is_i64())));

    // Carol shares nothing with alice: she saw none of it.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !has(&c.events(), |v| v["type"] == "typing" || (v["type"] == "presence" && v["user"] == "alice")),
        "{:?}",
        c.events()
    );
}

#[test]
fn non_members_cannot_read_send_react_or_receive() {
    let tmp = temp_dir("authz");
    let server = Server::start(&tmp.path().join("server"));
    let alice = Profile::register(tmp.path(), &server.url, "alice");
    let _bob = Profile::register(tmp.path(), &server.url, "bob");
    let carol = Profile::register(tmp.path(), &server.url, "carol");
    let conv = alice.ok(&["dm", "bob"]);
    let c = carol.listen();
    alice.ok(&["send", &conv, "private"]);

    let err = carol.fails(&["history", &conv]);
    assert!(err.contains("not a member"), "{err}");
    let err = carol.fails(&["send", &conv, "let me in"]);
    assert!(err.contains("not a member"), "{err}");
    let err = carol.fails(&["react", &conv, "1", "👀"]);
    assert!(err.contains("not a member"), "{err}");
    let err = carol.fails(&["dm", "nobody-here"]);
    assert!(err.contains("no user"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.messages().is_empty(), "carol received {:?}", c.messages());

    // Wrong password and unknown user get the same clear answer.
    let out = Profile::new(&tmp.path().join("x"), &server.url, "alice")
        .cmd(&["login", "alice"])
        .env("CONFAB_PASSWORD", "wrong password")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong username or password"));
}

#[test]
fn group_admins_manage_members_and_removed_members_lose_access() {
    let tmp = temp_dir("group");
    let server = Server::start(&tmp.path().join("server"));
    let alice = Profile::register(tmp.path(), &server.url, "alice");
    let bob = Profile::register(tmp.path(), &server.url, "bob");
    let carol = Profile::register(tmp.path(), &server.url, "carol");
    let group = alice.ok(&["group", "create", "friends", "bob"]);

    let err = bob.fails(&["group", "add", &group, "carol"]);
    assert!(err.contains("admin"), "{err}");
    alice.ok(&["group", "add", &group, "carol"]);
    let c = carol.listen();
    bob.ok(&["send", &group, "welcome carol"]);
    assert!(c.wait(T, |e| has(e, |v| v["type"] == "message" && v["text"] == "welcome carol" && v["sender"] == "bob")));

    alice.ok(&["group", "rename", &group, "best friends"]);
    let list = carol.ok(&["conversations", "--json"]);
    assert!(list.contains("best friends"), "{list}");

    alice.ok(&["group", "remove", &group, "bob"]);
    let err = bob.fails(&["send", &group, "still here?"]);
    assert!(err.contains("not a member"), "{err}");
    // Carol (a member) can delete only her own messages; alice (admin) any.
    carol.fails(&["delete", &group, "1"]);
    alice.ok(&["delete", &group, "1"]);
}

#[test]
fn with_the_server_down_the_cli_shows_the_cache_at_once_and_says_it_is_offline() {
    let tmp = temp_dir("offline");
    let mut server = Server::start(&tmp.path().join("server"));
    let alice = Profile::register(tmp.path(), &server.url, "alice");
    let bob = Profile::register(tmp.path(), &server.url, "bob");
    let conv = alice.ok(&["dm", "bob"]);
    alice.ok(&["send", &conv, "cached for later"]);
    assert_eq!(bob.history(&conv, 10).len(), 1);
    server.kill();

    // Refused connections are known at once: no waiting out a sync timeout
    // (which was 15 s). The bound here only catches a hang.
    let mut child = bob
        .cmd(&["history", &conv, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_child(&mut child, Duration::from_secs(8));
    assert!(status.success());
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("offline"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cached for later"), "{stdout}");
}

#[test]
fn a_user_signs_another_device_out_from_the_cli() {
    let tmp = temp_dir("sessions");
    let server = Server::start(&tmp.path().join("server"));
    let laptop = Profile::register(tmp.path(), &server.url, "alice");
    let phone = Profile { dir: tmp.path().join("alice-phone"), ..Profile::new(tmp.path(), &server.url, "alice") };
    phone.ok(&["login", "alice"]);
    let mut listening = phone.listen();
    assert!(listening.wait(T, |e| e.iter().any(|v| v["type"] == "synced")));
    let out = laptop.ok(&["sessions", "--json"]);
    let sessions: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(sessions.len(), 2);
    let other = sessions.iter().find(|s| s["current"] == false).expect("the phone");
    let human = laptop.ok(&["sessions"]);
    assert!(human.contains("(this device)"), "{human}");
    laptop.ok(&["sessions", "revoke", other["id"].as_str().expect("id")]);
    // The phone is signed out: its listener stops with an error, and the
    // device cannot come back.
    assert!(wait_until(T, || listening.exited().is_some_and(|s| !s.success())));
    let err = phone.fails(&["conversations"]);
    assert!(err.contains("login"), "{err}");
    assert_eq!(laptop.ok(&["sessions", "--json"]).lines().count(), 1);
}
