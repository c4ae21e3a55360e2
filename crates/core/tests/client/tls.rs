//! https and wss served by the server itself, trusted through a private CA.

use crate::support::*;
use confab_core::{Client, Error};
use confab_server::{Config, Limits, TlsFiles};

#[tokio::test]
async fn chat_over_wss_with_a_private_ca_and_only_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = private_ca(dir.path());
    let mut config = Config::new("127.0.0.1:0".parse().expect("addr"), dir.path().join("server.db"));
    config.limits = Limits { requests_per_sec: 100_000, request_burst: 100_000, ..Limits::default() };
    config.tls = Some(TlsFiles { cert, key });
    let server = confab_server::start(config).await.expect("server");
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let ca = std::fs::read(ca).expect("ca");

    // A client that does not trust the CA is refused: verification is on.
    let stranger = Client::open(&dir.path().join("eve")).await.expect("profile");
    let err = stranger.register(&url, "eve", PASSWORD).await.expect_err("untrusted certificate");
    assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
    // Nor does plain http reach a TLS server.
    let plain = format!("http://127.0.0.1:{}", server.addr.port());
    assert!(stranger.register(&plain, "eve", PASSWORD).await.is_err());

    let alice = Client::open(&dir.path().join("alice")).await.expect("profile").with_ca_cert(&ca).expect("ca");
    alice.register(&url, "alice", PASSWORD).await.expect("register over https");
    start_synced(&alice).await;
    let bob = Client::open(&dir.path().join("bob")).await.expect("profile").with_ca_cert(&ca).expect("ca");
    bob.register(&url, "bob", PASSWORD).await.expect("register over https");
    start_synced(&bob).await;
    let conv = alice.open_direct("bob").await.expect("dm over wss");
    let ids = vec![alice.send(conv, "hello over wss").await.expect("q")];
    alice.wait_sent(&ids).await.expect("sent");
    assert_eq!(texts_when(&bob, conv, 1).await, ["hello over wss"]);
    bob.logout().await.expect("logout over https");
    assert!(Client::open(&dir.path().join("x")).await.expect("profile").with_ca_cert(b"not a pem").is_err());
}
