//! Load generator and physical reference for `bench/run` (a dev-only
//! example, so the daemon binary and its dependencies stay lean):
//!
//! - `raw`: the physical reference: aws-lc-rs signing in this process on
//!   `--threads` threads, no socket, no JSON, no JWT encoding;
//! - `sign`: signature requests over the daemon's Unix socket on `--conns`
//!   keep-alive connections, closed loop (as fast as answers come) or open
//!   loop at `--rate` requests/s (latency counted from each request's
//!   scheduled start, so a slow answer cannot hide the queue behind it);
//! - `hold`: opens `--conns` connections, makes one request on each, and
//!   keeps them open for `--secs` (RSS with many clients);
//! - `startup`: starts the daemon on an existing directory and times the
//!   way to a 200 from `/readyz`;
//! - `endpoint`: a local OAuth token endpoint for `bench/tokens` (answers
//!   every `client_credentials` POST with a fresh token for the scope asked;
//!   it does not verify the assertion, so its cost stays small);
//! - `tokens`: `POST /v1/tokens` over the socket, closed loop on `--conns`
//!   connections, connection i as client i mod `--clients`: cached (every
//!   answer must say `cached: true`) or with `--fresh` a `DELETE
//!   /v1/tokens` before each POST, so that each POST signs an assertion and
//!   calls the endpoint (every answer must say `cached: false`); only the
//!   POST is timed.
//!
//! Every result is one line of `key=value` pairs for the script to read.
//! The client is a minimal hand-written HTTP/1.1 on a single-threaded
//! runtime: it shares the cores with the daemon, so it must cost little.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA384};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// In-process aws-lc-rs signing rate (the physical reference).
    Raw {
        #[arg(long)]
        alg: String,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 4096)]
        rsa_bits: u32,
    },
    /// Signature requests over the socket.
    Sign {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        alg: String,
        #[arg(long, default_value = "app")]
        client: String,
        #[arg(long, default_value = "https://ehr.example.com/oauth2/token")]
        aud: String,
        #[arg(long, default_value_t = 64)]
        conns: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Open loop at this many requests/s over all connections.
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds of load before counting starts.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    /// Opens many connections and holds them.
    Hold {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// A local token endpoint; prints `addr=IP:PORT`, then serves until killed.
    Endpoint {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Token requests over the socket: cached, or fresh (`--fresh`).
    Tokens {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        token_url: String,
        /// Clients `<prefix>0` .. `<prefix>N-1`.
        #[arg(long, default_value = "app")]
        client_prefix: String,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value = "ES384")]
        alg: String,
        #[arg(long, default_value = "system/Patient.rs")]
        scope: String,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// DELETE the token before each POST.
        #[arg(long)]
        fresh: bool,
    },
    /// Start-to-ready time of the daemon on existing keys.
    Startup {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn main() {
    match Cli::parse().cmd {
        Cmd::Raw {
            alg,
            threads,
            secs,
            rsa_bits,
        } => raw(&alg, threads, secs, rsa_bits),
        Cmd::Sign {
            socket,
            alg,
            client,
            aud,
            conns,
            secs,
            rate,
            warmup,
        } => {
            let body = format!(r#"{{"client_id":"{client}","audience":"{aud}","alg":"{alg}"}}"#);
            runtime().block_on(sign(socket, body, conns, secs, rate, warmup));
        }
        Cmd::Hold {
            socket,
            conns,
            secs,
        } => runtime().block_on(hold(socket, conns, secs)),
        Cmd::Startup { bin, config, runs } => startup(&bin, &config, runs),
        Cmd::Endpoint { port } => runtime().block_on(endpoint(port)),
        Cmd::Tokens {
            socket,
            token_url,
            client_prefix,
            clients,
            alg,
            scope,
            conns,
            secs,
            warmup,
            fresh,
        } => {
            let bodies = (0..clients.max(1))
                .map(|i| {
                    format!(
                        r#"{{"client_id":"{client_prefix}{i}","token_url":"{token_url}","scope":"{scope}","alg":"{alg}"}}"#
                    )
                })
                .collect();
            runtime().block_on(tokens(socket, bodies, conns, secs, warmup, fresh));
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A signing input of the size the daemon signs (header.claims, base64url).
fn jwt_like_input() -> Vec<u8> {
    let mut v = Vec::with_capacity(420);
    while v.len() < 420 {
        v.extend_from_slice(b"eyJhbGciOiJSUzM4NCIsImtpZCI6ImRlZmF1bHQtcnMzODQtdjEtYWJjZGVmZ2gifQ.");
    }
    v.truncate(420);
    v
}

fn raw(alg: &str, threads: usize, secs: f64, rsa_bits: u32) {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    };
    enum Key {
        Rsa(aws_lc_rs::rsa::KeyPair),
        Ec(EcdsaKeyPair),
    }
    let key = Arc::new(match alg {
        "RS384" => {
            let size = match rsa_bits {
                2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                _ => aws_lc_rs::rsa::KeySize::Rsa4096,
            };
            Key::Rsa(aws_lc_rs::rsa::KeyPair::generate(size).expect("rsa keygen"))
        }
        _ => Key::Ec(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("ec keygen")),
    });
    let msg = Arc::new(jwt_like_input());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (key, msg, stop, count) = (key.clone(), msg.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let rng = SystemRandom::new();
                let mut n = 0u64;
                let mut sig = vec![0u8; 1024];
                while !stop.load(Ordering::Relaxed) {
                    match &*key {
                        Key::Rsa(k) => {
                            let len = k.public_modulus_len();
                            k.sign(&RSA_PKCS1_SHA384, &rng, &msg, &mut sig[..len])
                                .expect("sign");
                        }
                        Key::Ec(k) => {
                            let s = k.sign(&rng, &msg).expect("sign");
                            std::hint::black_box(s);
                        }
                    }
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("signer thread");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    println!(
        "mode=raw alg={alg} threads={threads} ops={n} rate={:.1}",
        n as f64 / elapsed
    );
}

/// One keep-alive HTTP/1.1 connection over the socket.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Where the last answer's body starts in `buf`.
    body_at: usize,
}

impl Conn {
    async fn open(path: &PathBuf) -> std::io::Result<Conn> {
        Ok(Conn {
            stream: UnixStream::connect(path).await?,
            buf: Vec::with_capacity(4096),
            body_at: 0,
        })
    }

    /// Sends one request and reads the whole answer; returns the status.
    async fn request(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<u16> {
        self.stream.write_all(head).await?;
        if !body.is_empty() {
            self.stream.write_all(body).await?;
        }
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap_or("");
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let want = end + 4 + len;
                while self.buf.len() < want {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                self.body_at = end + 4;
                return Ok(status);
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The body of the last answer.
    fn body(&self) -> &[u8] {
        &self.buf[self.body_at.min(self.buf.len())..]
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn sign(
    socket: PathBuf,
    body: String,
    conns: usize,
    secs: f64,
    rate: Option<f64>,
    warmup: f64,
) {
    let head = format!(
        "POST /v1/assertions HTTP/1.1\r\nHost: jwksd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let head: Arc<[u8]> = Arc::from(head.into_bytes());
    let body: Arc<[u8]> = Arc::from(body.into_bytes());
    let t0 = Instant::now() + Duration::from_millis(50);
    let count_from = t0 + Duration::from_secs_f64(warmup);
    let end = count_from + Duration::from_secs_f64(secs);
    // Open loop: request n is due at t0 + n / rate on connection n % conns,
    // whether or not earlier answers were late, and its latency counts from
    // that instant (no coordinated omission). The due times come from a
    // pacer thread sleeping with the kernel's high-resolution timer: tokio's
    // timer wheel rounds every sleep up to the next millisecond, which would
    // add up to 1 ms of the client's own lateness to every latency.
    let mut pacing = Vec::with_capacity(conns);
    let mut schedules = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        pacing.push(tx);
        schedules.push(rx);
    }
    // Not joined: it stops by itself at `end`, or at the first closed
    // connection.
    let _pacer = rate.map(|r| {
        std::thread::spawn(move || {
            for n in 0u64.. {
                let at = t0 + Duration::from_secs_f64(n as f64 / r);
                if at >= end {
                    break;
                }
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if pacing[(n % pacing.len() as u64) as usize].send(at).is_err() {
                    break;
                }
            }
        })
    });
    let mut tasks = tokio::task::JoinSet::new();
    for mut schedule in schedules {
        let (socket, head, body) = (socket.clone(), head.clone(), body.clone());
        tasks.spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let (mut ok, mut err) = (0u64, 0u64);
            let mut conn = match Conn::open(&socket).await {
                Ok(c) => c,
                Err(_) => return (lat, ok, 1u64),
            };
            tokio::time::sleep_until(t0.into()).await;
            loop {
                let due = match rate {
                    Some(_) => match schedule.recv().await {
                        Some(at) => at,
                        None => break,
                    },
                    None => Instant::now(),
                };
                if due >= end {
                    break;
                }
                let status = conn.request(&head, &body).await;
                let done = Instant::now();
                if due < count_from {
                    continue;
                }
                match status {
                    Ok(200) => {
                        ok += 1;
                        lat.push((done - due).as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(_) => err += 1,
                    Err(_) => {
                        err += 1;
                        match Conn::open(&socket).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            (lat, ok, err)
        });
    }
    report(tasks, &format!("mode=sign conns={conns}"), secs).await;
}

/// Gathers the clients' latencies (µs) and counts, and prints one line:
/// `<what> ok= err= rate= p50_ms= p99_ms= max_ms=`.
async fn report(mut tasks: tokio::task::JoinSet<(Vec<u32>, u64, u64)>, what: &str, secs: f64) {
    let mut lat = Vec::new();
    let (mut ok, mut err) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (l, o, e) = r.expect("client task");
        lat.extend(l);
        ok += o;
        err += e;
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    println!(
        "{what} ok={ok} err={err} rate={:.1} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        ok as f64 / secs,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}

async fn hold(socket: PathBuf, conns: usize, secs: f64) {
    let head = b"GET /v1/keys HTTP/1.1\r\nHost: jwksd\r\n\r\n";
    let mut open = Vec::with_capacity(conns);
    let mut failed = 0;
    for _ in 0..conns {
        match Conn::open(&socket).await {
            Ok(mut c) => match c.request(head, b"").await {
                Ok(200) => open.push(c),
                _ => failed += 1,
            },
            Err(_) => failed += 1,
        }
    }
    println!("mode=hold open={} failed={failed}", open.len());
    std::io::stdout().flush().ok();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    drop(open);
}

fn startup(bin: &PathBuf, config: &PathBuf, runs: usize) {
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut child = std::process::Command::new(bin)
            .args(["serve", "--allow-root", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the daemon");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("first line");
        // Keep draining: a closed pipe would kill the daemon at its next line.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let admin = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .expect("admin= in the start line")
            .to_owned();
        loop {
            if readyz(&admin) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "never ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "mode=startup runs={runs} median_ms={:.1} min_ms={:.1} max_ms={:.1}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}

fn readyz(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// `application/x-www-form-urlencoded` value decoding (`+` and `%XX`).
fn form_value(body: &str, name: &str) -> String {
    let raw = body
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or("")
        .replace('+', " ");
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| raw.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The local token endpoint: a fresh token for the scope asked, one hour.
async fn endpoint(port: u16) {
    static ISSUED: AtomicU64 = AtomicU64::new(0);
    async fn token(body: String) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        if form_value(&body, "grant_type") != "client_credentials"
            || form_value(&body, "client_assertion").is_empty()
        {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({"error": "invalid_request"})),
            )
                .into_response();
        }
        let n = ISSUED.fetch_add(1, Ordering::Relaxed);
        axum::Json(serde_json::json!({
            "access_token": format!("bench-token-{n}"),
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": form_value(&body, "scope"),
        }))
        .into_response()
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the endpoint");
    println!("addr={}", listener.local_addr().expect("local addr"));
    let app = axum::Router::new().route("/token", axum::routing::post(token));
    axum::serve(listener, app).await.expect("serve");
}

/// Closed-loop token requests; connection i uses `bodies[i % len]`.
async fn tokens(
    socket: PathBuf,
    bodies: Vec<String>,
    conns: usize,
    secs: f64,
    warmup: f64,
    fresh: bool,
) {
    let heads = |method: &str, body: &str| -> Vec<u8> {
        format!(
            "{method} /v1/tokens HTTP/1.1\r\nHost: jwksd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes()
    };
    let t0 = Instant::now() + Duration::from_millis(50);
    let count_from = t0 + Duration::from_secs_f64(warmup);
    let end = count_from + Duration::from_secs_f64(secs);
    let want: &'static [u8] = if fresh {
        b"\"cached\":false"
    } else {
        b"\"cached\":true"
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..conns {
        let text = bodies[i % bodies.len()].clone();
        let post = heads("POST", &text);
        // DELETE names the cache key only: no `alg`.
        let forget = match text.find(r#","alg":"#) {
            Some(at) => format!("{}}}", &text[..at]),
            None => text.clone(),
        };
        let delete = heads("DELETE", &forget);
        let (body, forget) = (text.into_bytes(), forget.into_bytes());
        let socket = socket.clone();
        tasks.spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let (mut ok, mut err) = (0u64, 0u64);
            let mut conn = match Conn::open(&socket).await {
                Ok(c) => c,
                Err(_) => return (lat, ok, 1u64),
            };
            // The cached mode's first answer fills the cache.
            if !fresh && conn.request(&post, &body).await.ok() != Some(200) {
                return (lat, ok, 1u64);
            }
            tokio::time::sleep_until(t0.into()).await;
            loop {
                if Instant::now() >= end {
                    break;
                }
                if fresh {
                    match conn.request(&delete, &forget).await {
                        Ok(204) => {}
                        _ => {
                            err += 1;
                            break;
                        }
                    }
                }
                let start = Instant::now();
                let status = conn.request(&post, &body).await;
                let done = Instant::now();
                if start < count_from {
                    continue;
                }
                match status {
                    Ok(200) if find(conn.body(), want).is_some() => {
                        ok += 1;
                        lat.push((done - start).as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(_) => err += 1,
                    Err(_) => {
                        err += 1;
                        break;
                    }
                }
            }
            (lat, ok, err)
        });
    }
    report(
        tasks,
        &format!("mode=tokens fresh={fresh} conns={conns}"),
        secs,
    )
    .await;
}
