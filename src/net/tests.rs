//! The accept loop against real TCP connections on 127.0.0.1:0, with short
//! limits. The TLS step is tested in `http::tls`, the peer credentials in
//! `socket`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http_body_util::{BodyExt as _, Empty};
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Limits, Plain, serve};

/// `/` answers at once, `/slow` after 300 ms, `/slower` after 800 ms (more
/// than the 500 ms header timeout), `/stuck` never; `POST
/// /early` answers 429 without reading the request's body, as a refused
/// request does.
fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/early",
            axum::routing::post(|| async { (StatusCode::TOO_MANY_REQUESTS, "no") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        )
        .route("/stuck", get(std::future::pending::<&'static str>))
        .route(
            "/slower",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "slower"
            }),
        )
}

fn limits(max_connections: usize) -> Limits {
    Limits {
        max_connections,
        header_timeout: Duration::from_millis(500),
        grace: Duration::from_secs(2),
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// A plain HTTP/1.1 listener on 127.0.0.1:0.
    async fn start(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            "test",
            listener,
            Plain::new(limits.header_timeout),
            router(),
            limits,
            shutdown.clone(),
        ));
        Server {
            addr,
            shutdown,
            task,
        }
    }

    /// Cancels and returns how long `serve` took to return.
    async fn stop(self) -> Duration {
        let started = Instant::now();
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve did not return")
            .unwrap();
        started.elapsed()
    }
}

/// An HTTP/1.1 keep-alive client connection.
async fn open(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get_on(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    sender.ready().await?;
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// One request on a fresh connection.
async fn get_once(addr: SocketAddr, path: &str) -> (StatusCode, Bytes) {
    get_on(&mut open(addr).await, path).await.unwrap()
}

/// Reads until the server closes `s` (EOF or reset); `None` if it is still
/// open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_client_sending_headers_byte_by_byte_is_cut_after_the_header_timeout_while_another_is_served()
 {
    let server = Server::start(limits(8)).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut cut_after = None;
    for b in request.iter().cycle() {
        if slow.write_all(&[*b]).await.is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(50))
            .await
            .is_some()
        {
            cut_after = Some(started.elapsed());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never cut");
        assert_eq!(get_once(server.addr, "/").await.0, StatusCode::OK);
    }
    let cut_after = cut_after.unwrap();
    assert!(
        cut_after >= Duration::from_millis(450) && cut_after < Duration::from_millis(1500),
        "cut after {cut_after:?}, header timeout 500 ms"
    );
    assert_eq!(get_once(server.addr, "/").await.0, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_cut_after_the_header_timeout() {
    let server = Server::start(limits(8)).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let cut_after = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent client kept its connection");
    assert!(
        cut_after >= Duration::from_millis(400) && cut_after < Duration::from_millis(1500),
        "{cut_after:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn with_max_connections_n_idle_connections_make_the_next_wait_until_one_closes() {
    let server = Server::start(Limits {
        header_timeout: Duration::from_secs(30),
        ..limits(2)
    })
    .await;
    let mut idle = vec![open(server.addr).await, open(server.addr).await];
    // Both served once, then idle on keep-alive.
    for sender in &mut idle {
        assert_eq!(get_on(sender, "/").await.unwrap().0, StatusCode::OK);
    }
    let addr = server.addr;
    let third = tokio::spawn(async move { get_once(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while two were open"
    );
    drop(idle.pop());
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third connection was not served after one closed")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_and_closes_idle_keep_alive_connections() {
    let server = Server::start(limits(8)).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    let mut busy = open(server.addr).await;
    let in_flight = tokio::spawn(async move { get_on(&mut busy, "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shutdown = server.shutdown.clone();
    let stopped = tokio::spawn(server.stop());
    shutdown.cancelled().await;

    let closed = closed_within(&mut idle, Duration::from_secs(1)).await;
    assert!(
        closed.is_some(),
        "an idle keep-alive connection was left open"
    );
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"slow"[..]));
    let took = stopped.await.unwrap();
    assert!(took < Duration::from_secs(1), "{took:?}, grace 2 s");
}

#[tokio::test]
async fn shutdown_closes_connections_that_outlive_the_grace_and_the_listener() {
    let server = Server::start(Limits {
        grace: Duration::from_millis(300),
        ..limits(8)
    })
    .await;
    let addr = server.addr;
    let mut stuck = open(addr).await;
    let in_flight = tokio::spawn(async move { get_on(&mut stuck, "/stuck").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let took = server.stop().await;
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}, grace 300 ms"
    );
    let answer = tokio::time::timeout(Duration::from_secs(2), in_flight)
        .await
        .expect("the stuck request's connection was left open")
        .unwrap();
    assert!(answer.is_err(), "{answer:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn plain_tcp_answers_h2c_with_prior_knowledge_as_axum_serve_did() {
    let server = Server::start(limits(8)).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("http://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("h2c not answered")
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.version(), hyper::Version::HTTP_2);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_starts_the_h2_preface_and_stalls_is_cut_at_the_header_timeout() {
    let server = Server::start(limits(8)).await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(b"PR").await.unwrap();
    let cut = closed_within(&mut stalled, Duration::from_secs(5)).await;
    let cut = cut.expect("a stalled preface kept its connection");
    assert!(
        cut >= Duration::from_millis(400),
        "{cut:?}, header timeout 500 ms"
    );
    // Meanwhile, and after, others are served.
    assert_eq!(get_once(server.addr, "/").await.0, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_client_still_sending_its_body_after_an_early_answer_reads_it_and_a_clean_close() {
    let server = Server::start(limits(8)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client
        .write_all(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n")
        .await
        .unwrap();
    // The answer comes on the headers alone, before the body is sent.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"no") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("no early answer")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 429"), "{answer:?}");
    // The client goes on writing its body, as a client that writes its
    // request before it reads does; a server that closed the connection
    // outright resets it (EPIPE or ECONNRESET here).
    for _ in 0..4 {
        client
            .write_all(&[b'x'; 1000])
            .await
            .expect("the body could not be sent after the early answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("not closed after the body");
    assert!(end.is_ok(), "closed with {end:?} rather than EOF");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_h2_connection_is_asked_to_finish_after_the_header_timeout() {
    let server = Server::start(limits(8)).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    // A request slower than the idle bound is not cut by it.
    let req = hyper::Request::get("http://localhost/slower")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let answer = sender.send_request(req).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"slower");
    let started = Instant::now();
    // Then nothing: the server sends GOAWAY and the connection ends.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("an idle h2 connection was kept open")
        .unwrap()
        .unwrap();
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(400),
        "{after:?}, header timeout 500 ms"
    );
    server.stop().await;
}
