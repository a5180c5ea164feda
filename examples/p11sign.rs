//! Physical reference for `bench/pkcs11`: raw `C_Sign` on a PKCS#11 token,
//! in this process, with no socket, no JSON, no JWT encoding and no
//! verification (unless `--verify`).
//!
//! Opens `--module` (SoftHSM reads `SOFTHSM2_CONF` from the environment),
//! logs in to the token labelled `--token-label` with the PIN of
//! `--pin-file`, finds the private key whose `CKA_LABEL` is `--label` (a
//! jwksd kid), then signs a message of assertion size on `--threads`
//! threads, one session each, for `--secs` seconds after `--warmup`: RS384
//! as `CKM_SHA384_RSA_PKCS`, ES384 as SHA-384 here and `CKM_ECDSA` in the
//! token (what jwksd does). `--verify` also checks each signature against
//! the token's public key object with aws-lc-rs, as the daemon does for
//! every token signature: the difference is what that check costs.
//!
//! Prints one line of `key=value` pairs for the script to read.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA384, RsaPublicKeyComponents, UnparsedPublicKey,
};
use clap::Parser;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::RawAuthPin;
use sha2::{Digest, Sha384};

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    module: PathBuf,
    #[arg(long, default_value = "jwksd")]
    token_label: String,
    /// The user PIN, one line (a trailing newline is dropped).
    #[arg(long)]
    pin_file: PathBuf,
    /// `CKA_LABEL` of the private key: the kid.
    #[arg(long)]
    label: String,
    /// RS384 or ES384.
    #[arg(long)]
    alg: String,
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Bytes signed: the size of an assertion's JWS signing input.
    #[arg(long, default_value_t = 600)]
    msg_len: usize,
    /// Verify each signature with aws-lc-rs, as the daemon does.
    #[arg(long)]
    verify: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Alg {
    Rs384,
    Es384,
}

/// The public half, as aws-lc-rs wants it.
enum Public {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec(Vec<u8>),
}

impl Public {
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            Public::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA384, msg, sig)
                .is_ok(),
            Public::Ec(point) => UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
                .verify(msg, sig)
                .is_ok(),
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let alg = match cli.alg.as_str() {
        "RS384" => Alg::Rs384,
        "ES384" => Alg::Es384,
        other => panic!("--alg {other}: RS384 or ES384"),
    };
    let threads = if cli.threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        cli.threads
    };
    let pkcs11 = Pkcs11::new(&cli.module).expect("load the module");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = pkcs11
        .get_slots_with_token()
        .expect("C_GetSlotList")
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == cli.token_label)
        })
        .unwrap_or_else(|| panic!("no token labelled {}", cli.token_label));

    // The login belongs to the application: one anchor session holds it
    // for the sessions of every thread.
    let anchor = pkcs11.open_ro_session(slot).expect("C_OpenSession");
    let mut pin = std::fs::read(&cli.pin_file).expect("read the PIN file");
    if pin.last() == Some(&b'\n') {
        pin.pop();
    }
    anchor
        .login_with_raw(UserType::User, &RawAuthPin::new(Box::new(pin)))
        .expect("C_Login");
    let key = find(&anchor, ObjectClass::PRIVATE_KEY, &cli.label);
    let public = public_key(
        &anchor,
        alg,
        find(&anchor, ObjectClass::PUBLIC_KEY, &cli.label),
    );

    let msg: Vec<u8> = (0..cli.msg_len).map(|i| b'A' + (i % 26) as u8).collect();
    // One signature up front: the key signs, and verifies, or nothing counts.
    let probe = sign(&anchor, alg, key, &msg);
    assert!(
        public.verify(&msg, &probe),
        "the token's signature does not verify against its public key object"
    );

    let public = Arc::new(public);
    let msg = Arc::new(msg);
    let count = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let session = pkcs11.open_ro_session(slot).expect("C_OpenSession");
            let (public, msg, count, counting, stop) = (
                public.clone(),
                msg.clone(),
                count.clone(),
                counting.clone(),
                stop.clone(),
            );
            let verify = cli.verify;
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sig = sign(&session, alg, key, &msg);
                    if verify {
                        assert!(public.verify(&msg, &sig), "signature does not verify");
                    }
                    if counting.load(Ordering::Relaxed) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(cli.warmup));
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(cli.secs));
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("signing thread");
    }
    let ok = count.load(Ordering::Relaxed);
    println!(
        "mode=p11sign alg={} threads={threads} verify={} ok={ok} rate={:.1}",
        cli.alg,
        cli.verify,
        ok as f64 / elapsed
    );
}

/// The one object of `class` labelled `label`.
fn find(session: &Session, class: ObjectClass, label: &str) -> ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .expect("C_FindObjects");
    match found.as_slice() {
        [one] => *one,
        other => panic!("{} objects of class {class} labelled {label}", other.len()),
    }
}

fn sign(session: &Session, alg: Alg, key: ObjectHandle, msg: &[u8]) -> Vec<u8> {
    match alg {
        Alg::Rs384 => session.sign(&Mechanism::Sha384RsaPkcs, key, msg),
        Alg::Es384 => session.sign(&Mechanism::Ecdsa, key, &Sha384::digest(msg)),
    }
    .expect("C_Sign")
}

fn public_key(session: &Session, alg: Alg, handle: ObjectHandle) -> Public {
    let want = match alg {
        Alg::Rs384 => vec![AttributeType::Modulus, AttributeType::PublicExponent],
        Alg::Es384 => vec![AttributeType::EcPoint],
    };
    let attrs = session
        .get_attributes(handle, &want)
        .expect("C_GetAttributeValue");
    let get = |t: AttributeType| {
        attrs
            .iter()
            .find_map(|a| match (a, t) {
                (Attribute::Modulus(b), AttributeType::Modulus)
                | (Attribute::PublicExponent(b), AttributeType::PublicExponent)
                | (Attribute::EcPoint(b), AttributeType::EcPoint) => Some(b.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {t} on the public key object"))
    };
    match alg {
        Alg::Rs384 => Public::Rsa {
            n: get(AttributeType::Modulus),
            e: get(AttributeType::PublicExponent),
        },
        // CKA_EC_POINT is DER: OCTET STRING (04 61) around the 97-byte
        // uncompressed point.
        Alg::Es384 => {
            let der = get(AttributeType::EcPoint);
            let point = match der.as_slice() {
                [0x04, 0x61, rest @ ..] if rest.len() == 97 => rest.to_vec(),
                raw if raw.len() == 97 => raw.to_vec(),
                other => panic!("CKA_EC_POINT of {} bytes", other.len()),
            };
            Public::Ec(point)
        }
    }
}
