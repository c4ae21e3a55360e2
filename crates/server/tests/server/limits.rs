use crate::support::*;
use confab_server::Limits;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Bob and carol keep chatting while someone else misbehaves.
async fn still_chatting(bob: &mut Ws, carol: &mut Ws, conv: &str, text: &str) {
    send(bob, conv, text).await;
    let ev = carol.event("message").await;
    assert_eq!(ev["body"]["text"], text);
}

#[tokio::test]
async fn bad_frames_get_stable_codes_and_the_connection_survives() {
    let s = TestServer::start().await;
    let mut mallory = s.user("mallory").await;
    let mut bob = s.user("bob").await;
    let mut carol = s.user("carol").await;
    let conv = dm(&mut bob, "carol").await;

    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "malformed_json"),
        ("[1, 2, 3]".into(), "invalid_request"),
        (json!({"type": "ping"}).to_string(), "invalid_request"),
        (json!({"id": 5, "type": "teleport"}).to_string(), "unknown_type"),
        (json!({"id": 6, "type": "send", "text": "no conversation"}).to_string(), "invalid_request"),
        (
            json!({"id": 7, "type": "send", "conversation": conv, "client_id": "not-a-uuid", "text": "x"}).to_string(),
            "invalid_request",
        ),
        (json!({"id": 8, "type": "ping", "pad": "x".repeat(100 * 1024)}).to_string(), "frame_too_large"),
    ];
    for (frame, code) in cases {
        mallory.send_text(frame.clone()).await;
        let reply = mallory.recv().await.expect("an error reply, not a closed socket");
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], code, "for {}", &frame[..frame.len().min(80)]);
        still_chatting(&mut bob, &mut carol, &conv, code).await;
    }
    mallory.socket.send(Message::binary(vec![0u8, 159, 146, 150])).await.expect("send");
    assert_eq!(mallory.recv().await.expect("reply")["code"], "malformed_json");

    let long = "x".repeat(confab_protocol::MAX_MESSAGE_CHARS + 1);
    let own = dm(&mut mallory, "bob").await;
    let code = mallory.err(json!({"type": "send", "conversation": own, "client_id": client_id(), "text": long})).await;
    assert_eq!(code, "message_too_long");
    let code = mallory.err(json!({"type": "send", "conversation": own, "client_id": client_id(), "text": "  "})).await;
    assert_eq!(code, "invalid_request");
    assert_eq!(mallory.ok(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn arbitrary_frames_never_break_the_server() {
    let s = TestServer::start().await;
    let mut fuzz = s.user("fuzz").await;
    let mut bob = s.user("bob").await;
    let mut carol = s.user("carol").await;
    let conv = dm(&mut bob, "carol").await;
    // A deterministic generator, so a failure reproduces.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces = [
        "{",
        "}",
        "\"type\"",
        ":",
        "\"send\"",
        ",",
        "\"id\"",
        "1",
        "-1",
        "null",
        "[",
        "]",
        "\"\\u0000\"",
        "1e309",
        "\"conversation\"",
        "true",
    ];
    for _ in 0..300 {
        let len = (next() % 24) as usize;
        let frame: String = (0..len).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect();
        fuzz.send_text(frame).await;
        let reply = fuzz.recv().await.expect("the server answers and stays up");
        assert!(reply["type"] == "error" || reply["type"] == "result", "{reply}");
    }
    assert_eq!(fuzz.ok(json!({"type": "ping"})).await["type"], "pong");
    still_chatting(&mut bob, &mut carol, &conv, "after the fuzz").await;
}

#[tokio::test]
async fn a_frame_beyond_the_transport_limit_closes_only_that_socket() {
    let s = TestServer::start().await;
    let mut mallory = s.user("mallory").await;
    let mut bob = s.user("bob").await;
    let mut carol = s.user("carol").await;
    let conv = dm(&mut bob, "carol").await;
    mallory.send_text("x".repeat(1024 * 1024)).await;
    assert_eq!(mallory.close_code().await, Some(1009));
    still_chatting(&mut bob, &mut carol, &conv, "unaffected").await;
}

#[tokio::test]
async fn flooding_is_rate_limited_per_user_and_others_keep_chatting() {
    let limits = Limits { requests_per_sec: 5, request_burst: 20, ..Limits::default() };
    let s = TestServer::with_limits(limits).await;
    let mut mallory = s.user("mallory").await;
    let mut bob = s.user("bob").await;
    let mut carol = s.user("carol").await;
    let conv = dm(&mut bob, "carol").await;
    for i in 0..200u64 {
        mallory.send_text(json!({"id": 1000 + i, "type": "ping"}).to_string()).await;
    }
    let mut limited = 0;
    for _ in 0..200 {
        let reply = mallory.recv().await.expect("every request gets a reply");
        if reply["code"] == "rate_limited" {
            assert!(reply["retry_after_ms"].as_u64().expect("retry hint") > 0);
            limited += 1;
        }
    }
    assert!(limited >= 150, "only {limited} of 200 were limited");
    still_chatting(&mut bob, &mut carol, &conv, "we are fine").await;
}

#[tokio::test]
async fn connections_per_user_are_capped() {
    let limits =
        Limits { max_connections_per_user: 2, requests_per_sec: 1000, request_burst: 1000, ..Limits::default() };
    let s = TestServer::with_limits(limits).await;
    let token = s.register("gina").await;
    let _a = s.connect(&token).await;
    let _b = s.connect(&token).await;
    let mut c = Ws::open(&s.url).await;
    c.send_text(json!({"id": 1, "type": "hello", "token": token, "protocol": 1}).to_string()).await;
    let reply = c.recv().await.expect("reply");
    assert_eq!(reply["code"], "too_many_connections");
}
