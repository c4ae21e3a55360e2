//! The server under attack from the network: floods of password checks,
//! and answers that keep their contract.

use confab_tests::*;

#[test]
fn a_login_flood_for_unknown_users_keeps_memory_bounded_and_gets_401_or_429() {
    let tmp = temp_dir("flood");
    let server = Server::start(&tmp.path().join("server"));
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
                            http_post(&url, "/v1/login", &body)
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
