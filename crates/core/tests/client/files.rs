//! Files through the outbox, the media cache, and search: offline first.

use crate::support::*;
use confab_core::{ClientEvent, MessageStatus, SendOutcome};
use std::time::Duration;

fn png(w: u32, h: u32) -> Vec<u8> {
    // A real PNG made by the server's own dependency is not available here;
    // a tiny hand-made one (8-bit gray, no filter) keeps this test honest.
    fn crc(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn adler(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &d in data {
            a = (a + u32::from(d)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0);
        raw.extend((0..w).map(|x| ((x + y) % 256) as u8));
    }
    // zlib with stored (uncompressed) blocks.
    let mut z = vec![0x78, 0x01];
    let mut blocks = raw.chunks(65535).peekable();
    while let Some(b) = blocks.next() {
        z.push(u8::from(blocks.peek().is_none()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    z.extend_from_slice(&adler(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[tokio::test]
async fn a_file_picked_offline_uploads_when_the_link_returns_and_arrives_with_its_thumbnail() {
    let mut w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    let image = png(640, 480);
    let path = w.dir.path().join("cat.png");
    std::fs::write(&path, &image).expect("write");

    w.stop_server().await;
    let id = alice.send_files(conv, "look", std::slice::from_ref(&path)).await.expect("queued offline");
    // The original may go away: the profile has its copy.
    std::fs::remove_file(&path).expect("remove");
    let queued = alice.own_message(id).await.expect("cache").expect("message");
    assert_eq!(queued.status, MessageStatus::Queued);
    assert_eq!(queued.attachments.len(), 1);
    assert_eq!(queued.attachments[0].name, "cat.png");
    let mut events = alice.subscribe();
    w.restart_server().await;
    let outcome = alice.wait_sent(&[id]).await.expect("sent");
    assert!(matches!(outcome[0], SendOutcome::Sent { .. }), "{outcome:?}");
    // Progress was reported, and reached the whole file.
    let mut last = 0;
    while let Ok(ev) = events.try_recv() {
        if let ClientEvent::UploadProgress { client_id, sent, total, .. } = ev {
            assert_eq!(client_id, id);
            assert_eq!(total, image.len() as u64);
            assert!(sent >= last, "progress never goes back");
            last = sent;
        }
    }
    assert_eq!(last, image.len() as u64);

    let got = tokio::time::timeout(T, async {
        loop {
            let page = bob.history(conv, None, 10).await.expect("history");
            if let Some(m) = page.into_iter().find(|m| !m.attachments.is_empty()) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("bob gets the message");
    let a = &got.attachments[0];
    assert_eq!((a.mime.as_str(), a.width, a.height, a.thumbnail), ("image/png", Some(640), Some(480), true));
    assert_eq!(got.text, "look");
    let full = bob.media(&a.hash, false).await.expect("download");
    assert_eq!(std::fs::read(&full).expect("read"), image);
    let thumb = bob.media(&a.hash, true).await.expect("thumbnail");
    let bytes = std::fs::read(&thumb).expect("read");
    assert_eq!(&bytes[..3], b"\xff\xd8\xff", "a JPEG thumbnail");
    // The sender's copy became the cached blob: no download needed, even
    // with the server gone.
    w.stop_server().await;
    assert_eq!(std::fs::read(alice.media(&a.hash, false).await.expect("cached")).expect("read"), image);
    assert_eq!(std::fs::read(bob.media(&a.hash, false).await.expect("cached")).expect("read"), image);
}

#[tokio::test]
async fn the_media_cache_keeps_to_its_cap_and_refetches_what_it_evicted() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob_profile = "bob";
    let bob = w.client(bob_profile).await.with_media_cache_cap(250_000);
    bob.register(&w.url, "bob", PASSWORD).await.expect("register");
    start_synced(&bob).await;
    let conv = alice.open_direct("bob").await.expect("dm");
    let mut hashes = Vec::new();
    for i in 0..3u8 {
        let path = w.dir.path().join(format!("f{i}.bin"));
        std::fs::write(&path, vec![i; 100_000]).expect("write");
        let id = alice.send_files(conv, "", &[path]).await.expect("queued");
        alice.wait_sent(&[id]).await.expect("sent");
        hashes.push(alice.own_message(id).await.expect("cache").expect("message").attachments[0].hash.clone());
    }
    let dir = w.profile(bob_profile).join("media");
    for h in &hashes {
        bob.media(h, false).await.expect("download");
    }
    let cached: Vec<_> = hashes.iter().filter(|h| dir.join(h).exists()).collect();
    assert_eq!(cached.len(), 2, "the least recently used went");
    assert!(!dir.join(&hashes[0]).exists());
    assert_eq!(std::fs::read(bob.media(&hashes[0], false).await.expect("again")).expect("read"), vec![0u8; 100_000]);
}

#[tokio::test]
async fn a_cancelled_upload_never_sends_its_message() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let conv = alice.open_direct("bob-never").await;
    assert!(conv.is_err(), "no such user");
    let _bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    alice.stop().await;
    let path = w.dir.path().join("a.txt");
    std::fs::write(&path, "draft").expect("write");
    let id = alice.send_files(conv, "", &[path]).await.expect("queued");
    assert!(alice.cancel_send(id).await.expect("cancel"));
    assert!(alice.own_message(id).await.expect("cache").is_none());
    assert_eq!(alice.outbox_len().await.expect("outbox"), 0);
    assert!(!alice.cancel_send(id).await.expect("cancel again"));
    // Files that cannot be sent are refused before anything is queued.
    let missing = w.dir.path().join("nope.bin");
    assert!(alice.send_files(conv, "", &[missing]).await.is_err());
    assert!(alice.send_files(conv, "", &[w.dir.path().to_owned()]).await.is_err(), "a directory");
    assert_eq!(alice.outbox_len().await.expect("outbox"), 0);
}

#[tokio::test]
async fn search_finds_what_arrived_offline_and_what_only_the_server_has() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    // Received while bob was offline, never displayed.
    bob.stop().await;
    let id = alice.send(conv, "the kumquats are ripe").await.expect("send");
    alice.wait_sent(&[id]).await.expect("sent");
    start_synced(&bob).await;
    let hits = bob.search("KUMQUAT", None, 10).await.expect("search");
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert!(hits[0].snippet.contains("\u{2}kumquats\u{3}"), "{}", hits[0].snippet);
    assert_eq!(hits[0].sender_name, "alice");
    assert!(hits[0].on_device);
    // Offline too.
    bob.stop().await;
    assert_eq!(bob.search("kumquats ripe", Some(conv), 10).await.expect("search").len(), 1);
    assert!(bob.search("kumquats", Some(uuid::Uuid::now_v7()), 10).await.expect("search").is_empty());

    // A long history: a new device of bob's gets only its newest messages.
    let filler: Vec<String> = (0..2100).map(|i| format!("filler {i}")).collect();
    let first = alice.send(conv, "an old durian story").await.expect("send");
    let refs: Vec<&str> = filler.iter().map(String::as_str).collect();
    let ids = alice.send_all(conv, &refs).await.expect("send");
    alice.wait_sent(&[first]).await.expect("sent");
    alice.wait_sent(&ids[ids.len() - 1..]).await.expect("sent");
    let phone = w.client("bob-phone").await;
    phone.login(&w.url, "bob", PASSWORD).await.expect("login");
    start_synced(&phone).await;
    assert!(phone.search("durian", None, 10).await.expect("local").is_empty(), "not on this device");
    let (hits, _) = phone.search_server("durian", None, None, 10).await.expect("server search");
    assert_eq!(hits.len(), 1);
    assert!(!hits[0].on_device);
    assert_eq!(hits[0].sender_name, "alice");
    let seq = hits[0].seq.expect("seq");
    // Opening it loads the history around it.
    let page = phone.history(conv, Some(seq + 25), 50).await.expect("history");
    assert!(page.iter().any(|m| m.seq == Some(seq) && m.text == "an old durian story"));
    assert_eq!(phone.search("durian", None, 10).await.expect("local").len(), 1, "now it is on the device");
}
