//! The client examples in `examples/` run against a real daemon and a local
//! token endpoint that verifies each assertion against the served JWKS:
//! the token path (a token from the socket, a FHIR call, `DELETE` and one
//! retry on a 401) and the assertion path (`FLOW=assertion`).

mod helpers;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode as AxStatus;
use axum::routing::post;
use helpers::*;
use serde_json::json;

/// What the fake EHR needs to check an assertion.
struct Ehr {
    jwks_from: SocketAddr,
    token_url: String,
    /// Tokens issued so far.
    issued: std::sync::atomic::AtomicUsize,
    /// The first token the FHIR endpoint was shown: refused with 401
    /// ever after, so the examples' retry runs.
    refused: std::sync::Mutex<Option<String>>,
}

async fn fhir(State(ehr): State<Arc<Ehr>>, headers: axum::http::HeaderMap) -> (AxStatus, String) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let mut refused = ehr.refused.lock().unwrap();
    let first = refused.get_or_insert_with(|| token.clone());
    if !token.starts_with("granted-") || *first == token {
        return (AxStatus::UNAUTHORIZED, String::new());
    }
    (
        AxStatus::OK,
        json!({"resourceType": "Bundle", "type": "searchset"}).to_string(),
    )
}

async fn token(State(ehr): State<Arc<Ehr>>, body: String) -> (AxStatus, String) {
    let field = |name: &str| {
        body.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_owned()
    };
    if field("grant_type") != "client_credentials"
        || !field("client_assertion_type").contains("jwt-bearer")
    {
        return (
            AxStatus::BAD_REQUEST,
            json!({"error": "unsupported_grant_type"}).to_string(),
        );
    }
    let jwt = field("client_assertion");
    let (_, _, jwks) = http(
        ehr.jwks_from,
        hyper::Method::GET,
        "/.well-known/jwks.json",
        &[],
    )
    .await
    .unwrap();
    let jwks: serde_json::Value = serde_json::from_slice(&jwks).unwrap();
    let (_, claims, _, _) = decode_jwt(&jwt);
    let ok = verify_with_jwks(&jwt, &jwks)
        && claims["aud"] == ehr.token_url.as_str()
        && claims["iss"] == "app"
        && claims["sub"] == "app";
    if ok {
        (
            AxStatus::OK,
            json!({
                "access_token": format!(
                    "granted-{}",
                    ehr.issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                ),
                "token_type": "bearer",
                "expires_in": 300
            })
            .to_string(),
        )
    } else {
        (
            AxStatus::UNAUTHORIZED,
            json!({"error": "invalid_client"}).to_string(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_example_gets_a_token_with_an_assertion_from_the_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let fhir_url = token_url.replace("/oauth2/token", "/fhir/Patient");
    let d = Daemon::start(
        &policy("")
            .replace(AUD, &token_url)
            .replace("jku = true", "jku = true\nscopes = [\"system/*.rs\"]"),
    );
    d.ready().await;
    let ehr = Arc::new(Ehr {
        jwks_from: d.public,
        token_url: token_url.clone(),
        issued: Default::default(),
        refused: Default::default(),
    });
    let app = axum::Router::new()
        .route("/oauth2/token", post(token))
        .route("/fhir/Patient", axum::routing::get(fhir))
        .with_state(ehr.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let runs: [(&str, &[&str]); 4] = [
        ("python3", &["examples/python_client.py"]),
        ("node", &["examples/node_client.mjs"]),
        ("ruby", &["examples/ruby_client.rb"]),
        ("sh", &["examples/curl.sh"]),
    ];
    let mut ran = 0;
    for (program, args) in runs {
        let needs: &[&str] = if program == "sh" {
            &["curl", "jq"]
        } else {
            &[program]
        };
        if let Some(missing) = needs.iter().find(|p| which(p).is_none()) {
            eprintln!("SKIPPED example {args:?}: {missing} is not installed");
            continue;
        }
        for flow in ["token", "assertion"] {
            let d_socket = d.socket.clone();
            let (token_url, fhir_url) = (token_url.clone(), fhir_url.clone());
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let out = tokio::task::spawn_blocking(move || {
                Command::new(program)
                    .args(&args)
                    .env("JWKSD_SOCKET", &d_socket)
                    .env("CLIENT_ID", "app")
                    .env("TOKEN_URL", &token_url)
                    .env("FHIR_URL", &fhir_url)
                    .env("FLOW", flow)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{program} ({flow}): {}\n{stdout}",
                String::from_utf8_lossy(&out.stderr)
            );
            let answer: serde_json::Value = serde_json::from_str(stdout.trim())
                .unwrap_or_else(|e| panic!("{program} ({flow}): not JSON ({e}): {stdout}"));
            match flow {
                "token" => assert_eq!(answer["resourceType"], "Bundle", "{program}"),
                _ => assert!(
                    answer["access_token"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("granted-")),
                    "{program}: {answer}"
                ),
            }
        }
        ran += 1;
    }
    // The first token was refused with 401, yet every token flow ended with
    // the Bundle: the example that met it dropped it and retried.
    assert!(
        ehr.refused.lock().unwrap().is_some(),
        "no FHIR call was made"
    );
    assert!(
        ran >= 1,
        "no example could run: python3, node, ruby and curl+jq all missing"
    );
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}
