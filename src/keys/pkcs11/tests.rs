//! The PKCS#11 driver against a real SoftHSM 2 token.
//!
//! Each SoftHSM test runs in a child process of this test binary with its
//! own token in its own tempdir: `SOFTHSM2_CONF` is read by the module at
//! `C_Initialize` and is process-global, and setting it in this process
//! would race with the other tests' threads (it is `unsafe` in Rust 2024).
//! The parent makes the token with `softhsm2-util`, then re-runs the one
//! test (`--exact`) with `SOFTHSM2_CONF` and `JWKSD_TEST_SOFTHSM_DIR` set;
//! the child finds the variable and runs the body. Without softhsm2 the
//! tests print `SKIPPED: softhsm2 not installed`, except under `CI=true`,
//! where they fail (CI installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use p384::ecdsa::signature::Verifier as _;

use super::error::ckr_name;
use super::objects::{ec_point_xy, is_jwksd_label, looks_like_kid};
use super::*;
use crate::keys::public::{ES384_SIGNATURE_LEN, PublicKey};
use crate::keys::secret::SecretBytes;
use crate::types::{Alg, Kid, SetName};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const LABEL: &str = "jwksd-test";
const PIN: &str = "1234";
const SO_PIN: &str = "5678";
const CHILD_ENV: &str = "JWKSD_TEST_SOFTHSM_DIR";

/// A SoftHSM token made for one test (in the child process).
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn settings(&self, name: &str, pin: &str) -> Pkcs11Settings {
        Pkcs11Settings {
            name: name.to_owned(),
            module: PathBuf::from(MODULE),
            token: TokenChoice::Label(LABEL.to_owned()),
            pin: SecretBytes::copy_from(pin.as_bytes()),
            pin_file: None,
            sessions: 4,
        }
    }

    fn token(&self) -> Pkcs11Token {
        Pkcs11Token::new(self.settings("hsm", PIN))
    }

    fn tokens_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }
}

/// Runs `body` against a fresh token, in a child process (see the module
/// doc). `name` is the test function's name.
fn with_softhsm(name: &str, body: impl FnOnce(&Fixture)) {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        body(&Fixture {
            dir: PathBuf::from(dir),
        });
        return;
    }
    if !Path::new(MODULE).exists() || which("softhsm2-util").is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("softhsm2 not installed, and CI=true: .ci/run installs it");
        }
        eprintln!("SKIPPED: softhsm2 not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = tmp.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            LABEL,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "softhsm2-util --init-token: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let test = format!("{}::{name}", module_path!().trim_start_matches("jwksd::"));
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            test.as_str(),
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_ENV, tmp.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(
        child.status.success(),
        "{test} failed in its SoftHSM child:\n{out}\n{err}"
    );
    // `--exact` with a wrong name runs nothing and succeeds: make sure the
    // body really ran.
    assert!(
        out.contains("1 passed"),
        "{test} did not run in the child:\n{out}\n{err}"
    );
    eprint!("{err}");
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// A kid as the lifecycle builds it: set, alg, version, thumbprint.
fn kid_for(version: u32) -> impl Fn(&PublicKey) -> Kid {
    move |public: &PublicKey| {
        Kid::build(
            &SetName::new("pk").unwrap(),
            public.alg(),
            version,
            &crate::jose::thumbprint(public),
        )
    }
}

/// Verifies with RustCrypto (`rsa`, `p384`), from the public half read
/// back from the token: an implementation independent of both the token
/// and aws-lc-rs.
fn independently_verifies(public: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
    match public {
        PublicKey::Rsa { n, e } => {
            let n = rsa::BoxedUint::from_be_slice_vartime(n);
            let e = rsa::BoxedUint::from_be_slice_vartime(e);
            let public = rsa::PublicKey::new(n, e).unwrap();
            let verifier = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha384>::new(public);
            let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig) else {
                return false;
            };
            verifier.verify(message, &sig).is_ok()
        }
        PublicKey::Ec384 { x, y } => {
            let mut point = vec![0x04];
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            let verifier = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
            if sig.len() != ES384_SIGNATURE_LEN {
                return false;
            }
            let Ok(sig) = p384::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            verifier.verify(message, &sig).is_ok()
        }
    }
}

/// Every key object on the token with `CKA_ID` = `id`, as (private, label).
fn objects_with_id(token: &Pkcs11Token, id: &[u8]) -> Vec<(bool, String)> {
    token
        .test_rw_session(|session| {
            let mut out = Vec::new();
            for (class, private) in [
                (ObjectClass::PRIVATE_KEY, true),
                (ObjectClass::PUBLIC_KEY, false),
            ] {
                for h in session
                    .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
                    .unwrap()
                {
                    let attrs = session
                        .get_attributes(h, &[cryptoki::object::AttributeType::Label])
                        .unwrap();
                    let label = attrs
                        .iter()
                        .find_map(|a| match a {
                            Attribute::Label(l) => Some(String::from_utf8_lossy(l).into_owned()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    out.push((private, label));
                }
            }
            out
        })
        .unwrap()
}

/// Every object on the token whose label starts with `prefix`.
fn labels_starting_with(token: &Pkcs11Token, prefix: &str) -> Vec<String> {
    token
        .test_rw_session(|session| {
            session
                .find_objects(&[])
                .unwrap()
                .into_iter()
                .filter_map(|h| {
                    session
                        .get_attributes(h, &[cryptoki::object::AttributeType::Label])
                        .ok()?
                        .into_iter()
                        .find_map(|a| match a {
                            Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
                            _ => None,
                        })
                })
                .filter(|l| l.starts_with(prefix))
                .collect()
        })
        .unwrap()
}

fn sign_and_verify(token: &Pkcs11Token, alg: Alg, rsa_bits: u32) {
    let (kid, public) = token.generate(alg, rsa_bits, &kid_for(1)).unwrap();
    assert_eq!(public.alg(), alg);
    if let PublicKey::Rsa { n, e } = &public {
        assert_eq!(n.len() * 8, rsa_bits as usize);
        assert_eq!(e, &[1, 0, 1]);
    }
    assert_eq!(
        token.public_key(&kid).unwrap(),
        public,
        "public half read back"
    );
    let message = b"header.payload";
    let sig = token.sign(&kid, alg, message).unwrap();
    match alg {
        Alg::Rs384 => assert_eq!(sig.len() * 8, rsa_bits as usize),
        Alg::Es384 => assert_eq!(sig.len(), ES384_SIGNATURE_LEN),
    }
    assert!(
        independently_verifies(&public, message, &sig),
        "{alg} verifies with RustCrypto"
    );
    assert!(!independently_verifies(&public, b"header.other", &sig));
    // Twice: the second signature uses the cached handle.
    let again = token.sign(&kid, alg, b"second").unwrap();
    assert!(independently_verifies(&public, b"second", &again));
    token.destroy(&kid).unwrap();
}

// ---- SoftHSM tests -------------------------------------------------------

#[test]
fn rs384_2048_signature_from_the_token_verifies_with_rustcrypto() {
    with_softhsm(
        "rs384_2048_signature_from_the_token_verifies_with_rustcrypto",
        |fx| {
            sign_and_verify(&fx.token(), Alg::Rs384, 2048);
        },
    );
}

#[test]
fn rs384_4096_signature_from_the_token_verifies_with_rustcrypto() {
    with_softhsm(
        "rs384_4096_signature_from_the_token_verifies_with_rustcrypto",
        |fx| {
            sign_and_verify(&fx.token(), Alg::Rs384, 4096);
        },
    );
}

#[test]
fn es384_signature_from_the_token_is_r_s_and_verifies_with_rustcrypto() {
    with_softhsm(
        "es384_signature_from_the_token_is_r_s_and_verifies_with_rustcrypto",
        |fx| {
            sign_and_verify(&fx.token(), Alg::Es384, 0);
        },
    );
}

#[test]
fn generated_key_is_labelled_by_kid_on_both_halves_and_no_temp_label_is_left() {
    with_softhsm(
        "generated_key_is_labelled_by_kid_on_both_halves_and_no_temp_label_is_left",
        |fx| {
            let token = fx.token();
            for alg in Alg::ALL {
                let (kid, public) = token.generate(alg, 2048, &kid_for(3)).unwrap();
                assert_eq!(
                    kid,
                    kid_for(3)(&public),
                    "the kid comes from the public half read back"
                );
                let mut objects = objects_with_id(&token, kid.as_str().as_bytes());
                objects.sort();
                assert_eq!(
                    objects,
                    vec![(false, kid.to_string()), (true, kid.to_string())],
                    "public and private object, CKA_ID = CKA_LABEL = kid"
                );
            }
            assert_eq!(
                labels_starting_with(&token, "jwksd-new-"),
                Vec::<String>::new()
            );
        },
    );
}

#[test]
fn private_half_is_sensitive_never_extractable_and_on_the_token() {
    with_softhsm(
        "private_half_is_sensitive_never_extractable_and_on_the_token",
        |fx| {
            let token = fx.token();
            for alg in Alg::ALL {
                let (kid, _) = token.generate(alg, 2048, &kid_for(1)).unwrap();
                let attrs = token.private_attributes(&kid).unwrap();
                assert_eq!(
                    attrs,
                    PrivateAttributes {
                        sensitive: true,
                        extractable: false,
                        always_sensitive: true,
                        never_extractable: true,
                        token: true,
                    },
                    "{alg}"
                );
            }
            let missing = Kid::from_stored("pk-es384-v9-missing0");
            assert!(matches!(
                token.private_attributes(&missing),
                Err(Pkcs11Error::KeyNotFound { kid }) if kid == missing
            ));
        },
    );
}

#[test]
fn destroy_removes_both_halves_and_is_idempotent() {
    with_softhsm("destroy_removes_both_halves_and_is_idempotent", |fx| {
        let token = fx.token();
        let (kid, _) = token.generate(Alg::Es384, 0, &kid_for(1)).unwrap();
        let (other, _) = token.generate(Alg::Es384, 0, &kid_for(2)).unwrap();
        token.sign(&kid, Alg::Es384, b"cache the handle").unwrap();
        assert_eq!(objects_with_id(&token, kid.as_str().as_bytes()).len(), 2);
        assert_eq!(token.destroy(&kid).unwrap(), 2);
        assert_eq!(objects_with_id(&token, kid.as_str().as_bytes()).len(), 0);
        assert_eq!(token.destroy(&kid).unwrap(), 0, "idempotent");
        assert_eq!(
            objects_with_id(&token, other.as_str().as_bytes()).len(),
            2,
            "other keys stay"
        );
        assert!(matches!(
            token.sign(&kid, Alg::Es384, b"x"),
            Err(Pkcs11Error::KeyNotFound { .. })
        ));
        assert!(matches!(
            token.public_key(&kid),
            Err(Pkcs11Error::KeyNotFound { .. })
        ));
    });
}

#[test]
fn list_objects_finds_an_orphaned_temp_key_and_ignores_foreign_ones() {
    with_softhsm(
        "list_objects_finds_an_orphaned_temp_key_and_ignores_foreign_ones",
        |fx| {
            let token = fx.token();
            let (kid, _) = token.generate(Alg::Es384, 0, &kid_for(1)).unwrap();
            // A crash between generation and renaming leaves a pair labelled
            // `jwksd-new-...`; another application's key sits beside ours.
            let orphan = "jwksd-new-00112233aabbccdd";
            token
                .test_rw_session(|session| {
                    for label in [orphan, "other-app-key"] {
                        let public = [
                            Attribute::Token(true),
                            Attribute::EcParams(super::objects::SECP384R1_PARAMS.to_vec()),
                            Attribute::Label(label.into()),
                            Attribute::Id(label.into()),
                        ];
                        let private = [
                            Attribute::Token(true),
                            Attribute::Private(true),
                            Attribute::Sensitive(true),
                            Attribute::Sign(true),
                            Attribute::Label(label.into()),
                            Attribute::Id(label.into()),
                        ];
                        session
                            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                            .unwrap();
                    }
                })
                .unwrap();
            let mut listed = token.list_objects().unwrap();
            listed.sort_by(|a, b| (&a.label, a.private).cmp(&(&b.label, b.private)));
            let expected = |label: &str, private| TokenObject {
                label: label.to_owned(),
                id: label.as_bytes().to_vec(),
                private,
            };
            let mut wanted = vec![
                expected(orphan, false),
                expected(orphan, true),
                expected(kid.as_str(), false),
                expected(kid.as_str(), true),
            ];
            wanted.sort_by(|a, b| (&a.label, a.private).cmp(&(&b.label, b.private)));
            assert_eq!(listed, wanted);
            // Cleanup by id works on the orphan too.
            assert_eq!(token.destroy(&Kid::from_stored(orphan)).unwrap(), 2);
            assert_eq!(
                labels_starting_with(&token, "other-app-key").len(),
                2,
                "foreign keys untouched"
            );
        },
    );
}

#[test]
fn wrong_pin_is_refused_with_ckr_pin_incorrect_not_resent_and_a_fixed_pin_file_is_used() {
    with_softhsm(
        "wrong_pin_is_refused_with_ckr_pin_incorrect_not_resent_and_a_fixed_pin_file_is_used",
        |fx| {
            let pin_file = fx.dir.join("pin");
            std::fs::write(&pin_file, "0000\n").unwrap();
            // Only its owner may read a PIN file (as the master key file).
            std::fs::set_permissions(
                &pin_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            let mut settings = fx.settings("hsm", "0000");
            settings.pin_file = Some(pin_file.clone());
            let token = Pkcs11Token::new(settings);
            let err = token.connect().unwrap_err();
            assert_eq!(
                err.to_string(),
                r#"backend "hsm": login refused: CKR_PIN_INCORRECT"#
            );
            assert!(err.is_unavailable());
            let Health::Down { reason, .. } = token.health() else {
                panic!("health is Up after a refused login");
            };
            assert_eq!(reason, err.to_string());
            // Within a second: fails fast with the reason, nothing sent.
            let fast = token.sign(&Kid::from_stored("pk-es384-v1-aaaaaaaa"), Alg::Es384, b"m");
            let fast = fast.unwrap_err();
            assert!(matches!(fast, Pkcs11Error::Down { .. }), "{fast}");
            assert!(fast.to_string().contains("CKR_PIN_INCORRECT"), "{fast}");
            // Later, the same PIN is not sent again.
            std::thread::sleep(connection::RETRY_EVERY + Duration::from_millis(100));
            let again = token.connect().unwrap_err();
            assert!(
                matches!(
                    again,
                    Pkcs11Error::Login {
                        not_retried: true,
                        ..
                    }
                ),
                "{again}"
            );
            // The operator fixes the file: the next attempt logs in.
            std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
            std::thread::sleep(connection::RETRY_EVERY + Duration::from_millis(100));
            token.connect().unwrap();
            assert_eq!(token.health(), Health::Up);
        },
    );
}

#[test]
fn unknown_token_label_gives_a_clear_not_found_error() {
    with_softhsm("unknown_token_label_gives_a_clear_not_found_error", |fx| {
        let mut settings = fx.settings("hsm", PIN);
        settings.token = TokenChoice::Label("nope".to_owned());
        let token = Pkcs11Token::new(settings);
        let err = token.connect().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(r#"backend "hsm": token "nope" not found in any slot of {MODULE}"#)
        );
        assert!(err.is_unavailable());
        assert!(matches!(token.health(), Health::Down { .. }));

        let mut settings = fx.settings("hsm", PIN);
        settings.token = TokenChoice::Slot(4242);
        let err = Pkcs11Token::new(settings).connect().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(r#"backend "hsm": no token in slot 4242 of {MODULE}"#)
        );

        let mut settings = fx.settings("hsm", PIN);
        settings.module = fx.dir.join("missing.so");
        let err = Pkcs11Token::new(settings).connect().unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"backend "hsm": cannot load PKCS#11 module "#),
            "{err}"
        );
    });
}

#[test]
fn token_reconnects_by_itself_after_its_login_is_ended_under_it() {
    with_softhsm(
        "token_reconnects_by_itself_after_its_login_is_ended_under_it",
        |fx| {
            let token = fx.token();
            let (kid, public) = token.generate(Alg::Es384, 0, &kid_for(1)).unwrap();
            token.sign(&kid, Alg::Es384, b"before").unwrap();
            // C_Logout through the shared library context ends the login of
            // every session of the process, as a token reset would.
            token
                .test_rw_session(|session| session.logout().unwrap())
                .unwrap();
            let err = token.sign(&kid, Alg::Es384, b"during").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    r#"backend "hsm": signing with {kid} failed: CKR_USER_NOT_LOGGED_IN; reconnecting"#
                )
            );
            assert!(err.is_unavailable());
            assert!(matches!(token.health(), Health::Down { .. }));
            let sig = token.sign(&kid, Alg::Es384, b"after").unwrap();
            assert!(independently_verifies(&public, b"after", &sig));
            assert_eq!(token.health(), Health::Up);
        },
    );
}

#[test]
fn token_reconnects_by_itself_after_the_library_is_finalized_under_it() {
    with_softhsm(
        "token_reconnects_by_itself_after_the_library_is_finalized_under_it",
        |fx| {
            let token = fx.token();
            let (kid, public) = token.generate(Alg::Rs384, 2048, &kid_for(1)).unwrap();
            token.sign(&kid, Alg::Rs384, b"before").unwrap();
            // C_Finalize behind the driver's back: every session and handle is
            // gone, as after a module crash or a device reset.
            token.test_pkcs11().finalize().unwrap();
            let err = token.sign(&kid, Alg::Rs384, b"during").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    r#"backend "hsm": signing with {kid} failed: CKR_CRYPTOKI_NOT_INITIALIZED; reconnecting"#
                )
            );
            let sig = token.sign(&kid, Alg::Rs384, b"after").unwrap();
            assert!(independently_verifies(&public, b"after", &sig));
            assert_eq!(token.health(), Health::Up);
        },
    );
}

/// The token's storage vanishes under a running process (SoftHSM: its
/// token directory is moved away), then comes back.
#[test]
fn token_goes_down_while_its_storage_is_gone_and_comes_back_with_it() {
    with_softhsm(
        "token_goes_down_while_its_storage_is_gone_and_comes_back_with_it",
        |fx| {
            let token = fx.token();
            let (kid, public) = token.generate(Alg::Es384, 0, &kid_for(1)).unwrap();
            token.sign(&kid, Alg::Es384, b"before").unwrap();
            let away = fx.dir.join("tokens-away");
            std::fs::rename(fx.tokens_dir(), &away).unwrap();
            // SoftHSM drops objects whose files are gone: the session is
            // still logged in, so this is (honestly) "not found".
            assert!(matches!(
                token.sign(&kid, Alg::Es384, b"during"),
                Err(Pkcs11Error::KeyNotFound { .. })
            ));
            // Writing fails with CKR_GENERAL_ERROR: the connection is dropped
            // (C_Finalize: this is the module's only user).
            let err = token.generate(Alg::Es384, 0, &kid_for(2)).unwrap_err();
            assert_eq!(
                err.to_string(),
                r#"backend "hsm": generating an ES384 key failed: CKR_GENERAL_ERROR; reconnecting"#
            );
            assert!(matches!(token.health(), Health::Down { .. }));
            // The reconnect re-initializes the library, which cannot load
            // its object store: down, with the reason.
            let err = token.connect().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(r#"backend "hsm": C_Initialize of {MODULE} failed: CKR_GENERAL_ERROR"#)
            );
            assert!(err.is_unavailable());
            // Within a second, calls fail fast with that reason.
            let fast = token.sign(&kid, Alg::Es384, b"during").unwrap_err();
            assert!(matches!(fast, Pkcs11Error::Down { .. }), "{fast}");
            assert!(fast.to_string().contains("C_Initialize"), "{fast}");
            std::fs::rename(&away, fx.tokens_dir()).unwrap();
            std::thread::sleep(connection::RETRY_EVERY + Duration::from_millis(100));
            let sig = token.sign(&kid, Alg::Es384, b"after").unwrap();
            assert!(independently_verifies(&public, b"after", &sig));
            assert_eq!(token.health(), Health::Up);
        },
    );
}

#[test]
fn many_threads_sign_at_once_through_the_pool() {
    with_softhsm("many_threads_sign_at_once_through_the_pool", |fx| {
        let token = Arc::new(fx.token());
        let (rsa_kid, rsa_pub) = token.generate(Alg::Rs384, 2048, &kid_for(1)).unwrap();
        let (ec_kid, ec_pub) = token.generate(Alg::Es384, 0, &kid_for(2)).unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let token = Arc::clone(&token);
                let (kid, alg, public) = if i % 2 == 0 {
                    (rsa_kid.clone(), Alg::Rs384, rsa_pub.clone())
                } else {
                    (ec_kid.clone(), Alg::Es384, ec_pub.clone())
                };
                std::thread::spawn(move || {
                    for j in 0..20 {
                        let message = format!("thread {i} message {j}");
                        let sig = token.sign(&kid, alg, message.as_bytes()).unwrap();
                        assert!(independently_verifies(&public, message.as_bytes(), &sig));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(token.health(), Health::Up);
    });
}

#[test]
fn two_tokens_on_one_module_share_the_initialized_library() {
    with_softhsm(
        "two_tokens_on_one_module_share_the_initialized_library",
        |fx| {
            let a = fx.token();
            let b = Pkcs11Token::new(fx.settings("hsm2", PIN));
            let (kid, public) = a.generate(Alg::Es384, 0, &kid_for(1)).unwrap();
            b.connect().unwrap();
            let sig = b.sign(&kid, Alg::Es384, b"m").unwrap();
            assert!(independently_verifies(&public, b"m", &sig));
            // One dropping its connection (logout affects both: login is per
            // application) does not finalize the library under the other.
            drop(a);
            let sig = b.sign(&kid, Alg::Es384, b"n").unwrap();
            assert!(independently_verifies(&public, b"n", &sig));
        },
    );
}

#[test]
fn check_passes_on_softhsm_and_lists_the_mechanisms() {
    with_softhsm("check_passes_on_softhsm_and_lists_the_mechanisms", |fx| {
        let token = fx.token();
        let report = token.check(2048).unwrap();
        let text = report.to_string();
        eprintln!("{text}");
        assert!(report.passed(), "{text}");
        for mechanism in [
            "CKM_RSA_PKCS_KEY_PAIR_GEN",
            "CKM_SHA384_RSA_PKCS",
            "CKM_EC_KEY_PAIR_GEN",
            "CKM_ECDSA",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("ok") && l.contains(mechanism)),
                "{mechanism} in\n{text}"
            );
        }
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(text.contains("RS384 sign and verify"), "{text}");
        assert!(text.contains("ES384 sign and verify"), "{text}");
        // Session keys: nothing left on the token.
        assert_eq!(token.list_objects().unwrap(), vec![]);
        assert_eq!(labels_starting_with(&token, "jwksd-").len(), 0);
    });
}

/// Raw sign rates (run by hand: `cargo test --lib keys::pkcs11::tests::sign_rates -- --ignored --nocapture`).
#[test]
#[ignore]
fn sign_rates() {
    with_softhsm("sign_rates", |fx| {
        let token = Arc::new(Pkcs11Token::new(Pkcs11Settings {
            sessions: Pkcs11Settings::default_sessions(),
            ..fx.settings("hsm", PIN)
        }));
        for (alg, bits) in [(Alg::Rs384, 4096), (Alg::Es384, 0)] {
            let (kid, _) = token.generate(alg, bits, &kid_for(1)).unwrap();
            let window = Duration::from_secs(3);
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < window {
                token.sign(&kid, alg, b"rate").unwrap();
                n += 1;
            }
            let single = n as f64 / start.elapsed().as_secs_f64();
            let threads = Pkcs11Settings::default_sessions();
            let start = Instant::now();
            let total: u64 = (0..threads)
                .map(|_| {
                    let token = Arc::clone(&token);
                    let kid = kid.clone();
                    std::thread::spawn(move || {
                        let mut n = 0u64;
                        while start.elapsed() < window {
                            token.sign(&kid, alg, b"rate").unwrap();
                            n += 1;
                        }
                        n
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .sum();
            let pooled = total as f64 / start.elapsed().as_secs_f64();
            eprintln!(
                "RATE {alg} {bits}: single thread {single:.0}/s, {threads} threads {pooled:.0}/s"
            );
        }
    });
}

// ---- Pure tests (no token) ------------------------------------------------

#[test]
fn return_codes_are_named_as_in_the_spec() {
    use cryptoki::error::RvError;
    assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
    assert_eq!(ckr_name(RvError::DeviceRemoved), "CKR_DEVICE_REMOVED");
    assert_eq!(
        ckr_name(RvError::SessionHandleInvalid),
        "CKR_SESSION_HANDLE_INVALID"
    );
    assert_eq!(ckr_name(RvError::UserNotLoggedIn), "CKR_USER_NOT_LOGGED_IN");
    assert_eq!(
        ckr_name(RvError::CryptokiNotInitialized),
        "CKR_CRYPTOKI_NOT_INITIALIZED"
    );
    assert_eq!(ckr_name(RvError::SlotIdInvalid), "CKR_SLOT_ID_INVALID");
    assert_eq!(
        ckr_name(RvError::VendorDefined(0x8000_0001)),
        "CKR_VENDOR_DEFINED+0x80000001"
    );
}

#[test]
fn connection_errors_make_the_token_unavailable_and_request_errors_do_not() {
    let token_err = |code: &str, reconnecting| Pkcs11Error::Token {
        backend: "hsm".into(),
        operation: "signing".into(),
        code: code.into(),
        reconnecting,
    };
    let e = token_err("CKR_DEVICE_REMOVED", true);
    assert_eq!(
        e.to_string(),
        r#"backend "hsm": signing failed: CKR_DEVICE_REMOVED; reconnecting"#
    );
    assert!(e.is_unavailable());
    assert!(!token_err("CKR_KEY_TYPE_INCONSISTENT", false).is_unavailable());
    assert!(
        !Pkcs11Error::KeyNotFound {
            kid: Kid::from_stored("k")
        }
        .is_unavailable()
    );
    use cryptoki::context::Function;
    use cryptoki::error::{Error, RvError};
    for rv in [
        RvError::SessionHandleInvalid,
        RvError::DeviceRemoved,
        RvError::UserNotLoggedIn,
        RvError::GeneralError,
    ] {
        assert!(
            super::error::breaks_connection(&Error::Pkcs11(rv, Function::Sign)),
            "{rv:?}"
        );
    }
    for rv in [
        RvError::KeyHandleInvalid,
        RvError::MechanismInvalid,
        RvError::PinIncorrect,
    ] {
        assert!(
            !super::error::breaks_connection(&Error::Pkcs11(rv, Function::Sign)),
            "{rv:?}"
        );
    }
}

#[test]
fn settings_debug_never_shows_the_pin() {
    let settings = Pkcs11Settings {
        name: "hsm".into(),
        module: MODULE.into(),
        token: TokenChoice::Slot(0),
        pin: SecretBytes::copy_from(b"s3cr3t-pin"),
        pin_file: None,
        sessions: 2,
    };
    let shown = format!("{settings:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    let token = Pkcs11Token::new(settings);
    assert!(!format!("{token:?}").contains("s3cr3t"));
    assert!(
        matches!(token.health(), Health::Down { ref reason, .. } if reason == "not connected yet")
    );
}

#[test]
fn jwksd_labels_are_kids_or_temporary_and_nothing_else() {
    assert!(looks_like_kid("pk-rs384-v1-AbC_-9xZ"));
    assert!(looks_like_kid("smart_app-es384-v12-abcdefgh"));
    assert!(
        looks_like_kid("a-es384-v3-ab-cd-ef"),
        "base64url may hold '-'"
    );
    assert!(!looks_like_kid("pk-rs256-v1-abcdefgh"));
    assert!(!looks_like_kid("pk-rs384-1-abcdefgh"));
    assert!(!looks_like_kid("pk-rs384-v-abcdefgh"));
    assert!(!looks_like_kid("pk-rs384-v1-abcdefg"));
    assert!(!looks_like_kid("Pk-rs384-v1-abcdefgh"));
    assert!(!looks_like_kid("other-app-key"));
    assert!(is_jwksd_label("jwksd-new-0011223344556677"));
    assert!(!is_jwksd_label("jwksd-check-0011223344556677"));
    assert!(!is_jwksd_label("other-app-key"));
}

#[test]
fn ec_point_is_read_bare_or_wrapped_in_an_octet_string() {
    let mut raw = vec![0x04];
    raw.extend((1..=96).map(|b| b as u8));
    let expected = ec_point_xy(&raw).unwrap();
    let PublicKey::Ec384 { x, y } = &expected else {
        panic!()
    };
    assert_eq!(x[0], 1);
    assert_eq!(y[47], 96);
    let mut wrapped = vec![0x04, 0x61];
    wrapped.extend(&raw);
    assert_eq!(ec_point_xy(&wrapped), Some(expected.clone()));
    let mut long_form = vec![0x04, 0x81, 0x61];
    long_form.extend(&raw);
    assert_eq!(ec_point_xy(&long_form), Some(expected));
    assert_eq!(ec_point_xy(&raw[..96]), None);
    let mut compressed = raw.clone();
    compressed[0] = 0x02;
    assert_eq!(ec_point_xy(&compressed), None);
}
