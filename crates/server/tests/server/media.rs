//! Attachments over HTTP (tus uploads, downloads) and search, as an
//! attacker and as a user would use them.

use crate::support::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 120]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encode");
    out.into_inner()
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Creates an upload; returns its URL.
async fn create(s: &TestServer, token: &str, len: usize, sha256: Option<&str>) -> reqwest::Response {
    let mut req = http()
        .post(format!("{}/v1/uploads", s.url))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", len.to_string());
    if let Some(h) = sha256 {
        req = req.header("upload-metadata", format!("sha256 {}", b64(h)));
    }
    req.send().await.expect("http")
}

async fn new_upload(s: &TestServer, token: &str, bytes: &[u8]) -> String {
    let r = create(s, token, bytes.len(), Some(&hex(bytes))).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");
    format!("{}{}", s.url, r.headers()["location"].to_str().expect("location"))
}

async fn patch(url: &str, token: &str, offset: usize, body: Vec<u8>) -> reqwest::Response {
    http()
        .patch(url)
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await
        .expect("http")
}

async fn offset(url: &str, token: &str) -> (u16, Option<u64>) {
    let r = http().head(url).bearer_auth(token).header("tus-resumable", "1.0.0").send().await.expect("http");
    let off = r.headers().get("upload-offset").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (r.status().as_u16(), off)
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

/// Uploads `bytes` in one request; returns the blob's hash.
async fn upload(s: &TestServer, token: &str, bytes: &[u8]) -> String {
    let url = new_upload(s, token, bytes).await;
    let r = patch(&url, token, 0, bytes.to_vec()).await;
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    let blob = r.headers()["confab-blob"].to_str().expect("blob").to_owned();
    assert_eq!(blob, hex(bytes));
    blob
}

async fn get(s: &TestServer, token: &str, path: &str) -> reqwest::Response {
    http().get(format!("{}{path}", s.url)).bearer_auth(token).send().await.expect("http")
}

/// A second session of a registered user, for HTTP.
async fn login(s: &TestServer, name: &str) -> String {
    let (_, body) = s.post("/v1/login", &json!({"username": name, "password": PASSWORD}).to_string(), None).await;
    body["token"].as_str().expect("token").to_owned()
}

/// Sends a message with attachments; returns the reply frame.
async fn send_files(ws: &mut Ws, conv: &str, text: &str, files: &[(&str, &str)]) -> Value {
    let attachments: Vec<Value> = files.iter().map(|(hash, name)| json!({"hash": hash, "name": name})).collect();
    ws.req(json!({"type": "send", "conversation": conv, "client_id": client_id(), "text": text,
                  "attachments": attachments}))
        .await
}

#[tokio::test]
async fn an_interrupted_upload_resumes_from_the_committed_offset_and_the_hash_is_checked() {
    let s = TestServer::start().await;
    let token = s.register("alice").await;
    let bytes = data(3 * 1024 * 1024 + 123);
    let url = new_upload(&s, &token, &bytes).await;
    assert_eq!(offset(&url, &token).await, (200, Some(0)));

    // A client that dies 2.5 MiB into its PATCH: headers promise the whole
    // file, the connection closes after part of it.
    let sent = 5 * 1024 * 1024 / 2;
    let path = url.trim_start_matches(&s.url).to_owned();
    let mut tcp = tokio::net::TcpStream::connect(s.server.addr).await.expect("tcp");
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ntus-resumable: 1.0.0\r\n\
         upload-offset: 0\r\ncontent-type: application/offset+octet-stream\r\ncontent-length: {}\r\n\r\n",
        bytes.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    tcp.write_all(&bytes[..sent]).await.expect("write");
    tcp.flush().await.expect("flush");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(tcp);

    // What arrived is committed (not zero), and no more than was sent.
    let mut committed = 0;
    for _ in 0..50 {
        committed = offset(&url, &token).await.1.expect("offset") as usize;
        if committed == sent {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(committed >= 2 * 1024 * 1024 && committed <= sent, "committed {committed} of {sent}");

    // Resuming from anywhere else is refused and says where to resume.
    let (status, code) = error_code(patch(&url, &token, 0, bytes.to_vec()).await).await;
    assert_eq!((status, code.as_str()), (409, "offset_mismatch"));
    // Someone else cannot see or touch it.
    let eve = s.register("eve").await;
    assert_eq!(offset(&url, &eve).await.0, 404);
    let (status, _) = error_code(patch(&url, &eve, committed, bytes[committed..].to_vec()).await).await;
    assert_eq!(status, 404);

    let r = patch(&url, &token, committed, bytes[committed..].to_vec()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], bytes.len().to_string().as_str());
    assert_eq!(r.headers()["confab-blob"], hex(&bytes).as_str());
    // A client that missed that reply learns the outcome by asking.
    let h = http().head(&url).bearer_auth(&token).header("tus-resumable", "1.0.0").send().await.expect("http");
    assert_eq!(h.headers()["confab-blob"], hex(&bytes).as_str());
    // The uploader may download it whole and in ranges.
    let r = get(&s, &token, &format!("/v1/media/{}", hex(&bytes))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.expect("body").as_ref(), bytes.as_slice());
    let r = http()
        .get(format!("{}/v1/media/{}", s.url, hex(&bytes)))
        .bearer_auth(&token)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 1000-1999/{}", bytes.len()).as_str());
    assert_eq!(r.bytes().await.expect("body").as_ref(), &bytes[1000..2000]);
    let r = http()
        .get(format!("{}/v1/media/{}", s.url, hex(&bytes)))
        .bearer_auth(&token)
        .header("range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 416);

    // Bytes that are not the declared ones are not filed.
    let other = data(1000);
    let r = create(&s, &token, other.len(), Some(&hex(b"something else"))).await;
    let url = format!("{}{}", s.url, r.headers()["location"].to_str().expect("location"));
    let (status, code) = error_code(patch(&url, &token, 0, other.clone()).await).await;
    assert_eq!((status, code.as_str()), (460, "checksum_mismatch"));
    assert_eq!(get(&s, &token, &format!("/v1/media/{}", hex(&other))).await.status(), 404);
}

#[tokio::test]
async fn uploads_refuse_bad_requests_with_stable_codes() {
    let s = TestServer::with_config(|c| {
        c.limits.max_upload_bytes = 1_000_000;
        c.limits.quota_bytes = 1_500_000;
    })
    .await;
    let token = s.register("alice").await;
    let (status, code) = error_code(create(&s, &token, 1_000_001, None).await).await;
    assert_eq!((status, code.as_str()), (413, "file_too_large"));
    let r = http()
        .post(format!("{}/v1/uploads", s.url))
        .bearer_auth(&token)
        .header("upload-length", "10")
        .send()
        .await
        .expect("http");
    assert_eq!(error_code(r).await, (412, "unsupported_protocol".into()));
    for bad in ["-1", "abc", "", "99999999999999999999999"] {
        let r = http()
            .post(format!("{}/v1/uploads", s.url))
            .bearer_auth(&token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", bad)
            .send()
            .await
            .expect("http");
        assert_eq!(error_code(r).await, (400, "invalid_request".into()), "{bad}");
    }
    let r = http()
        .post(format!("{}/v1/uploads", s.url))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 401);
    // The quota counts unfinished uploads too.
    assert_eq!(create(&s, &token, 900_000, None).await.status(), 201);
    let (status, code) = error_code(create(&s, &token, 700_000, None).await).await;
    assert_eq!((status, code.as_str()), (413, "quota_exceeded"));
    // A body longer than the upload is refused, and what fits is kept.
    let url = new_upload(&s, &token, &data(100)).await;
    let (status, _) = error_code(patch(&url, &token, 0, data(150)).await).await;
    assert_eq!(status, 400);
    assert_eq!(offset(&url, &token).await.1, Some(100));
    // The wrong body type.
    let url = new_upload(&s, &token, &data(10)).await;
    let r = http()
        .patch(&url)
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .body(data(10))
        .send()
        .await
        .expect("http");
    assert_eq!(error_code(r).await.1, "unsupported_media_type");
    // Cancelled: gone.
    let r = http().delete(&url).bearer_auth(&token).header("tus-resumable", "1.0.0").send().await.expect("http");
    assert_eq!(r.status(), 204);
    assert_eq!(offset(&url, &token).await.0, 404);
    // Junk ids and hashes are plain not-founds.
    for path in ["/v1/media/../../etc/passwd", "/v1/media/abc", "/v1/uploads/not-a-uuid"] {
        let r = get(&s, &token, path).await;
        assert!(r.status() == 404 || r.status() == 405, "{path}: {}", r.status());
    }
    // An empty file is a file.
    let empty = upload(&s, &token, b"").await;
    assert_eq!(empty, hex(b""));
    let r = http().request(reqwest::Method::OPTIONS, format!("{}/v1/uploads", s.url)).send().await.expect("http");
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    assert_eq!(r.headers()["tus-max-size"], "1000000");
}

#[tokio::test]
async fn only_members_may_download_an_attachment_or_its_thumbnail() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let bob_token = s.register("bob").await;
    let mut bob = s.connect(&bob_token).await;
    let carol_token = s.register("carol").await;
    let mut carol = s.connect(&carol_token).await;
    let dave_token = s.register("dave").await;
    let alice_http = login(&s, "alice").await;
    let conv = dm(&mut alice, "bob").await;
    let image = png(800, 600);
    let hash = upload(&s, &alice_http, &image).await;
    let sent = send_files(&mut alice, &conv, "", &[(&hash, "holiday.png")]).await;
    assert_eq!(sent["type"], "result", "{sent}");
    let ev = bob.event("message").await;
    let a = &ev["body"]["attachments"][0];
    assert_eq!(a["hash"], hash.as_str());
    assert_eq!(a["name"], "holiday.png");
    assert_eq!(a["mime"], "image/png");
    assert_eq!((a["width"].as_u64(), a["height"].as_u64()), (Some(800), Some(600)));
    assert_eq!(a["size"].as_u64(), Some(image.len() as u64));
    assert_eq!(a["thumbnail"], true);

    let r = get(&s, &bob_token, &format!("/v1/media/{hash}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.bytes().await.expect("body").as_ref(), image.as_slice());
    let r = get(&s, &bob_token, &format!("/v1/media/{hash}/thumbnail")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let thumb = r.bytes().await.expect("body");
    let dims = image::load_from_memory(&thumb).expect("a thumbnail decodes");
    assert_eq!((dims.width(), dims.height()), (320, 240));

    // Carol knows the hash, and it gets her nothing: not the file, not the
    // thumbnail, not a message that would make her a reader.
    for path in [format!("/v1/media/{hash}"), format!("/v1/media/{hash}/thumbnail")] {
        let r = get(&s, &carol_token, &path).await;
        assert_eq!(error_code(r).await, (404, "not_found".into()), "{path}");
    }
    let carol_conv = dm(&mut carol, "dave").await;
    let r = send_files(&mut carol, &carol_conv, "", &[(&hash, "stolen.png")]).await;
    assert_eq!(r["code"], "not_found", "{r}");
    let r = get(&s, &dave_token, &format!("/v1/media/{hash}")).await;
    assert_eq!(r.status(), 404);

    // A group: dave is removed, and loses access to what it shares.
    let group = alice.ok(json!({"type": "create_group", "name": "trip", "members": ["bob", "dave"]})).await;
    let group = group["conversation"]["id"].as_str().expect("id").to_owned();
    let before = upload(&s, &alice_http, b"%PDF-1.7\nplan").await;
    assert_eq!(send_files(&mut alice, &group, "the plan", &[(&before, "plan.pdf")]).await["type"], "result");
    assert_eq!(get(&s, &dave_token, &format!("/v1/media/{before}")).await.status(), 200);
    alice.ok(json!({"type": "remove_member", "conversation": group, "username": "dave"})).await;
    let after = upload(&s, &alice_http, &png(40, 40)).await;
    assert_eq!(send_files(&mut alice, &group, "new", &[(&after, "new.png")]).await["type"], "result");
    for h in [&after, &before] {
        assert_eq!(get(&s, &dave_token, &format!("/v1/media/{h}")).await.status(), 404);
        assert_eq!(get(&s, &dave_token, &format!("/v1/media/{h}/thumbnail")).await.status(), 404);
    }
    assert_eq!(get(&s, &bob_token, &format!("/v1/media/{after}")).await.status(), 200);
    // A PDF has no thumbnail.
    assert_eq!(get(&s, &bob_token, &format!("/v1/media/{before}/thumbnail")).await.status(), 404);

    // Bad attachment lists are refused, not stored.
    let bad = [
        json!([{"hash": "zz", "name": "x"}]),
        json!([{"hash": hash, "name": "../x"}]),
        json!([{"hash": hash, "name": ""}]),
        json!((0..11).map(|_| json!({"hash": hash, "name": "x.png"})).collect::<Vec<_>>()),
    ];
    for attachments in bad {
        let r = alice
            .req(json!({"type": "send", "conversation": conv, "client_id": client_id(), "text": "",
                        "attachments": attachments}))
            .await;
        assert_eq!(r["code"], "invalid_request", "{r}");
    }
    // Without attachments, an empty text is still refused.
    let r = alice.req(json!({"type": "send", "conversation": conv, "client_id": client_id(), "text": " "})).await;
    assert_eq!(r["code"], "invalid_request");
}

#[tokio::test]
async fn media_deleted_with_its_message_is_removed_once_nothing_refers_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let media_dir = dir.path().join("files");
    let s = TestServer::with_config(|c| {
        c.media_dir = Some(media_dir.clone());
        c.limits.media_grace = std::time::Duration::ZERO;
    })
    .await;
    let mut alice = s.user("alice").await;
    let alice_http = login(&s, "alice").await;
    let bob_token = s.register("bob").await;
    let conv = dm(&mut alice, "bob").await;
    let shared = upload(&s, &alice_http, &png(500, 500)).await;
    let only = upload(&s, &alice_http, b"just once").await;
    let one = send_files(&mut alice, &conv, "a", &[(&shared, "a.png"), (&only, "b.txt")]).await;
    let two = send_files(&mut alice, &conv, "b", &[(&shared, "a.png")]).await;
    // Make the thumbnail now, so the sweep has it to remove too.
    assert_eq!(get(&s, &bob_token, &format!("/v1/media/{shared}/thumbnail")).await.status(), 200);
    let blob_file = |h: &str| media_dir.join("blobs").join(&h[..2]).join(h);
    assert!(blob_file(&only).exists());
    let media = s.server.state.media.clone();
    let store = s.server.state.service.store.clone();
    assert_eq!(media.sweep(&store).await.expect("sweep"), 0, "everything is still carried by a message");

    alice.ok(json!({"type": "delete", "conversation": conv, "seq": one["result"]["seq"]})).await;
    assert_eq!(media.sweep(&store).await.expect("sweep"), 1);
    assert!(!blob_file(&only).exists());
    assert_eq!(get(&s, &bob_token, &format!("/v1/media/{only}")).await.status(), 404);
    assert_eq!(get(&s, &bob_token, &format!("/v1/media/{shared}")).await.status(), 200, "still in message two");

    alice.ok(json!({"type": "delete", "conversation": conv, "seq": two["result"]["seq"]})).await;
    assert_eq!(media.sweep(&store).await.expect("sweep"), 2, "the image and its thumbnail");
    assert!(!blob_file(&shared).exists());
    let left: usize = std::fs::read_dir(media_dir.join("blobs"))
        .expect("dir")
        .map(|d| std::fs::read_dir(d.expect("entry").path()).expect("dir").count())
        .sum();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn search_finds_words_only_in_the_callers_conversations() {
    let s = TestServer::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let mut carol = s.user("carol").await;
    let ab = dm(&mut alice, "bob").await;
    let bc = dm(&mut bob, "carol").await;
    send(&mut alice, &ab, "Pineapple pizza tonight?").await;
    send(&mut bob, &bc, "pineapple juice, with ÉCLAIRS").await;
    send(&mut bob, &ab, "no thanks").await;
    let group = alice.ok(json!({"type": "create_group", "name": "g", "members": ["bob", "carol"]})).await;
    let group = group["conversation"]["id"].as_str().expect("id").to_owned();
    send(&mut alice, &group, "pineapple party in the group").await;

    async fn search(ws: &mut Ws, q: &str, conversation: Option<&str>) -> Vec<Value> {
        let r = ws.ok(json!({"type": "search", "query": q, "conversation": conversation, "limit": 50})).await;
        r["hits"].as_array().expect("hits").clone()
    }
    let convs = |hits: &[Value]| {
        let mut c: Vec<String> = hits.iter().map(|h| h["conversation"].as_str().expect("c").to_owned()).collect();
        c.sort();
        c
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(convs(&search(&mut alice, "pineapple", None).await), sorted(vec![ab.clone(), group.clone()]));
    assert_eq!(convs(&search(&mut carol, "pineapple", None).await), sorted(vec![bc.clone(), group.clone()]));
    assert_eq!(convs(&search(&mut bob, "pine", None).await).len(), 3, "a prefix matches");
    // Case and accents fold; the match is highlighted.
    let hits = search(&mut carol, "eclairs", None).await;
    assert_eq!(hits.len(), 1);
    assert!(hits[0]["snippet"].as_str().expect("snippet").contains("\u{2}ÉCLAIRS\u{3}"), "{}", hits[0]);
    assert_eq!(hits[0]["sender"], bob.welcome["user"]);
    // One conversation only; one that is not yours is refused.
    assert_eq!(search(&mut bob, "pineapple", Some(&bc)).await.len(), 1);
    let r = alice.req(json!({"type": "search", "query": "pineapple", "conversation": bc, "limit": 10})).await;
    assert_eq!(r["code"], "not_member");
    // Removed from the group: its messages no longer show.
    alice.ok(json!({"type": "remove_member", "conversation": group, "username": "carol"})).await;
    assert_eq!(convs(&search(&mut carol, "pineapple", None).await), vec![bc.clone()]);
    // Words are split at punctuation, in the text as in the query, on
    // both stores: an address or a path is found by its parts.
    send(&mut alice, &ab, "write to bob@example.com or see example.org/docs/setup").await;
    assert_eq!(search(&mut bob, "example.com", None).await.len(), 1);
    assert_eq!(search(&mut bob, "docs/setup", None).await.len(), 1);
    assert_eq!(search(&mut bob, "bob@exam", None).await.len(), 1, "the last part is a prefix");
    // NUL is not text: refused, never stored (Postgres could not).
    let r = alice.req(json!({"type": "send", "conversation": ab, "client_id": client_id(), "text": "a\u{0}b"})).await;
    assert_eq!(r["code"], "invalid_request", "{r}");
    assert!(search(&mut bob, "a\u{0}b", None).await.is_empty());
    // Edits and deletes keep the index true.
    let m = send(&mut alice, &ab, "the blue submarine").await;
    let seq = m["seq"].clone();
    alice.ok(json!({"type": "edit", "conversation": ab, "seq": seq, "text": "the yellow submarine"})).await;
    assert!(search(&mut bob, "blue", None).await.is_empty());
    assert_eq!(search(&mut bob, "yellow", None).await.len(), 1);
    alice.ok(json!({"type": "delete", "conversation": ab, "seq": seq})).await;
    assert!(search(&mut bob, "submarine", None).await.is_empty());
    // Query syntax is only ever words.
    for q in ["\"", "NEAR(", "a OR", "*", "pine*apple\"", "(((", "-"] {
        let r = bob.req(json!({"type": "search", "query": q, "limit": 10})).await;
        assert_eq!(r["type"], "result", "{q}: {r}");
    }
    let r = bob.req(json!({"type": "search", "query": "x".repeat(201), "limit": 10})).await;
    assert_eq!(r["code"], "invalid_request");
    // Paging: newest first, `before` continues.
    for i in 0..5 {
        send(&mut alice, &ab, &format!("zebra {i}")).await;
    }
    let r = bob.ok(json!({"type": "search", "query": "zebra", "limit": 3})).await;
    assert_eq!(r["hits"].as_array().expect("hits").len(), 3);
    assert_eq!(r["has_more"], true);
}

#[tokio::test]
async fn an_upload_recovers_from_a_crash_between_filing_its_bytes_and_recording_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let media_dir = dir.path().join("m");
    let s = TestServer::with_config(|c| c.media_dir = Some(media_dir.clone())).await;
    let token = s.register("alice").await;
    let store = s.server.state.service.store.clone();
    let bytes = data(5000);
    // Filed under its hash, but the crash came before the record said so.
    let url = new_upload(&s, &token, &bytes).await;
    let id = uuid::Uuid::try_parse(url.rsplit('/').next().expect("id")).expect("uuid");
    let h = hex(&bytes);
    std::fs::create_dir_all(media_dir.join("blobs").join(&h[..2])).expect("dir");
    std::fs::write(media_dir.join("blobs").join(&h[..2]).join(&h), &bytes).expect("write");
    store.commit_upload(id, bytes.len() as u64).await.expect("commit");
    let r = patch(&url, &token, bytes.len(), Vec::new()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["confab-blob"], h.as_str());
    assert_eq!(
        get(&s, &token, &format!("/v1/media/{h}")).await.bytes().await.expect("body").as_ref(),
        bytes.as_slice()
    );
    // Bytes the record counted are gone: the client is sent back to what is
    // really there, not given an empty or wrong file.
    let other = data(3000).into_iter().rev().collect::<Vec<u8>>();
    let url = new_upload(&s, &token, &other).await;
    let id = uuid::Uuid::try_parse(url.rsplit('/').next().expect("id")).expect("uuid");
    store.commit_upload(id, other.len() as u64).await.expect("commit");
    let (status, code) = error_code(patch(&url, &token, other.len(), Vec::new()).await).await;
    assert_eq!((status, code.as_str()), (409, "offset_mismatch"));
    assert_eq!(offset(&url, &token).await.1, Some(0));
    assert_eq!(patch(&url, &token, 0, other.clone()).await.headers()["confab-blob"], hex(&other).as_str());
}

#[tokio::test]
async fn an_image_that_does_not_decode_has_no_thumbnail_and_is_not_decoded_again() {
    let s = TestServer::start().await;
    let token = s.register("alice").await;
    // A real PNG header (so it sniffs as an image with a size), then junk.
    let mut broken = png(64, 64)[..33].to_vec();
    broken.extend(std::iter::repeat_n(0x5a, 4000));
    let hash = upload(&s, &token, &broken).await;
    for _ in 0..2 {
        let r = get(&s, &token, &format!("/v1/media/{hash}/thumbnail")).await;
        assert_eq!(error_code(r).await, (404, "not_found".into()));
    }
    let info = s.server.state.service.store.blob(&hash).await.expect("store").expect("blob");
    assert_eq!(info.mime, "image/png");
    assert!(!info.thumbable, "marked, so the next fetch does not decode it again");
    // The file itself still downloads.
    assert_eq!(get(&s, &token, &format!("/v1/media/{hash}")).await.status(), 200);
}
