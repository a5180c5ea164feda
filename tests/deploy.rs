//! The deployment files are valid: systemd accepts the unit, every
//! Kubernetes manifest parses as YAML, and the configs and policies they
//! carry pass jwksd's own checks.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_jwksd");

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

#[test]
fn systemd_accepts_the_unit() {
    if !have("systemd-analyze") {
        eprintln!("SKIPPED systemd unit check: systemd-analyze is not installed");
        return;
    }
    // verify insists that ExecStart exists: point it at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string("deploy/systemd/jwksd.service")
        .unwrap()
        .replace("/usr/bin/jwksd", BIN);
    let path = dir.path().join("jwksd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Lines about other units on this machine are not ours to judge.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("jwksd")).collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
}

/// `~@resources` filters out the calls that lower a key-generation
/// thread's priority; a later allow line must put them back, or key
/// generation competes with signing at full priority under systemd (the
/// daemon only logs a warning). systemd applies the lines in order.
#[test]
fn the_unit_lets_key_generation_lower_its_own_priority() {
    let unit = std::fs::read_to_string("deploy/systemd/jwksd.service").unwrap();
    let filters: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
        .collect();
    let removed = filters
        .iter()
        .rposition(|f| {
            f.starts_with('~')
                && f.split_whitespace()
                    .any(|w| w.trim_start_matches('~') == "@resources")
        })
        .expect("the unit no longer removes @resources: update this test");
    for call in ["setpriority", "sched_setscheduler"] {
        let allowed = filters
            .iter()
            .rposition(|f| !f.starts_with('~') && f.split_whitespace().any(|w| w == call));
        assert!(
            allowed.is_some_and(|a| a > removed),
            "{call} is filtered out by ~@resources and not allowed again after it"
        );
    }
}

#[test]
fn every_kubernetes_manifest_parses_as_yaml_with_kind_and_name() {
    let check = r#"
import sys, yaml
for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    for d in docs:
        assert "apiVersion" in d and "kind" in d, f"{path}: a document without apiVersion/kind"
        assert d.get("metadata", {}).get("name"), f"{path}: {d['kind']} without metadata.name"
print("ok")
"#;
    let mut files = Vec::new();
    for dir in ["deploy/kubernetes", "deploy/kubernetes/replicas"] {
        files.extend(
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml")),
        );
    }
    assert!(files.len() >= 8);
    let probe = Command::new("python3").args(["-c", "import yaml"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED Kubernetes manifest check: python3 with PyYAML is not installed");
        return;
    }
    let out = Command::new("python3")
        .args(["-c", check])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_production_config_and_example_policies_pass_jwksd_checks() {
    let out = Command::new(BIN)
        .args(["policy", "check", "policies/default.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "deploy/jwksd.toml",
        "deploy/compose/jwksd.toml",
        "deploy/kubernetes/replicas/jwksd.toml",
    ] {
        let config = jwksd::config::Config::from_toml(
            Path::new(file),
            &std::fs::read_to_string(file).unwrap(),
        );
        assert!(config.is_ok(), "{file}: {config:?}");
    }
    let compose = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert 'services' in d",
        ])
        .arg("deploy/compose/docker-compose.yaml")
        .output();
    if let Ok(out) = compose {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
