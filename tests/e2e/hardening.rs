//! The server under attack from the network: floods of password checks,
//! and answers that keep their contract.

use confab_tests::*;

#[test]
fn a_login_flood_for_unknown_users_keeps_memory_bounded_and_gets_401_or_429() {
    let tmp = temp_dir("flood");
    // Behind a (pretend) proxy, each request from its own address, so the
    // per-address limits do not hide the password-hashing pool.
    let server = Server::start_with(&tmp.path().join("server"), 0, &["--trust-proxy"]);
    let before = server.rss_bytes();
    // 600 logins for names that do not exist, 50 at a time.
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..50)
            .map(|w| {
                let url = server.url.clone();
                s.spawn(move || {
                    (0..12)
                        .map(|i| {
                            let body = format!(r#"{{"username":"nosuch{w}x{i}","password":"some-password-1"}}"#);
                            let from = format!("X-Forwarded-For: 10.{w}.{i}.1");
                            http_post(&url, "/v1/login", &body, &[from])
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let after = server.rss_bytes();
    assert_eq!(answers.len(), 600);
    for (status, body) in &answers {
        assert!(*status == 401 || *status == 429, "{status} {body}");
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
        let code = v["code"].as_str().expect("code");
        assert!(code == "invalid_credentials" || code == "rate_limited", "{body}");
        if *status == 429 {
            assert!(v["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{body}");
        }
    }
    assert!(answers.iter().any(|a| a.0 == 401), "some were checked");
    let mib = |b: u64| b / (1024 * 1024);
    eprintln!("RSS {} MiB before, {} MiB after the flood", mib(before), mib(after));
    assert!(after < 400 * 1024 * 1024, "RSS went from {} MiB to {} MiB", mib(before), mib(after));
}

#[test]
fn guessing_from_one_address_neither_locks_out_the_user_nor_buys_accounts() {
    let tmp = temp_dir("guard");
    let server = Server::start_with(&tmp.path().join("server"), 0, &["--trust-proxy", "--accounts-per-hour", "3"]);
    let from = |ip: &str| vec![format!("X-Forwarded-For: {ip}")];
    let account = |name: &str| format!(r#"{{"username":"{name}","password":"{PASSWORD}"}}"#);
    // One address creates at most 3 accounts an hour; another is unaffected.
    let made: Vec<u16> = (0..5)
        .map(|i| http_post(&server.url, "/v1/register", &account(&format!("bot{i}")), &from("10.0.0.66")).0)
        .collect();
    assert_eq!(made, [201, 201, 201, 429, 429]);
    assert_eq!(http_post(&server.url, "/v1/register", &account("alice"), &from("10.0.0.1")).0, 201);
    // Guessing alice's password from 10.0.0.66 gets limited there…
    let wrong = r#"{"username":"alice","password":"wrong password"}"#;
    let guesses: Vec<u16> = (0..15).map(|_| http_post(&server.url, "/v1/login", wrong, &from("10.0.0.66")).0).collect();
    assert!(guesses.contains(&429), "{guesses:?}");
    // …while alice, elsewhere, signs in.
    assert_eq!(http_post(&server.url, "/v1/login", &account("alice"), &from("10.0.0.1")).0, 200);
    // Without --trust-proxy the header is ignored: a client cannot pick its
    // own address to escape the limits.
    let plain = Server::start_with(&tmp.path().join("plain"), 0, &["--accounts-per-hour", "2"]);
    let made: Vec<u16> = (0..4)
        .map(|i| http_post(&plain.url, "/v1/register", &account(&format!("bot{i}")), &from(&format!("10.9.9.{i}"))).0)
        .collect();
    assert_eq!(made, [201, 201, 429, 429]);
}

#[test]
fn the_cli_chats_over_https_and_wss_with_the_servers_own_tls() {
    let tmp = temp_dir("tls");
    let (ca, cert, key) = private_ca(&tmp.path().join("pki"));
    let (cert, key) = (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned());
    let server = Server::start_with(&tmp.path().join("server"), 0, &["--tls-cert", &cert, "--tls-key", &key]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let alice = Profile::register_trusting(tmp.path(), &server.url, "alice", &ca);
    let bob = Profile::register_trusting(tmp.path(), &server.url, "bob", &ca);
    let conv = alice.ok(&["dm", "bob"]);
    alice.ok(&["send", &conv, "over tls"]);
    let h = bob.history(&conv, 10);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["text"], "over tls");
    // Without the CA the CLI refuses the server's certificate.
    let eve = Profile::new(tmp.path(), &server.url, "eve");
    let err = eve.fails(&["register", "eve"]);
    assert!(err.contains("certificate") || err.contains("reach"), "{err}");
}
