//! Connection exhaustion (issue 11, finding 4): the server serves at most
//! `max_client_connections` at once; beyond that it accepts nothing more until a connection
//! ends, so idle clients cannot take every file descriptor.

use crate::support::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use std::time::Duration;
use vouch_proto::ProblemCode;

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(
        Db::Sqlite,
        vouch_ca::api::Settings {
            max_client_connections: 2,
            ..settings()
        },
    )
    .await;
    let root = app.root_pem();
    let healthz = |client: &reqwest::Client| client.get(app.url("/healthz")).send();
    // Two clients, each keeping its (HTTP/2) connection open after a request.
    let first = client_for(&root, None);
    let second = client_for(&root, None);
    assert_eq!(healthz(&first).await.unwrap().status(), StatusCode::OK);
    assert_eq!(healthz(&second).await.unwrap().status(), StatusCode::OK);
    // A third is not served while both are open. (Not a timing claim: it stays pending for
    // as long as the two connections stay open; half a second shows it pending.)
    let third = client_for(&root, None);
    let waiting = tokio::time::timeout(Duration::from_millis(500), healthz(&third)).await;
    assert!(waiting.is_err(), "served beyond the cap: {waiting:?}");
    // One closes: the third is served.
    drop(first);
    let served = healthz(&third).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    // The clients still connected keep working.
    assert_eq!(healthz(&second).await.unwrap().status(), StatusCode::OK);
}

/// A client like `client_for` that speaks HTTP/1.1 only (keep-alive instead of HTTP/2).
fn http1_client(root: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root).unwrap())
        .http1_only()
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_connection_with_nothing_in_flight_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(
        Db::Sqlite,
        vouch_ca::api::Settings {
            max_client_connections: 1,
            idle_timeout: Duration::from_millis(300),
            ..settings()
        },
    )
    .await;
    let root = app.root_pem();
    let healthz = |client: &reqwest::Client| client.get(app.url("/healthz")).send();
    for (version, first) in [
        (reqwest::Version::HTTP_2, client_for(&root, None)),
        (reqwest::Version::HTTP_11, http1_client(&root)),
    ] {
        // The first client keeps its connection (the only one the server serves) and sends
        // nothing more.
        let answer = healthz(&first).await.unwrap();
        assert_eq!(
            (answer.version(), answer.status()),
            (version, StatusCode::OK)
        );
        // A second client is served once the server has closed the idle connection. Before
        // idle timeouts it waited as long as the first client kept its connection.
        let second = client_for(&root, None);
        let served = tokio::time::timeout(Duration::from_secs(30), healthz(&second))
            .await
            .unwrap_or_else(|_| panic!("an idle {version:?} connection was never closed"));
        assert_eq!(served.unwrap().status(), StatusCode::OK);
        drop(second);
        // The first client can still work: it connects again.
        assert_eq!(healthz(&first).await.unwrap().status(), StatusCode::OK);
        drop(first);
    }
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_answered_408_and_the_connection_freed() {
    let app = spawn_app_with(
        Db::Sqlite,
        vouch_ca::api::Settings {
            max_client_connections: 1,
            request_body_timeout: Duration::from_millis(300),
            ..settings()
        },
    )
    .await;
    let root = app.root_pem();
    for client in [client_for(&root, None), http1_client(&root)] {
        // A body that starts and then never goes on (nor ends).
        let start =
            futures_util::stream::iter([Ok::<_, std::io::Error>(b"{\"token\": \"ey".to_vec())]);
        let body = reqwest::Body::wrap_stream(start.chain(futures_util::stream::pending()));
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            client
                .post(app.url("/v1/enroll"))
                .header("content-type", "application/json")
                .body(body)
                .send(),
        )
        .await
        .expect("a stalled body held its request open");
        let answer = answer.unwrap();
        assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
        let problem: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(problem["code"], ProblemCode::RequestBodyTimeout.as_str());
        // The one connection the server serves is free again for someone else (an HTTP/1
        // connection is closed by the server; HTTP/2 reset only the stream, so the client
        // lets go of its connection).
        drop(client);
        let other = client_for(&root, None);
        let healthz = other.get(app.url("/healthz")).send();
        let served = tokio::time::timeout(Duration::from_secs(30), healthz).await;
        assert_eq!(
            served
                .expect("the stalled connection was kept")
                .unwrap()
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn a_connection_that_never_sends_a_client_hello_is_closed_after_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(
        Db::Sqlite,
        vouch_ca::api::Settings {
            max_client_connections: 1,
            handshake_timeout: Duration::from_millis(300),
            // Longer than the test waits: only the handshake timeout can free the connection.
            idle_timeout: Duration::from_secs(3600),
            ..settings()
        },
    )
    .await;
    let root = app.root_pem();
    // Two attackers in turn: one connects and sends nothing, one sends the first bytes of a
    // TLS record (a handshake record header announcing a ClientHello) and stops.
    for opening in [&[][..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut silent = tokio::net::TcpStream::connect(app.server.addr)
            .await
            .unwrap();
        silent.write_all(opening).await.unwrap();
        // The server closes it: the read ends (EOF or reset) instead of waiting forever.
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a connection without a handshake was kept (opening {opening:?}): {closed:?}"
        );
        // And the one connection the server serves is free for a real client.
        let client = client_for(&root, None);
        let served = tokio::time::timeout(
            Duration::from_secs(30),
            client.get(app.url("/healthz")).send(),
        )
        .await
        .expect("the silent connection still held the only slot");
        assert_eq!(served.unwrap().status(), StatusCode::OK);
        drop(client);
    }
}
