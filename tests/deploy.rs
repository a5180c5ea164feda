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

/// The admin listener (`/metrics` names every client_id) listens on the
/// pod's address for the kubelet's probes: every Kubernetes pod running
/// jwksd must be selected by a NetworkPolicy that admits no source at
/// large to that port.
#[test]
fn every_kubernetes_jwksd_pod_has_its_admin_port_closed_by_a_network_policy() {
    let check = r#"
import sys, yaml
problems = []
for d in sys.argv[1:]:
    import glob
    docs = []
    for path in sorted(glob.glob(d + "/*.yaml")):
        docs += [x for x in yaml.safe_load_all(open(path)) if x]
    policies = [x for x in docs if x["kind"] == "NetworkPolicy"]
    for dep in [x for x in docs if x["kind"] == "Deployment"]:
        pod = dep["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        admin = {p["containerPort"] for c in pod["spec"]["containers"] if c["name"] == "jwksd"
                 for p in c.get("ports", []) if p.get("name") == "admin"}
        if not admin:
            continue
        mine = [p for p in policies
                if "Ingress" in p["spec"].get("policyTypes", [])
                and p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]
        if not mine:
            problems.append(f"{d}: Deployment {dep['metadata']['name']}: no NetworkPolicy selects its pods")
        for p in mine:
            for rule in p["spec"].get("ingress") or []:
                ports = rule.get("ports")
                opens = ports is None or any(q.get("port") in admin | {"admin"} for q in ports)
                if opens and not rule.get("from"):
                    problems.append(f"{d}: NetworkPolicy {p['metadata']['name']} opens the admin port of {dep['metadata']['name']} to every source")
if problems:
    sys.exit("\n".join(problems))
print("ok")
"#;
    let probe = Command::new("python3").args(["-c", "import yaml"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED admin port check: python3 with PyYAML is not installed");
        return;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            check,
            "deploy/kubernetes",
            "deploy/kubernetes/replicas",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
