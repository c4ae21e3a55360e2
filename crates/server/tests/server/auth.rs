use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn registration_and_login_errors_are_clear_and_stable() {
    let s = TestServer::start().await;
    let body = |u: &str, p: &str| json!({"username": u, "password": p}).to_string();
    let cases = [
        ("/v1/register", body("Bad Name", PASSWORD), 400, "invalid_username"),
        ("/v1/register", body("dave", "short"), 400, "weak_password"),
        ("/v1/register", "{not json".to_owned(), 400, "malformed_json"),
        ("/v1/register", json!({"username": "dave"}).to_string(), 400, "invalid_request"),
        ("/v1/login", body("nobody", PASSWORD), 401, "invalid_credentials"),
    ];
    for (path, body, status, code) in cases {
        let (st, reply) = s.post(path, &body, None).await;
        assert_eq!((st, reply["code"].as_str()), (status, Some(code)), "{path} {body}");
    }
    s.register("dave").await;
    let (st, reply) = s.post("/v1/register", &body("dave", PASSWORD), None).await;
    assert_eq!((st, reply["code"].as_str()), (409, Some("username_taken")));
    let (st, reply) = s.post("/v1/login", &body("dave", "wrong password"), None).await;
    assert_eq!((st, reply["code"].as_str()), (401, Some("invalid_credentials")));
    let (st, reply) = s.post("/v1/login", &body("dave", PASSWORD), None).await;
    assert_eq!(st, 200);
    assert_ne!(reply["token"], "");

    // Guessing is slowed down per username.
    let mut limited = false;
    for _ in 0..15 {
        let (st, reply) = s.post("/v1/login", &body("dave", "guess guess"), None).await;
        if st == 429 {
            assert_eq!(reply["code"], "rate_limited");
            limited = true;
            break;
        }
    }
    assert!(limited, "repeated failed logins must be rate limited");
}

#[tokio::test]
async fn sockets_require_a_valid_hello() {
    let s = TestServer::start().await;
    let token = s.register("erin").await;

    let mut ws = Ws::open(&s.url).await;
    ws.send_text(json!({"id": 1, "type": "sync"}).to_string()).await;
    let reply = ws.recv().await.expect("error frame");
    assert_eq!(reply["code"], "unauthenticated");
    assert_eq!(ws.close_code().await, Some(4001));

    let mut ws = Ws::open(&s.url).await;
    assert_eq!(ws.err(json!({"type": "hello", "token": "forged", "protocol": 1})).await, "invalid_token");

    let mut ws = Ws::open(&s.url).await;
    assert_eq!(ws.err(json!({"type": "hello", "token": token, "protocol": 999})).await, "unsupported_protocol");

    let mut ws = s.connect(&token).await;
    assert_eq!(ws.err(json!({"type": "hello", "token": token, "protocol": 1})).await, "invalid_request");
}

#[tokio::test]
async fn logout_revokes_the_session_and_closes_its_sockets() {
    let s = TestServer::start().await;
    let token = s.register("frank").await;
    let mut ws = s.connect(&token).await;
    let (st, _) = s.post("/v1/logout", "", Some(&token)).await;
    assert_eq!(st, 204);
    assert_eq!(ws.close_code().await, Some(4001));
    let mut again = Ws::open(&s.url).await;
    assert_eq!(again.err(json!({"type": "hello", "token": token, "protocol": 1})).await, "invalid_token");
    let (st, reply) = s.post("/v1/logout", "", Some(&token)).await;
    assert_eq!((st, reply["code"].as_str()), (401, Some("invalid_token")));
}
