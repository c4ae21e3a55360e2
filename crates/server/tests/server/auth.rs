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

#[tokio::test]
async fn every_http_error_is_json_with_a_stable_code() {
    let s = TestServer::start().await;
    let http = reqwest::Client::new();
    let check = |resp: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned());
        assert!(ct.as_deref().is_some_and(|c| c.starts_with("application/json")), "{ct:?}");
        let body: serde_json::Value = resp.json().await.expect("JSON body");
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    let url = |p: &str| format!("{}{p}", s.url);
    check(http.get(url("/nope")).send().await.expect("http"), 404, "no_such_endpoint").await;
    check(http.get(url("/v1/login")).send().await.expect("http"), 405, "method_not_allowed").await;
    check(http.delete(url("/v1/health")).send().await.expect("http"), 405, "method_not_allowed").await;
    // A 2 MB username, and 200 KB of nested brackets.
    let big = json!({"username": "a".repeat(2 * 1024 * 1024), "password": PASSWORD}).to_string();
    let resp = http.post(url("/v1/register")).header("content-type", "application/json").body(big).send().await;
    check(resp.expect("http"), 413, "frame_too_large").await;
    let nested = "[".repeat(200 * 1024);
    let resp = http.post(url("/v1/login")).header("content-type", "application/json").body(nested).send().await;
    check(resp.expect("http"), 413, "frame_too_large").await;
    let deep = "[".repeat(4000);
    let resp = http.post(url("/v1/login")).header("content-type", "application/json").body(deep).send().await;
    check(resp.expect("http"), 400, "invalid_request").await;
    let resp = http.post(url("/v1/login")).header("content-type", "application/json").body("{not json").send().await;
    check(resp.expect("http"), 400, "malformed_json").await;
    let resp = http.post(url("/v1/login")).body(json!({"username": "x", "password": "y"}).to_string()).send().await;
    check(resp.expect("http"), 415, "unsupported_media_type").await;
    let resp =
        http.post(url("/v1/login")).header("content-type", "application/json").body("{\"username\": 5}").send().await;
    check(resp.expect("http"), 400, "invalid_request").await;
    // A plain GET of the WebSocket endpoint (no upgrade).
    check(http.get(url("/v1/ws")).send().await.expect("http"), 400, "invalid_request").await;
    check(http.post(url("/v1/logout")).send().await.expect("http"), 401, "unauthenticated").await;
    // 429 carries when to retry, in the body and the standard header.
    s.register("fred").await;
    let body = json!({"username": "fred", "password": "not the password"}).to_string();
    let mut limited = None;
    for _ in 0..20 {
        let resp =
            http.post(url("/v1/login")).header("content-type", "application/json").body(body.clone()).send().await;
        let resp = resp.expect("http");
        if resp.status().as_u16() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("limited");
    assert!(resp.headers().get("retry-after").is_some());
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["code"], "rate_limited");
    assert!(v["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
}

#[tokio::test]
async fn arbitrary_http_bodies_get_a_json_error_never_a_panic_or_a_5xx() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    let s = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let bytes = proptest::collection::vec(any::<u8>(), 0..2048);
    let json_like =
        (prop::option::of("\\PC{0,40}"), prop::option::of("\\PC{0,40}"), prop::option::of(any::<i64>()), 0usize..40)
            .prop_map(|(u, p, n, depth)| {
                let mut v = serde_json::json!({"username": u, "password": p, "device": n});
                for _ in 0..depth {
                    v = serde_json::json!([v]);
                }
                v.to_string().into_bytes()
            });
    for i in 0..400 {
        let body = if i % 2 == 0 {
            bytes.new_tree(&mut runner).expect("bytes").current()
        } else {
            json_like.new_tree(&mut runner).expect("json").current()
        };
        let path = if i % 3 == 0 { "/v1/register" } else { "/v1/login" };
        let resp = http
            .post(format!("{}{path}", s.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        let reply: serde_json::Value = resp.json().await.expect("a JSON body");
        assert!(status < 500, "{status} for {:?}: {reply}", String::from_utf8_lossy(&body));
        if status >= 400 {
            assert!(reply["code"].is_string(), "{reply}");
        }
    }
    // Still serving.
    s.register("after_fuzz").await;
}

#[tokio::test]
async fn a_user_lists_their_devices_and_signs_others_out_for_good() {
    let s = TestServer::start().await;
    let body = json!({"username": "gina", "password": PASSWORD, "device": "laptop"}).to_string();
    let (_, first) = s.post("/v1/register", &body, None).await;
    let laptop_token = first["token"].as_str().expect("token").to_owned();
    let login = |device: &str| json!({"username": "gina", "password": PASSWORD, "device": device}).to_string();
    let (_, phone_login) = s.post("/v1/login", &login("phone"), None).await;
    let (_, tablet) = s.post("/v1/login", &login("tablet"), None).await;
    let phone_token = phone_login["token"].as_str().expect("token").to_owned();
    let mut laptop = s.connect(&laptop_token).await;
    let mut phone = s.connect(&phone_token).await;
    let mut tablet_ws = s.connect(tablet["token"].as_str().expect("token")).await;

    let list = laptop.ok(json!({"type": "sessions"})).await;
    let sessions = list["sessions"].as_array().expect("sessions").clone();
    let devices: Vec<&str> = sessions.iter().map(|x| x["device"].as_str().expect("device")).collect();
    assert_eq!(devices, ["laptop", "phone", "tablet"]);
    assert_eq!(sessions.iter().filter(|x| x["current"] == true).count(), 1);
    assert_eq!(sessions[0]["current"], true);
    assert!(sessions.iter().all(|x| x["last_seen"].as_i64() >= x["created"].as_i64()));

    // Another account's session is not ours to revoke.
    let mut other = s.user("hank").await;
    let phone_id = sessions[1]["id"].clone();
    assert_eq!(other.err(json!({"type": "revoke_session", "session": phone_id})).await, "not_found");
    // Revoking the phone closes its socket with 4001; its token is dead.
    laptop.ok(json!({"type": "revoke_session", "session": phone_id})).await;
    assert_eq!(phone.close_code().await, Some(4001));
    let mut again = Ws::open(&s.url).await;
    assert_eq!(again.err(json!({"type": "hello", "token": phone_token, "protocol": 1})).await, "invalid_token");
    // Revoking the others leaves only the laptop.
    laptop.ok(json!({"type": "revoke_other_sessions"})).await;
    assert_eq!(tablet_ws.close_code().await, Some(4001));
    let left = laptop.ok(json!({"type": "sessions"})).await;
    assert_eq!(left["sessions"].as_array().expect("list").len(), 1);
    laptop.ok(json!({"type": "ping"})).await;
}

#[tokio::test]
async fn a_session_unused_for_longer_than_the_limit_expires() {
    let s = TestServer::with_limits(confab_server::Limits {
        session_ttl: std::time::Duration::from_millis(1500),
        ..confab_server::Limits::default()
    })
    .await;
    let token = s.register("ivy").await;
    // Used: still valid, and its clock restarts.
    drop(s.connect(&token).await);
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let mut ws = Ws::open(&s.url).await;
    assert_eq!(ws.err(json!({"type": "hello", "token": token, "protocol": 1})).await, "invalid_token");
}

#[tokio::test]
async fn an_account_keeps_at_most_a_bounded_number_of_sessions() {
    let s = TestServer::start().await;
    let (user, _) = s.quick_user("kim").await;
    let store = &s.server.state.service.store;
    let mut evicted = Vec::new();
    for i in 0..(confab_server::store::MAX_SESSIONS_PER_USER + 5) {
        let token = confab_server::auth::new_token();
        let device = format!("device {i}");
        let (_, gone) =
            store.create_session(user, &confab_server::auth::token_hash(&token), Some(&device)).await.expect("create");
        evicted.extend(gone);
    }
    // The first (quick_user's) and the oldest are gone; the list is bounded.
    assert_eq!(evicted.len(), 6);
    let sessions = store.sessions_of(user).await.expect("list");
    assert_eq!(sessions.len() as i64, confab_server::store::MAX_SESSIONS_PER_USER);
}
