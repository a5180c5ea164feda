//! Micro-benchmarks of the signing path's pieces: JWS encoding alone (with
//! a no-op signature), signing alone, the whole encode+sign, verification,
//! and the JWKS encoding done once per key change. Run by hand:
//! `cargo bench --bench jose`; `bench/run` measures the daemon end to end.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jwksd::jose::{AssertionClaims, Jwk, JwtHeader, encode_jwks, encode_jws, new_jti, thumbprint};
use jwksd::keys::{PublicKey, SigningKey, generate};
use jwksd::types::{Alg, Kid, SetName};

fn signer(alg: Alg) -> SigningKey {
    let key = generate(alg, 4096).expect("generate");
    let set = SetName::new("default").expect("set name");
    let kid = Kid::build(&set, alg, 1, &thumbprint(&key.public));
    SigningKey::from_pkcs8(alg, kid, &key.pkcs8).expect("parse")
}

fn header_claims(key: &SigningKey) -> (JwtHeader, AssertionClaims) {
    let header = JwtHeader {
        alg: key.alg(),
        kid: key.kid().clone(),
        jku: Some("https://keys.example.com/.well-known/jwks.json".into()),
    };
    let claims = AssertionClaims {
        iss: "my-backend-app".into(),
        sub: "my-backend-app".into(),
        aud: "https://ehr.example.com/oauth2/token".into(),
        iat: 1_800_000_000,
        exp: 1_800_000_300,
        jti: new_jti().expect("jti"),
    };
    (header, claims)
}

fn verify(public: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    use aws_lc_rs::signature::{
        ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA384, RsaPublicKeyComponents,
        UnparsedPublicKey,
    };
    match public {
        PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
            .verify(&RSA_PKCS1_2048_8192_SHA384, msg, sig)
            .is_ok(),
        PublicKey::Ec384 { x, y } => {
            let mut point = vec![0x04];
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
                .verify(msg, sig)
                .is_ok()
        }
    }
}

fn benches(c: &mut Criterion) {
    for alg in [Alg::Rs384, Alg::Es384] {
        let key = signer(alg);
        let (header, claims) = header_claims(&key);
        let mut g = c.benchmark_group(alg.as_str());
        g.bench_function("encode_only", |b| {
            b.iter(|| {
                encode_jws(black_box(&header), black_box(&claims), |_| {
                    Ok::<_, ()>(vec![0u8; 96])
                })
            })
        });
        g.bench_function("jti", |b| b.iter(new_jti));
        let input = jwksd::jose::b64url(&[7u8; 300]);
        g.bench_function("sign_only", |b| {
            b.iter(|| key.sign(black_box(input.as_bytes())))
        });
        g.bench_function("encode_and_sign", |b| {
            b.iter(|| encode_jws(&header, &claims, |m| key.sign(m)))
        });
        let sig = key.sign(input.as_bytes()).expect("sign");
        g.bench_function("verify", |b| {
            b.iter(|| verify(key.public(), black_box(input.as_bytes()), &sig))
        });
        g.finish();
    }
    let set = SetName::new("default").expect("set name");
    let jwks: Vec<Jwk> = [Alg::Rs384, Alg::Es384, Alg::Rs384, Alg::Es384]
        .iter()
        .enumerate()
        .map(|(i, &alg)| {
            let k = generate(alg, 2048).expect("generate");
            let kid = Kid::build(&set, alg, i as u32 + 1, &thumbprint(&k.public));
            Jwk::from_public(&kid, alg, &k.public)
        })
        .collect();
    c.bench_function("encode_jwks_4_keys", |b| {
        b.iter(|| encode_jwks(black_box(&jwks)))
    });
}

criterion_group! {
    name = jose;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(jose);
