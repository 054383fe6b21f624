//! The Kubernetes manifests of `deploy/kubernetes/` (the `mirror-receiver capture` DaemonSet):
//! - every manifest passes kubernetes-validate in strict mode (unknown fields rejected), against
//!   the newest Kubernetes it bundles and against 1.29, and the checker really rejects a
//!   misspelled field and a mistyped value;
//! - the environment the DaemonSet gives the container (its ConfigMap, its own `env`) passes
//!   `mirror-receiver validate --offline` (and a bad value in it fails), and every variable in
//!   it is one the binary reads and deploy/kubernetes/README.md explains;
//! - the DaemonSet's posture: host network, only CAP_NET_RAW, probes on the admin port that
//!   MIRROR_ADMIN_LISTEN names, a memory limit that covers the receiver's own bounds, a grace
//!   period over its shutdown time, the spool on a writable volume;
//! - `capture` started as the container would be (uid 0, only the capabilities it adds,
//!   no_new_privs) captures an HTTP exchange on loopback, and fails without them.
//!
//! kubernetes-validate (PyPI; it bundles the Kubernetes JSON schemas and works offline) is looked
//! up on `PATH` or at `KUBERNETES_VALIDATE_BIN`; the YAML is read with the PyYAML of its Python
//! (or `python3` with PyYAML). These tests skip with a message when they are missing, and fail
//! instead when `MIRROR_INFRA_REQUIRE=1`; the capture test needs root and setpriv
//! (`MIRROR_E2E_REQUIRE=1`). CI installs the checker with `pip install kubernetes-validate`.

mod common;

use common::{BIN, Need, skip};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const INSTALL: &str = "pip install kubernetes-validate";
/// The oldest Kubernetes the manifests are checked against (besides the newest bundled).
const OLDEST_KUBERNETES: &str = "1.29.0";
/// The variables of the capture flags (`mirror-receiver capture`, `validate` too): the
/// ConfigMap sets each.
const CAPTURE_ENV: &[&str] = &[
    "MIRROR_CAPTURE_INTERFACE",
    "MIRROR_CAPTURE_PROMISCUOUS",
    "MIRROR_CAPTURE_FILTER",
    "MIRROR_CAPTURE_BUFFER",
    "MIRROR_VNI",
];
/// What the receiver's process takes beyond its bounded buffers (tests/flood.rs: RSS stays
/// under the memory budget + 160 MiB).
const PROCESS_OVERHEAD: u64 = 160 << 20;
/// librdkafka's default `queue.buffering.max.kbytes` (1 GiB), when the manifests do not bound it.
const RDKAFKA_QUEUE_DEFAULT: u64 = 1 << 30;
/// CAP_NET_RAW's bit in a capability set (linux/capability.h).
const CAP_NET_RAW: u32 = 13;

fn dir() -> PathBuf {
    Path::new(ROOT).join("deploy/kubernetes")
}

/// `program` as a path: itself when it names one, else its first match on `PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// kubernetes-validate (from `KUBERNETES_VALIDATE_BIN` or `PATH`) if it runs, else a skip (or a
/// panic when `MIRROR_INFRA_REQUIRE=1`).
fn checker(test: &str) -> Option<PathBuf> {
    let program = std::env::var("KUBERNETES_VALIDATE_BIN")
        .unwrap_or_else(|_| "kubernetes-validate".to_string());
    let why = match Command::new(&program).arg("--version").output() {
        Ok(out) if out.status.success() => match on_path(&program) {
            Some(path) => {
                let version = String::from_utf8_lossy(&out.stdout);
                eprintln!("using {}: {}", path.display(), version.trim());
                return Some(path);
            }
            None => format!("{program} runs but is not a file on PATH"),
        },
        Ok(out) => format!(
            "`{program} --version` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("{program} not found ({e})"),
    };
    let why = format!("{why}; install: {INSTALL} (or set KUBERNETES_VALIDATE_BIN)");
    skip(Need::Infra, test, &why);
    None
}

/// A Python with PyYAML: the checker's own interpreter (its `#!` line: kubernetes-validate
/// depends on PyYAML), else `python3`. `None` after a skip.
fn yaml_python(test: &str) -> Option<Vec<String>> {
    let mut candidates = Vec::new();
    let program = std::env::var("KUBERNETES_VALIDATE_BIN")
        .unwrap_or_else(|_| "kubernetes-validate".to_string());
    if let Some(script) = on_path(&program).and_then(|p| std::fs::read_to_string(p).ok())
        && let Some(interp) = script.lines().next().and_then(|l| l.strip_prefix("#!"))
    {
        candidates.push(interp.split_whitespace().map(str::to_owned).collect());
    }
    candidates.push(vec!["python3".to_owned()]);
    for cmd in candidates {
        let ok = Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(cmd);
        }
    }
    skip(
        Need::Infra,
        test,
        &format!(
            "no Python with PyYAML to read the manifests; install: {INSTALL} (its venv has PyYAML), or apt-get install python3-yaml"
        ),
    );
    None
}

/// The YAML documents of `file`, as JSON values (empty documents left out).
fn load_yaml(python: &[String], file: &Path) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)";
    let mut cmd = Command::new(&python[0]);
    cmd.args(&python[1..]).args(["-c", SCRIPT]).arg(file);
    let out = run(cmd);
    assert!(
        out.status.success(),
        "reading {}: {}",
        file.display(),
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("the YAML reader's JSON")
}

/// The manifests, as `kustomization.yaml` lists them: file names and their resources.
struct Manifests {
    files: Vec<PathBuf>,
    docs: Vec<Value>,
}

impl Manifests {
    /// Reads the manifests (asserting that `kustomization.yaml` lists every other YAML file of
    /// the directory, and nothing else), or `None` after a skip.
    fn load(test: &str) -> Option<Manifests> {
        let python = yaml_python(test)?;
        let kustomization = load_yaml(&python, &dir().join("kustomization.yaml"));
        let listed: Vec<String> = kustomization[0]["resources"]
            .as_array()
            .expect("kustomization.yaml lists resources")
            .iter()
            .map(|r| r.as_str().expect("a resource file name").to_owned())
            .collect();
        let mut present: Vec<String> = std::fs::read_dir(dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
            .collect();
        present.sort();
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(
            sorted, present,
            "kustomization.yaml's resources are not the directory's manifests"
        );
        let files: Vec<PathBuf> = listed.iter().map(|f| dir().join(f)).collect();
        let docs = files.iter().flat_map(|f| load_yaml(&python, f)).collect();
        Some(Manifests { files, docs })
    }

    /// The one resource of `kind`.
    fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.docs.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "expected one {kind}");
        found[0]
    }

    fn daemonset(&self) -> &Value {
        self.one("DaemonSet")
    }

    /// The DaemonSet's one container.
    fn container(&self) -> &Value {
        let containers = self.daemonset()["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    /// The environment the container gets: its envFrom ConfigMaps (by name, from these
    /// manifests), then its own `env`, later ones winning as in Kubernetes. An optional Secret
    /// is not part of the repository and adds nothing.
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for from in self.container()["envFrom"].as_array().into_iter().flatten() {
            let prefix = from["prefix"].as_str().unwrap_or("");
            if let Some(name) = from["configMapRef"]["name"].as_str() {
                let cm = self
                    .docs
                    .iter()
                    .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
                    .unwrap_or_else(|| {
                        panic!("envFrom names ConfigMap {name}, not in the manifests")
                    });
                for (k, v) in cm["data"].as_object().expect("ConfigMap data") {
                    let v = v.as_str().expect("ConfigMap values are strings");
                    env.insert(format!("{prefix}{k}"), v.to_owned());
                }
            } else if let Some(name) = from["secretRef"]["name"].as_str() {
                assert_eq!(
                    from["secretRef"]["optional"], true,
                    "Secret {name} must be optional: the manifests do not create it"
                );
            } else {
                panic!("envFrom entry this test does not know: {from}");
            }
        }
        for var in self.container()["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().expect("env name");
            let value = var["value"]
                .as_str()
                .unwrap_or_else(|| panic!("env {name}: only literal values are checked here"));
            env.insert(name.to_owned(), value.to_owned());
        }
        env
    }
}

/// Runs `cmd`, killing it after a minute.
fn run(mut cmd: Command) -> Output {
    common::run_output(&mut cmd, Duration::from_secs(60))
}

use common::output_text as text;

/// `kubernetes-validate --strict` on `files` (against `version`, else the newest it bundles):
/// the output, and the resources it says passed.
fn validate_strict(checker: &Path, files: &[PathBuf], version: Option<&str>) -> (Output, usize) {
    let mut cmd = Command::new(checker);
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["-k", v]);
    }
    cmd.args(files);
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
        .count();
    (out, passed)
}

#[test]
fn manifests_pass_strict_schema_validation() {
    let test = "manifests_pass_strict_schema_validation";
    let Some(checker) = checker(test) else {
        return;
    };
    let Some(m) = Manifests::load(test) else {
        return;
    };
    for kind in ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"] {
        m.one(kind);
    }
    for version in [None, Some(OLDEST_KUBERNETES)] {
        let (out, passed) = validate_strict(&checker, &m.files, version);
        let report = text(&out);
        assert!(out.status.success(), "kubernetes-validate: {report}");
        // A kind without a schema is only a WARN with exit 0: every line must be a pass.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let other: Vec<&str> = stdout
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("INFO "))
            .collect();
        assert!(other.is_empty(), "kubernetes-validate: {report}");
        assert_eq!(
            passed,
            m.docs.len(),
            "resources checked, of {} in the manifests: {report}",
            m.docs.len()
        );
        if let Some(v) = version {
            let minor = v.rsplit_once('.').unwrap().0;
            assert!(
                stdout.contains(&format!("against version {minor}")),
                "{report}"
            );
        }
        eprintln!("kubernetes-validate --strict ({version:?}): {passed} resources passed");
    }
}

/// `file`'s text with the first line for which `change` returns a replacement replaced;
/// panics when no line matched.
fn mutate(file: &Path, change: impl Fn(&str) -> Option<String>) -> String {
    let original = std::fs::read_to_string(file).unwrap();
    let mut done = false;
    let lines: Vec<String> = original
        .lines()
        .map(|l| match change(l) {
            Some(new) if !done => {
                done = true;
                new
            }
            _ => l.to_owned(),
        })
        .collect();
    assert!(done, "no line of {} to change", file.display());
    lines.join("\n") + "\n"
}

#[test]
fn strict_validation_rejects_a_misspelled_field_and_a_mistyped_value() {
    let test = "strict_validation_rejects_a_misspelled_field_and_a_mistyped_value";
    let Some(checker) = checker(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();

    // A DaemonSet whose hostNetwork is misspelled: valid YAML, a field Kubernetes does not know
    // (the API server would drop it, and the pod would capture its own empty namespace).
    let misspelled = mutate(&dir().join("daemonset.yaml"), |l| {
        (l.trim() == "hostNetwork: true").then(|| l.replace("hostNetwork", "hostNetwrok"))
    });
    // Written to `name` in `tmp`, validated strictly: refused, saying `says`.
    let refused = |name: &str, manifest: String, says: &str| {
        let bad = tmp.path().join(name);
        std::fs::write(&bad, manifest).unwrap();
        let (out, passed) = validate_strict(&checker, std::slice::from_ref(&bad), None);
        let report = text(&out);
        assert!(!out.status.success(), "accepted {name}: {report}");
        assert_eq!(passed, 0, "{report}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(says),
            "{report}"
        );
        bad
    };
    let bad = refused(
        "daemonset-misspelled.yaml",
        misspelled,
        "'hostNetwrok' was unexpected",
    );
    // Strict mode is what catches it.
    let out = run({
        let mut cmd = Command::new(&checker);
        cmd.arg(&bad);
        cmd
    });
    assert!(
        out.status.success(),
        "without --strict, unknown fields pass: {}",
        text(&out)
    );

    // A ConfigMap value written as a number: Kubernetes takes only strings there.
    let unquoted = mutate(&dir().join("configmap.yaml"), |l| {
        let (key, value) = l.split_once(": ")?;
        let digits = value.strip_prefix('"')?.strip_suffix('"')?;
        let is_data_key = key.starts_with("  ")
            && key
                .trim()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_');
        (is_data_key && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| format!("{key}: {digits}"))
    });
    refused("configmap-number.yaml", unquoted, "is not of type 'string'");
}

/// The container's environment as this machine can check it: the spool directory, which the
/// kubelet mounts from the node, mapped to `spool`. (The interface stays as it is: `validate
/// --offline` checks its name and the capture settings, not that the node has it.)
fn env_here(m: &Manifests, spool: &Path) -> BTreeMap<String, String> {
    let mut env = m.env();
    let spool_dir = env
        .get("MIRROR_SPOOL_DIR")
        .expect("the ConfigMap sets MIRROR_SPOOL_DIR (the spool volume's mount)")
        .clone();
    let mounts = m.container()["volumeMounts"]
        .as_array()
        .expect("volumeMounts");
    assert!(
        mounts.iter().any(|v| v["mountPath"] == spool_dir.as_str()),
        "MIRROR_SPOOL_DIR {spool_dir} is not a volume mount (the root filesystem is read-only)"
    );
    env.insert(
        "MIRROR_SPOOL_DIR".into(),
        spool.to_str().unwrap().to_owned(),
    );
    env
}

/// `mirror-receiver validate --offline` with `env` and nothing else but `PATH`.
fn validate_offline(env: &BTreeMap<String, String>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .args(["validate", "--offline"]);
    run(cmd)
}

#[test]
fn daemonset_environment_passes_validate_offline() {
    let test = "daemonset_environment_passes_validate_offline";
    let Some(m) = Manifests::load(test) else {
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let env = env_here(&m, spool.path());
    for var in CAPTURE_ENV
        .iter()
        .chain(&["AKTO_KAFKA_BROKER_MAL", "MIRROR_ADMIN_LISTEN"])
    {
        assert!(env.contains_key(*var), "the ConfigMap does not set {var}");
    }
    let out = validate_offline(&env);
    let report = text(&out);
    eprintln!("validate --offline with {env:#?}\n{report}");
    assert!(out.status.success(), "validate --offline: {report}");
    assert!(
        report.contains("configuration is valid"),
        "validate --offline: {report}"
    );

    // The variables reach the binary, the Akto names and the capture's: one bad value makes
    // the same run fail, naming it.
    for (var, value, named) in [
        ("TRAFFIC_MAX_ACTIVE_CONN", "lots", "TRAFFIC_MAX_ACTIVE_CONN"),
        ("MIRROR_CAPTURE_FILTER", "tcp port", "--capture-filter"),
        ("MIRROR_CAPTURE_BUFFER", "4096", "--capture-buffer"),
    ] {
        let mut broken = env.clone();
        broken.insert(var.into(), value.into());
        let out = validate_offline(&broken);
        assert!(
            !out.status.success(),
            "accepted {var}={value:?}: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{var}={value:?}: the error does not name {named}: {}",
            text(&out)
        );
    }
}

/// The variables `mirror-receiver validate` reads (its `--help`), and the Akto names README's
/// Configuration section lists as their aliases.
fn known_variables() -> Vec<String> {
    let out = run({
        let mut cmd = Command::new(BIN);
        cmd.env_clear().args(["validate", "--help"]);
        cmd
    });
    assert!(out.status.success(), "validate --help: {}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut known: Vec<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_owned())
        .collect();
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let config = readme
        .split("\n## Configuration")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Configuration section");
    known.extend(
        config
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| {
                (w.starts_with("AKTO_") || w.starts_with("TRAFFIC_"))
                    && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            })
            .map(str::to_owned),
    );
    known
}

#[test]
fn every_variable_is_one_the_receiver_reads_and_is_documented() {
    let test = "every_variable_is_one_the_receiver_reads_and_is_documented";
    let Some(m) = Manifests::load(test) else {
        return;
    };
    let known = known_variables();
    let guide = std::fs::read_to_string(dir().join("README.md")).unwrap();
    for var in m.env().keys() {
        assert!(
            known.contains(var),
            "{var} is not a variable mirror-receiver reads (validate --help, README aliases)"
        );
        assert!(
            guide.contains(&format!("`{var}`")),
            "{var} is not explained in deploy/kubernetes/README.md"
        );
    }
}

/// A Kubernetes quantity of bytes ("640Mi", "1G", "1048576").
fn bytes(q: &str) -> u64 {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a whole quantity") * factor;
        }
    }
    q.parse().expect("a quantity of bytes")
}

fn number(env: &BTreeMap<String, String>, var: &str) -> u64 {
    env.get(var)
        .unwrap_or_else(|| panic!("the ConfigMap does not set {var}"))
        .parse()
        .unwrap_or_else(|e| panic!("{var}: {e}"))
}

#[test]
fn daemonset_captures_the_node_with_only_net_raw() {
    let test = "daemonset_captures_the_node_with_only_net_raw";
    let Some(m) = Manifests::load(test) else {
        return;
    };
    let ds = m.daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let c = m.container();
    let env = m.env();

    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(
        c["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(c["args"].as_array().into_iter().flatten())
            .collect::<Vec<_>>(),
        ["mirror-receiver", "capture"],
        "the container runs `mirror-receiver capture`"
    );

    // No API access: no token, no RBAC.
    let sa = m.one("ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(sa["automountServiceAccountToken"], false);
    for d in &m.docs {
        let kind = d["kind"].as_str().unwrap();
        assert!(!kind.contains("Role"), "{kind}: the receiver calls no API");
    }

    // Only CAP_NET_RAW (AF_PACKET), as root without escalation, read-only root filesystem.
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["add"], serde_json::json!(["NET_RAW"]));
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_ne!(sc["privileged"], true);
    assert_ne!(pod["hostPID"], true);
    let seccomp = sc["seccompProfile"]["type"]
        .as_str()
        .or(pod["securityContext"]["seccompProfile"]["type"].as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"));

    // Probes on the port MIRROR_ADMIN_LISTEN opens (on the node: not the busy 8080).
    let admin: std::net::SocketAddr = env["MIRROR_ADMIN_LISTEN"]
        .parse()
        .expect("MIRROR_ADMIN_LISTEN");
    assert_ne!(admin.port(), 8080, "8080 clashes on the host network");
    assert!(
        admin.ip().is_unspecified(),
        "the kubelet probes the node's address: MIRROR_ADMIN_LISTEN must listen on it"
    );
    let port_of = |probe: &Value| -> u64 {
        let port = &probe["httpGet"]["port"];
        port.as_u64().unwrap_or_else(|| {
            let name = port.as_str().expect("a probe port");
            c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port named {name}"))
        })
    };
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(port_of(&c["readinessProbe"]), u64::from(admin.port()));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(port_of(&c["livenessProbe"]), u64::from(admin.port()));
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    if let Some(port) = annotations["prometheus.io/port"].as_str() {
        assert_eq!(port, admin.port().to_string(), "prometheus.io/port");
    }

    // A memory limit that covers what the receiver bounds itself to.
    let limits = &c["resources"]["limits"];
    let requests = &c["resources"]["requests"];
    assert!(
        limits["cpu"].is_string() && requests["cpu"].is_string(),
        "cpu request and limit"
    );
    let limit = bytes(limits["memory"].as_str().expect("a memory limit"));
    assert!(bytes(requests["memory"].as_str().expect("a memory request")) <= limit);
    let mb = |var: &str| env.get(var).map(|v| v.parse::<u64>().expect(var) << 20);
    let budget = env
        .get("MIRROR_MEMORY_BUDGET")
        .map(|v| v.parse::<u64>().expect("MIRROR_MEMORY_BUDGET"))
        .or_else(|| mb("TRAFFIC_BUFFER_THRESHOLD"))
        .or_else(|| mb("AKTO_MEM_THRESH_RESTART"))
        .unwrap_or(1 << 30);
    let workers = number(&env, "MIRROR_WORKERS");
    assert!(
        workers >= 1,
        "MIRROR_WORKERS 0 means one per core of the node"
    );
    let rings = workers * number(&env, "MIRROR_CAPTURE_BUFFER");
    let queue = env
        .get("MIRROR_KAFKA_OPTIONS")
        .into_iter()
        .flat_map(|o| o.split(';'))
        .find_map(|o| o.trim().strip_prefix("queue.buffering.max.kbytes="))
        .map_or(RDKAFKA_QUEUE_DEFAULT, |kb| kb.parse::<u64>().unwrap() << 10);
    let bound = budget + rings + queue + PROCESS_OVERHEAD;
    assert!(
        limit >= bound,
        "memory limit {limit} < budget {budget} + rings {rings} + Kafka queue {queue} + {PROCESS_OVERHEAD}"
    );

    // Time to flush and spool after SIGTERM.
    let shutdown: f64 = env
        .get("MIRROR_SHUTDOWN_TIMEOUT")
        .map_or(6.0, |v| v.parse().expect("MIRROR_SHUTDOWN_TIMEOUT"));
    let grace = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("a grace period");
    assert!(
        grace > shutdown + 3.0,
        "grace {grace} s <= {shutdown} s + 3 s of spooling"
    );

    // Every node; one pod per node at a time (the spool and the admin port are the node's).
    let tolerations = pod["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations.iter().any(|t| t["operator"] == "Exists"
            && t.get("key").is_none()
            && t.get("effect").is_none()),
        "no toleration of every taint: {tolerations:?}"
    );
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    assert!(!strategy["rollingUpdate"]["maxUnavailable"].is_null());
    assert!(matches!(
        &strategy["rollingUpdate"]["maxSurge"],
        Value::Number(n) if n.as_u64() == Some(0)
    ));

    // The spool on a writable volume of the node.
    let spool_dir = &env["MIRROR_SPOOL_DIR"];
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["mountPath"] == spool_dir.as_str())
        .expect("a volume mounted at MIRROR_SPOOL_DIR");
    assert_ne!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .expect("the spool volume");
    assert!(
        volume["hostPath"].is_object() || volume["emptyDir"].is_object(),
        "spool volume: {volume}"
    );

    // Secret for Kafka credentials, optional, after the ConfigMap (so it wins).
    let from = c["envFrom"].as_array().expect("envFrom");
    assert!(from.first().is_some_and(|f| f["configMapRef"].is_object()));
    assert!(
        from.last()
            .is_some_and(|f| f["secretRef"]["optional"] == true)
    );
}

/// `mirror-receiver capture` started with the privileges the DaemonSet gives its container: uid 0,
/// the bounding (so permitted and effective) set reduced to the capabilities it adds,
/// no_new_privs (allowPrivilegeEscalation: false), nothing inheritable. `caps` is setpriv's
/// `--bounding-set` list.
fn capture_as_container(
    env: &BTreeMap<String, String>,
    caps: &str,
    stderr: &Path,
) -> std::process::Child {
    Command::new("setpriv")
        .args([
            "--bounding-set",
            caps,
            "--inh-caps",
            "-all",
            "--no-new-privs",
        ])
        .arg(BIN)
        .arg("capture")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("starting setpriv")
}

/// The status code of `GET path` at `addr`, or `None` while nothing answers.
fn try_get(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn capture_runs_with_only_the_daemonsets_capabilities() {
    let test = "capture_runs_with_only_the_daemonsets_capabilities";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || on_path("setpriv").is_none() {
        skip(
            Need::E2e,
            test,
            "needs root and setpriv (util-linux) to start the capture with the container's capabilities",
        );
        return;
    }
    let Some(m) = Manifests::load(test) else {
        return;
    };
    let added: Vec<String> = m.container()["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| format!("+{}", c.as_str().unwrap().to_ascii_lowercase()))
        .collect();
    let caps = format!("-all,{}", added.join(","));

    // The ConfigMap's settings, on this machine: loopback instead of the node's interface, a
    // JSON-lines file instead of Kafka, the admin endpoint on a free loopback port.
    let tmp = tempfile::tempdir().unwrap();
    let mut env = env_here(&m, &tmp.path().join("spool"));
    env.retain(|k, _| !k.starts_with("AKTO_KAFKA_BROKER") && k != "MIRROR_KAFKA_BROKERS");
    let records = tmp.path().join("records.jsonl");
    let admin = format!("127.0.0.1:{}", common::free_tcp_port());
    env.insert("MIRROR_CAPTURE_INTERFACE".into(), "lo".into());
    env.insert("MIRROR_OUTPUT".into(), records.to_str().unwrap().into());
    env.insert("MIRROR_ADMIN_LISTEN".into(), admin.clone());

    let stderr = tmp.path().join("stderr");
    let mut child = capture_as_container(&env, &caps, &stderr);
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while try_get(&admin, "/readyz") != Some(200) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("capture exited ({status}) with {caps}:\n{}", log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    if added == ["+net_raw"] {
        assert_eq!(eff, 1 << CAP_NET_RAW, "CapEff {eff:#x}: only CAP_NET_RAW");
    }

    // One HTTP exchange over loopback, which the capture must report.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let serving = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = server.accept().unwrap();
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "request cut short");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .unwrap();
    });
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET /k8s-capture-probe HTTP/1.1\r\nHost: probe.test\r\n\r\n")
            .unwrap();
        let mut resp = Vec::new();
        c.read_to_end(&mut resp).unwrap();
        assert!(resp.ends_with(b"ok"));
    }
    serving.join().unwrap();
    let read = || std::fs::read_to_string(&records).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !read().contains("/k8s-capture-probe") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    common::signal(&child, libc::SIGTERM);
    let exit = common::wait_until(&mut child, Duration::from_secs(15)).expect("exit after SIGTERM");
    assert!(exit.success(), "capture exit {exit}:\n{}", log());
    let line = read()
        .lines()
        .find(|l| l.contains("/k8s-capture-probe"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no record of the exchange:\n{}\n{}", read(), log()));
    let record = common::parse_record(&line);
    assert_eq!(record["statusCode"], "200", "{line}");
    assert_eq!(
        record["akto_vxlan_id"],
        env["MIRROR_VNI"].as_str(),
        "{line}"
    );

    // Without the capabilities it adds, the same start fails and says what is missing.
    let mut child = capture_as_container(&env, "-all", &stderr);
    let exit = common::wait_until(&mut child, Duration::from_secs(15)).expect("exit");
    assert!(!exit.success(), "captured without {caps}:\n{}", log());
    assert!(log().contains("CAP_NET_RAW"), "{}", log());
}
