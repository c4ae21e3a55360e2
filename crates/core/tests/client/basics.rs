//! Sending, ticks, the outbox, history, reconnects, the keychain.

use crate::support::*;
use confab_core::{Client, ClientEvent, ConnectionState, LinkConfig, MessageStatus, SendOutcome};
use confab_protocol::ErrorCode;
use std::path::Path;
use std::time::Duration;

#[tokio::test]
async fn own_message_ticks_go_queued_sent_delivered_read() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    let mut events = alice.subscribe();
    let id = alice.send(conv, "tick tock").await.expect("queued");
    // The first word about the message is that it is queued, with no seq.
    let first = wait_for(
        &mut events,
        |e| matches!(e, ClientEvent::MessageUpdated { message } if message.client_id == Some(id)),
    )
    .await;
    let ClientEvent::MessageUpdated { message } = first else { unreachable!() };
    assert_eq!((message.status, message.seq), (MessageStatus::Queued, None));
    let outcome = alice.wait_sent(&[id]).await.expect("sent");
    assert_eq!(outcome, vec![SendOutcome::Sent { seq: 1 }]);
    // Bob's device acknowledges delivery by itself.
    wait_for(&mut events, |e| matches!(e, ClientEvent::Receipt { delivered_seq: 1, .. })).await;
    assert_eq!(status_of(&alice, id).await, MessageStatus::Delivered);
    bob.mark_read(conv, 1).await.expect("read");
    wait_for(&mut events, |e| matches!(e, ClientEvent::Receipt { read_seq: 1, .. })).await;
    assert_eq!(status_of(&alice, id).await, MessageStatus::Read);
    let convs = bob.conversations().await.expect("list");
    assert_eq!(convs[0].title, "alice");
    assert_eq!(convs[0].unread, 0);
    assert_eq!(convs[0].last_message.as_ref().map(|m| m.text.as_str()), Some("tick tock"));
}

#[tokio::test]
async fn ticks_and_reads_from_other_devices_that_happened_while_offline_arrive_with_the_sync() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(alice.send(conv, &format!("to bob {i}")).await.expect("queued"));
    }
    alice.wait_sent(&mine).await.expect("sent");
    let mut bob_events = bob.subscribe();
    bob.send(conv, "to alice").await.expect("queued");
    wait_for(&mut bob_events, |e| matches!(e, ClientEvent::Receipt { delivered_seq: 4, .. })).await;
    // Alice is away; meanwhile bob reads everything, and alice reads bob's
    // message on another device of hers.
    alice.stop().await;
    let mut bob_events = bob.subscribe();
    bob.mark_read(conv, 4).await.expect("read");
    let alice_phone = w.client("alice-phone").await;
    alice_phone.login(&w.url, "alice", PASSWORD).await.expect("login");
    start_synced(&alice_phone).await;
    alice_phone.mark_read(conv, 4).await.expect("read");
    wait_for(&mut bob_events, |e| matches!(e, ClientEvent::Receipt { read_seq: 4, .. })).await;
    assert_eq!(alice.conversation(conv).await.expect("cache").expect("known").unread, 1, "not yet known here");

    // Back: one sync brings both, though no event was logged for either.
    drop(alice);
    let alice = w.client("alice").await;
    start_synced(&alice).await;
    for id in &mine {
        assert_eq!(status_of(&alice, *id).await, MessageStatus::Read);
    }
    assert_eq!(alice.conversation(conv).await.expect("cache").expect("known").unread, 0);
    assert_eq!(alice.unread_total().await.expect("total"), 0);
}

#[tokio::test]
async fn a_refused_message_is_marked_failed_with_its_reason_and_does_not_block_the_rest() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let _bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    let not_mine = uuid::Uuid::now_v7();
    let refused = alice.send(not_mine, "into the void").await.expect("queued locally");
    let fine = alice.send(conv, "this one works").await.expect("queued");
    let outcomes = alice.wait_sent(&[refused, fine]).await.expect("settled");
    match &outcomes[0] {
        SendOutcome::Failed(e) => assert_eq!(e.code, ErrorCode::NotMember),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(outcomes[1], SendOutcome::Sent { seq: 1 });
    assert_eq!(status_of(&alice, refused).await, MessageStatus::Failed);
    assert_eq!(alice.outbox_len().await.expect("outbox"), 0);
}

#[tokio::test]
async fn queued_messages_survive_a_client_restart_and_go_out_once_in_order() {
    let mut w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    w.stop_server().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(alice.send(conv, &format!("offline {i}")).await.expect("queued"));
    }
    // The process "restarts": a new client on the same profile.
    alice.stop().await;
    drop(alice);
    let alice = w.client("alice").await;
    assert_eq!(alice.outbox_len().await.expect("outbox"), 20);
    alice.start().await.expect("start");
    w.restart_server().await;
    let outcomes = alice.wait_sent(&ids).await.expect("sent");
    let seqs: Vec<_> = outcomes
        .iter()
        .map(|o| match o {
            SendOutcome::Sent { seq } => *seq,
            f => panic!("{f:?}"),
        })
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    tokio::time::timeout(T, async {
        loop {
            if bob.history(conv, None, 50).await.expect("history").len() == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("bob catches up");
    let texts: Vec<String> = bob.history(conv, None, 50).await.expect("history").into_iter().map(|m| m.text).collect();
    assert_eq!(texts, (0..20).map(|i| format!("offline {i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn history_pages_come_from_the_cache_then_the_server_and_work_offline() {
    let mut w = World::new().await;
    let alice = w.user("alice").await;
    let _bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    let mut ids = Vec::new();
    for i in 1..=1200 {
        ids.push(alice.send(conv, &format!("m{i}")).await.expect("queued"));
    }
    alice.wait_sent(&ids).await.expect("sent");

    // A new device of bob's starts empty and pages back through the server.
    let bob2 = w.client("bob2").await;
    bob2.login(&w.url, "bob", PASSWORD).await.expect("login");
    start_synced(&bob2).await;
    let newest = bob2.history(conv, None, 100).await.expect("page");
    assert_eq!(newest.len(), 100);
    assert_eq!(newest.last().map(|m| m.seq), Some(Some(1200)));
    let mut before = newest[0].seq;
    let mut all = newest.len();
    while let Some(b) = before {
        let page = bob2.history(conv, Some(b), 300).await.expect("older page");
        if page.is_empty() {
            break;
        }
        assert_eq!(page.last().and_then(|m| m.seq), Some(b - 1), "contiguous pages");
        all += page.len();
        before = page[0].seq;
    }
    assert_eq!(all, 1200);

    // Offline, the cache still answers.
    w.stop_server().await;
    let cached = bob2.history(conv, Some(50), 10).await.expect("cached page");
    let seqs: Vec<_> = cached.iter().filter_map(|m| m.seq).collect();
    assert_eq!(seqs, (40..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn after_a_restore_from_an_older_copy_every_client_converges_and_nothing_is_lost() {
    let mut w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    let ids = vec![alice.send(conv, "kept").await.expect("q")];
    alice.wait_sent(&ids).await.expect("sent");
    assert_eq!(texts_when(&bob, conv, 1).await, ["kept"]);

    // Back up the server, then let the conversation move on.
    w.stop_server().await;
    let backup = w.dir.path().join("backup");
    std::fs::create_dir_all(&backup).expect("dir");
    for f in ["server.db", "server.db-wal", "server.db-shm"] {
        let _ = std::fs::copy(w.dir.path().join(f), backup.join(f));
    }
    w.restart_server().await;
    let ids = vec![alice.send(conv, "lost in the restore").await.expect("q")];
    alice.wait_sent(&ids).await.expect("sent");
    let ids = vec![bob.send(conv, "bob's lost reply").await.expect("q")];
    bob.wait_sent(&ids).await.expect("sent");
    assert_eq!(texts_when(&bob, conv, 3).await.len(), 3);

    // Restore the backup (the server knows less than the devices), and
    // queue one more while it is down.
    w.stop_server().await;
    for f in ["server.db", "server.db-wal", "server.db-shm"] {
        let _ = std::fs::remove_file(w.dir.path().join(f));
        let _ = std::fs::copy(backup.join(f), w.dir.path().join(f));
    }
    let queued = alice.send(conv, "queued while down").await.expect("q");
    w.restart_server().await;
    alice.wait_sent(&[queued]).await.expect("sent");

    // Both devices converge on the server's log, which has every message
    // exactly once: the ones it lost were sent again under their client ids.
    let want = ["kept", "lost in the restore", "bob's lost reply", "queued while down"];
    let mut want_sorted = want.to_vec();
    want_sorted.sort();
    for c in [&alice, &bob] {
        let mut got = texts_when(c, conv, 4).await;
        got.sort();
        assert_eq!(got, want_sorted);
    }
    let fresh = w.client("bob-fresh").await;
    fresh.login(&w.url, "bob", PASSWORD).await.expect("login");
    start_synced(&fresh).await;
    let mut got = texts_when(&fresh, conv, 4).await;
    got.sort();
    assert_eq!(got, want_sorted, "the server holds each once");
    assert_eq!(alice.outbox_len().await.expect("outbox"), 0);
}

#[tokio::test]
async fn connection_state_reports_offline_with_a_retry_delay_and_recovers() {
    let mut w = World::new().await;
    let alice = w.user("alice").await;
    let mut events = alice.subscribe();
    w.stop_server().await;
    let offline =
        wait_for(&mut events, |e| matches!(e, ClientEvent::Connection { state: ConnectionState::Offline { .. } }))
            .await;
    let ClientEvent::Connection { state: ConnectionState::Offline { retry_in_ms, .. } } = offline else {
        unreachable!()
    };
    assert!(retry_in_ms <= 500);
    w.restart_server().await;
    wait_for(&mut events, |e| matches!(e, ClientEvent::Connection { state: ConnectionState::Connected })).await;
    wait_for(&mut events, |e| matches!(e, ClientEvent::SyncCompleted)).await;
}

/// A loopback TCP proxy that can black-hole its current connections without
/// closing them: the link looks alive to the kernel but nothing gets through.
struct Blackhole {
    addr: std::net::SocketAddr,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Blackhole {
    async fn start(target: std::net::SocketAddr) -> Blackhole {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let current = generation.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
                let born = current.load(Ordering::SeqCst);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                for (mut r, mut w) in [(ri, wo), (ro, wi)] {
                    let current = current.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            // Frozen: swallow the bytes, keep the socket open.
                            if current.load(Ordering::SeqCst) == born && w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Blackhole { addr, generation }
    }

    fn freeze_current_connections(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_silently_dead_link_is_detected_by_heartbeat_and_replaced() {
    let w = World::new().await;
    let server_addr = w.server.as_ref().expect("server").addr;
    let proxy = Blackhole::start(server_addr).await;
    let proxy_url = format!("http://{}", proxy.addr);
    let config = LinkConfig {
        ping_interval: Duration::from_millis(200),
        dead_after: Duration::from_secs(1),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(200),
        ..LinkConfig::default()
    };
    let alice = Client::open(&w.profile("alice")).await.expect("open").with_link_config(config);
    alice.register(&proxy_url, "alice", PASSWORD).await.expect("register");
    start_synced(&alice).await;
    let mut events = alice.subscribe();
    proxy.freeze_current_connections();
    let dead =
        wait_for(&mut events, |e| matches!(e, ClientEvent::Connection { state: ConnectionState::Offline { .. } }))
            .await;
    let ClientEvent::Connection { state: ConnectionState::Offline { reason, .. } } = dead else { unreachable!() };
    assert!(reason.contains("no answer"), "{reason}");
    wait_for(&mut events, |e| matches!(e, ClientEvent::Connection { state: ConnectionState::Connected })).await;
    wait_for(&mut events, |e| matches!(e, ClientEvent::SyncCompleted)).await;
}

/// A keychain stand-in that can also refuse, like a desktop without one.
#[derive(Default)]
struct Keychain {
    items: std::sync::Mutex<std::collections::HashMap<String, String>>,
    broken: bool,
}

impl confab_core::SecretStore for Keychain {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self.items.lock().map_err(|e| e.to_string())?.get(key).cloned())
    }
    fn set(&self, key: &str, secret: &str) -> Result<(), String> {
        if self.broken {
            return Err("no secret service".into());
        }
        self.items.lock().map_err(|e| e.to_string())?.insert(key.into(), secret.into());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.items.lock().map_err(|e| e.to_string())?.remove(key);
        Ok(())
    }
}

fn profile_contains(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).expect("profile").flatten().any(|f| {
        std::fs::read(f.path()).map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())).unwrap_or(false)
    })
}

#[tokio::test]
async fn with_a_keychain_the_token_never_touches_the_profile() {
    let w = World::new().await;
    let keychain = std::sync::Arc::new(Keychain::default());
    let alice = w.client("alice").await.with_secret_store(keychain.clone());
    alice.register(&w.url, "alice", PASSWORD).await.expect("register");
    let token = keychain.items.lock().expect("lock").values().next().cloned().expect("token in the keychain");
    assert!(!profile_contains(&w.profile("alice"), &token), "the token must not be in the profile");
    drop(alice);

    // A restart finds the session through the keychain and connects.
    let again = w.client("alice").await.with_secret_store(keychain.clone());
    assert_eq!(again.session().await.expect("session").map(|s| s.token), Some(token.clone()));
    start_synced(&again).await;
    again.logout().await.expect("logout");
    assert!(keychain.items.lock().expect("lock").is_empty(), "logout removes it from the keychain");
    assert!(again.session().await.expect("session").is_none());

    // Without a working keychain it falls back to the profile, still usable.
    let broken = std::sync::Arc::new(Keychain { broken: true, ..Keychain::default() });
    let bob = w.client("bob").await.with_secret_store(broken);
    bob.register(&w.url, "bob", PASSWORD).await.expect("register");
    let token = bob.session().await.expect("session").expect("signed in").token;
    assert!(!token.is_empty());
    start_synced(&bob).await;
}

#[tokio::test]
async fn many_queued_messages_go_out_in_batches_once_and_in_order() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    // More than one batch (100), queued in one local commit.
    let texts: Vec<String> = (1..=250).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = alice.send_all(conv, &refs).await.expect("queued");
    let outcomes = alice.wait_sent(&ids).await.expect("sent");
    let want: Vec<SendOutcome> = (1..=250).map(|seq| SendOutcome::Sent { seq }).collect();
    assert_eq!(outcomes, want);
    assert_eq!(texts_when(&bob, conv, 250).await, texts);
    // An invalid text queues none of them.
    let too_long = "x".repeat(confab_protocol::MAX_MESSAGE_CHARS + 1);
    assert!(alice.send_all(conv, &["fine", &too_long]).await.is_err());
    assert_eq!(alice.outbox_len().await.expect("outbox"), 0);
}

#[tokio::test]
async fn one_conversation_summary_is_the_same_as_its_entry_in_the_list() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let _carol = w.user("carol").await;
    let with_bob = alice.open_direct("bob").await.expect("dm");
    let with_carol = alice.open_direct("carol").await.expect("dm");
    let group = alice.create_group("trio", &["bob".into(), "carol".into()]).await.expect("group");
    for (conv, text) in [(with_bob, "to bob"), (with_carol, "to carol"), (group, "to both")] {
        let id = alice.send(conv, text).await.expect("queued");
        alice.wait_sent(&[id]).await.expect("sent");
    }
    let id = bob.send(group, "bob to all").await.expect("queued");
    bob.wait_sent(&[id]).await.expect("sent");
    texts_when(&alice, group, 2).await;
    // Receipts still arrive meanwhile: compare at a moment the list holds
    // still around the single lookups.
    let mut settled = None;
    for _ in 0..100 {
        let before = alice.conversations().await.expect("list");
        let mut singles = Vec::new();
        for entry in &before {
            singles.push(alice.conversation(entry.id).await.expect("one").expect("found"));
        }
        if alice.conversations().await.expect("list") == before {
            settled = Some((before, singles));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (list, singles) = settled.expect("the list held still at some point");
    assert_eq!(list.len(), 3);
    assert_eq!(singles, list);
    assert!(list.iter().any(|c| c.id == group && c.unread == 1 && c.members.len() == 3));
    assert_eq!(alice.unread_total().await.expect("total"), list.iter().map(|c| c.unread).sum::<i64>());
    // Bob has alice's "to bob" and "to both" unread (once they have arrived).
    let mut bobs = 0;
    for _ in 0..100 {
        bobs = bob.unread_total().await.expect("total");
        if bobs == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bobs, 2);
    assert_eq!(alice.conversation(uuid::Uuid::now_v7()).await.expect("lookup"), None);
}
