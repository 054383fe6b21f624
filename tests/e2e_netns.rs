//! End to end, with real peers and the kernel's own VXLAN, as AWS VPC Traffic Mirroring delivers
//! traffic.
//!
//! Three network namespaces: an app client and an app server joined by a veth pair (the app link),
//! and a receiver joined to the server by a second veth pair (the underlay, MTU 9000). In the
//! server namespace a kernel VXLAN device (VNI 4242) points at the receiver, and tc mirrors every
//! frame of the app link, both directions, into it. nginx listens on the app link in front of a
//! python JSON upstream on loopback (tests/e2e/upstream.py); curl and ab in the client namespace
//! drive keep-alive, every method with JSON bodies, a chunked upload, `Expect: 100-continue`,
//! gzip, HEAD, 204, 304, 404 and HTTP/1.0. The daemon runs in the receiver namespace; after
//! SIGTERM its records must match nginx's access log one for one, with the right bodies.
//!
//! Needs root, `ip`, `tc`, `ethtool`, nginx, curl, ab and python3 (Debian: iproute2 ethtool
//! nginx-light curl apache2-utils python3); without them it says why and passes.
//! MIRROR_E2E_REQUIRE=1 turns a missing prerequisite into a failure. tcpdump, when present,
//! records the underlay, kept with the other artifacts when the test fails (or always, with
//! MIRROR_E2E_KEEP=1).

mod common;

use common::{Finished, run, run_ok, signal, wait_until};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VNI: u32 = 4242;
const CLIENT_IP: &str = "10.201.0.1";
const SERVER_IP: &str = "10.201.0.2";
const UNDERLAY_SERVER_IP: &str = "10.202.0.1";
const UNDERLAY_RECEIVER_IP: &str = "10.202.0.2";
const UNDERLAY_RECEIVER_MAC: &str = "02:e2:e2:00:02:02";
const UNDERLAY_SERVER_MAC: &str = "02:e2:e2:00:02:01";
const HTTP_PORT: u16 = 8080;
const UPSTREAM: &str = "127.0.0.1:9000";
const AB_REQUESTS: usize = 200;

const UPSTREAM_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/upstream.py");
const NGINX_CONF: &str = include_str!("e2e/nginx.conf.in");

/// Absolute paths of the programs the test runs.
struct Tools {
    ip: PathBuf,
    tc: PathBuf,
    ethtool: PathBuf,
    nginx: PathBuf,
    curl: PathBuf,
    ab: PathBuf,
    python3: PathBuf,
    tcpdump: Option<PathBuf>,
}

fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The tools, or why the test cannot run here.
fn prerequisites() -> Result<Tools, Vec<String>> {
    let mut why = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        why.push(
            "not running as root: network namespaces, veth, VXLAN and tc need CAP_NET_ADMIN"
                .to_owned(),
        );
    }
    let mut find = |tool: &str, package: &str| {
        which(tool).unwrap_or_else(|| {
            why.push(format!("`{tool}` not found (Debian package {package})"));
            PathBuf::new()
        })
    };
    let tools = Tools {
        ip: find("ip", "iproute2"),
        tc: find("tc", "iproute2"),
        ethtool: find("ethtool", "ethtool"),
        nginx: find("nginx", "nginx-light"),
        curl: find("curl", "curl"),
        ab: find("ab", "apache2-utils"),
        python3: find("python3", "python3"),
        tcpdump: which("tcpdump"),
    };
    if why.is_empty() { Ok(tools) } else { Err(why) }
}

/// Runs `cmd`, which must succeed within 10 s; returns its stdout.
fn check(cmd: &mut Command) -> String {
    run_ok(cmd, Duration::from_secs(10)).stdout
}

/// Namespaces and processes of the test, all removed when it ends, passing or not: processes are
/// killed first, then the namespaces (and with them their interfaces) deleted.
struct Lab {
    ip: PathBuf,
    pid: u32,
    namespaces: Vec<String>,
    children: Vec<(&'static str, Child)>,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("mre2e-{role}-{}", self.pid)
    }

    fn add_ns(&mut self, role: &str) -> String {
        let name = self.ns(role);
        // A namespace of a killed earlier run with this pid: take it over.
        let _ = Command::new(&self.ip)
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        check(Command::new(&self.ip).args(["netns", "add", &name]));
        self.namespaces.push(name.clone());
        name
    }

    /// `ip netns exec <ns> <program>`: ip execs the program, so the child's pid is the program's.
    fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Runs `ip` with the words of `line`.
    fn ip(&self, line: &str) {
        check(Command::new(&self.ip).args(line.split_whitespace()));
    }

    fn child(&mut self, name: &'static str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no child {name}"))
            .1
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new(&self.ip)
                .args(["netns", "delete", ns])
                .status();
        }
    }
}

/// Sends `sig` to a child and waits up to `timeout` for it to exit (killing it past that).
fn stop(child: &mut Child, sig: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
    signal(child, sig);
    wait_until(child, timeout)
}

/// Reads a child's stream line by line into `log` (and `file`), telling `ready` when a line
/// contains `marker`.
fn watch_lines(
    stream: impl Read + Send + 'static,
    marker: &'static str,
    log: Arc<Mutex<Vec<String>>>,
) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let hit = line.contains(marker);
            log.lock().unwrap().push(line);
            if hit {
                let _ = tx.send(());
            }
        }
    });
    rx
}

fn wait_ready(rx: &mpsc::Receiver<()>, what: &str, log: &Mutex<Vec<String>>) {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(()) => {}
        Err(e) => panic!(
            "{what} did not become ready ({e}); its output:\n{}",
            log.lock().unwrap().join("\n")
        ),
    }
}

/// Builds the network: client <-app link-> server <-underlay-> receiver, with the app link
/// mirrored into VXLAN on the server side. Returns (client ns, server ns, receiver ns,
/// receiver's underlay interface).
fn build_network(lab: &mut Lab, tools: &Tools) -> (String, String, String, String) {
    let pid = lab.pid;
    let (c, s, r) = (
        lab.add_ns("client"),
        lab.add_ns("server"),
        lab.add_ns("recv"),
    );
    let (app_c, app_s) = (format!("appc{pid}"), format!("apps{pid}"));
    let (und_s, und_r) = (format!("unds{pid}"), format!("undr{pid}"));
    let ip = |line: String| lab.ip(&line);
    let tc = |line: String| {
        let ok = run(
            Command::new(&tools.tc).args(line.split_whitespace()),
            Duration::from_secs(10),
        );
        ok.status.success()
    };
    let ethtool = |ns: &str, line: String| {
        check(lab.exec(ns, &tools.ethtool).args(line.split_whitespace()));
    };
    for ns in [&c, &s, &r] {
        ip(format!("-n {ns} link set lo up"));
    }
    // The app link.
    ip(format!(
        "-n {c} link add {app_c} type veth peer name {app_s} netns {s}"
    ));
    ip(format!("-n {c} addr add {CLIENT_IP}/24 dev {app_c}"));
    ip(format!("-n {s} addr add {SERVER_IP}/24 dev {app_s}"));
    // Wire-sized frames: no segmentation or coalescing offloads, checksums computed in software.
    ethtool(&c, format!("-K {app_c} tso off gso off gro off tx off"));
    ethtool(&s, format!("-K {app_s} tso off gso off gro off tx off"));
    ip(format!("-n {c} link set {app_c} up"));
    ip(format!("-n {s} link set {app_s} up"));
    // The underlay, with jumbo frames so that encapsulated frames are never fragmented.
    ip(format!(
        "-n {s} link add {und_s} mtu 9000 address {UNDERLAY_SERVER_MAC} type veth \
         peer name {und_r} mtu 9000 address {UNDERLAY_RECEIVER_MAC} netns {r}"
    ));
    ip(format!(
        "-n {s} addr add {UNDERLAY_SERVER_IP}/24 dev {und_s}"
    ));
    ip(format!(
        "-n {r} addr add {UNDERLAY_RECEIVER_IP}/24 dev {und_r}"
    ));
    // Mirrored frames leave the app link with their TCP checksums still to be filled in: the
    // underlay completes them in software, so the receiver gets them as a wire would carry them.
    ethtool(&s, format!("-K {und_s} tx off"));
    ip(format!("-n {s} link set {und_s} up"));
    ip(format!("-n {r} link set {und_r} up"));
    // No ARP round on the underlay: the first mirrored frames are not held or dropped for it.
    ip(format!(
        "-n {s} neigh replace {UNDERLAY_RECEIVER_IP} lladdr {UNDERLAY_RECEIVER_MAC} \
         dev {und_s} nud permanent"
    ));
    // The mirror target, as AWS encapsulates: VXLAN to the receiver on UDP 4789. Its MTU is the
    // largest the kernel allows over a 9000-byte underlay (less VXLAN's 50 bytes).
    ip(format!(
        "-n {s} link add vxm0 type vxlan id {VNI} remote {UNDERLAY_RECEIVER_IP} \
         local {UNDERLAY_SERVER_IP} dstport 4789 dev {und_s}"
    ));
    ip(format!("-n {s} link set vxm0 mtu 8950 up"));
    // Mirror the app link, both directions, from the server's side.
    assert!(
        tc(format!("-n {s} qdisc add dev {app_s} clsact")),
        "tc: no clsact qdisc"
    );
    for dir in ["ingress", "egress"] {
        let mirror = "action mirred egress mirror dev vxm0";
        // Kernels built without cls_matchall: a u32 filter matching every packet.
        assert!(
            tc(format!(
                "-n {s} filter add dev {app_s} {dir} matchall {mirror}"
            )) || tc(format!(
                "-n {s} filter add dev {app_s} {dir} protocol all u32 match u32 0 0 {mirror}"
            )),
            "tc: cannot add a mirroring filter on {dir} (needs cls_matchall or cls_u32, act_mirred)"
        );
    }
    (c, s, r, und_r)
}

/// Deterministic text of `len` bytes, not very compressible.
fn text(len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    let mut s = String::with_capacity(len + 80);
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{:016x} ", x));
        if s.len() % 81 > 64 {
            s.push('\n');
        }
    }
    s.truncate(len);
    s
}

/// A JSON document of roughly `items` entries, with non-ASCII text and every JSON type.
fn json_doc(kind: &str, items: usize) -> Value {
    let list: Vec<Value> = (0..items)
        .map(|i| {
            serde_json::json!({
                "id": i,
                "name": format!("item-{i} ünïcødé ✓ \"quoted\" \\ back"),
                "price": i as f64 * 1.25,
                "active": i % 2 == 0,
                "note": null,
            })
        })
        .collect();
    serde_json::json!({"kind": kind, "items": list, "nested": {"a": [1, 2, {"b": "c"}]}})
}

/// One request the test made with a JSON body, and what the record must carry.
struct JsonCase {
    method: &'static str,
    path: String,
    body: Value,
    /// The upstream echoes the body (POST/PUT/PATCH); DELETE answers 204 without one.
    echoed: bool,
}

fn url(path: &str) -> String {
    format!("http://{SERVER_IP}:{HTTP_PORT}{path}")
}

/// Fields of a record, which are all strings.
fn field<'a>(rec: &'a Value, name: &str) -> &'a str {
    rec.get(name).and_then(Value::as_str).unwrap_or("<missing>")
}

fn headers(rec: &Value, name: &str) -> BTreeMap<String, String> {
    serde_json::from_str::<BTreeMap<String, String>>(field(rec, name)).unwrap_or_default()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn mirrored_nginx_traffic_matches_access_log() {
    let tools = match prerequisites() {
        Ok(t) => t,
        Err(why) => {
            let why = why.join("; ");
            if std::env::var_os("MIRROR_E2E_REQUIRE").is_some_and(|v| v != "0") {
                panic!("e2e_netns: cannot run and MIRROR_E2E_REQUIRE is set: {why}");
            }
            println!("e2e_netns: SKIPPED (passes without running): {why}");
            return;
        }
    };
    let started = Instant::now();
    let start_secs = now_secs();
    let dir = tempfile::Builder::new()
        .prefix("mirror-e2e-")
        .tempdir()
        .expect("temporary directory");
    let d = dir.path().to_path_buf();
    let mut lab = Lab {
        ip: tools.ip.clone(),
        pid: std::process::id(),
        namespaces: Vec::new(),
        children: Vec::new(),
    };
    let (client_ns, server_ns, recv_ns, recv_dev) = build_network(&mut lab, &tools);
    println!(
        "e2e_netns: network ready in {:?} ({client_ns}, {server_ns}, {recv_ns}); artifacts in {}",
        started.elapsed(),
        d.display()
    );

    // Content nginx serves.
    let www = d.join("www/static");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    let index_html = "<!doctype html>\n<html><head><title>e2e</title></head>\n<body><p>mirrored</p></body></html>\n";
    let data_json = serde_json::to_string_pretty(&json_doc("static", 40)).unwrap();
    let big_txt = text(150_000, 7);
    let ab_txt = text(700, 11);
    for (name, content) in [
        ("index.html", index_html),
        ("data.json", &data_json),
        ("big.txt", &big_txt),
        ("ab.txt", &ab_txt),
    ] {
        std::fs::write(www.join(name), content).unwrap();
    }
    let conf = NGINX_CONF
        .replace("@DIR@", &d.to_string_lossy())
        .replace("@LISTEN@", &format!("{SERVER_IP}:{HTTP_PORT}"))
        .replace("@UPSTREAM@", UPSTREAM);
    std::fs::write(d.join("nginx.conf"), conf).unwrap();

    // The receiver, and optionally a capture of what it is sent.
    let records_path = d.join("records.jsonl");
    let pcap_path = d.join("underlay.pcap");
    if let Some(tcpdump) = &tools.tcpdump {
        let mut cmd = lab.exec(&recv_ns, tcpdump);
        cmd.args(["-i", &recv_dev, "-n", "-U", "-Z", "root", "-s", "0", "-w"])
            .arg(&pcap_path)
            .args(["udp", "port", "4789"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting tcpdump");
        let log = Arc::new(Mutex::new(Vec::new()));
        let ready = watch_lines(child.stderr.take().unwrap(), "listening on", log.clone());
        lab.children.push(("tcpdump", child));
        // Only a diagnostic: the test goes on without it.
        if ready.recv_timeout(Duration::from_secs(5)).is_err() {
            println!(
                "e2e_netns: tcpdump did not start, no capture: {}",
                log.lock().unwrap().join(" | ")
            );
        }
    }
    let daemon_log = Arc::new(Mutex::new(Vec::new()));
    {
        let mut cmd = lab.exec(&recv_ns, Path::new(env!("CARGO_BIN_EXE_mirror-receiver")));
        cmd.args([
            "--log-level",
            "info",
            "run",
            "--listen",
            "0.0.0.0:4789",
            "--workers",
            "1",
            "--output",
        ])
        .arg(&records_path)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("MIRROR_KAFKA_BROKERS")
        .env_remove("AKTO_KAFKA_BROKER_MAL")
        .env_remove("AKTO_KAFKA_BROKER_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting mirror-receiver");
        let ready = watch_lines(
            child.stderr.take().unwrap(),
            "receiving VXLAN",
            daemon_log.clone(),
        );
        lab.children.push(("daemon", child));
        wait_ready(&ready, "mirror-receiver", &daemon_log);
    }

    // The app server: the python upstream on loopback, nginx on the app link.
    {
        let mut cmd = lab.exec(&server_ns, &tools.python3);
        cmd.arg(UPSTREAM_PY)
            .arg(UPSTREAM)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(d.join("upstream.log")).unwrap());
        let mut child = cmd.spawn().expect("starting the python upstream");
        let log = Arc::new(Mutex::new(Vec::new()));
        let ready = watch_lines(child.stdout.take().unwrap(), "listening", log.clone());
        lab.children.push(("upstream", child));
        wait_ready(&ready, "the python upstream", &log);
    }
    {
        let mut cmd = lab.exec(&server_ns, &tools.nginx);
        cmd.arg("-p")
            .arg(&d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("nginx.out")).unwrap())
            .stderr(std::fs::File::create(d.join("nginx.err")).unwrap());
        let child = cmd.spawn().expect("starting nginx");
        lab.children.push(("nginx", child));
        // Probe from the server's own namespace: over loopback, so never mirrored, and logged
        // with the server's address, which the comparison leaves out.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = run(
                lab.exec(&server_ns, &tools.curl).args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                    &url("/nocontent?probe"),
                ]),
                Duration::from_secs(5),
            );
            if probe.stdout == "204" {
                break;
            }
            if let Some(s) = lab.child("nginx").try_wait().unwrap() {
                panic!(
                    "nginx exited ({s}): {}{}",
                    std::fs::read_to_string(d.join("nginx.err")).unwrap_or_default(),
                    std::fs::read_to_string(d.join("nginx-error.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!("e2e_netns: peers ready after {:?}", started.elapsed());

    // ---- Client traffic ----
    let curl = |args: &[&str]| -> Finished {
        let r = run(
            lab.exec(&client_ns, &tools.curl)
                .args(["-sS", "--max-time", "15"])
                .args(args),
            Duration::from_secs(20),
        );
        assert!(
            r.status.success(),
            "curl {args:?} failed ({}): {}",
            r.status,
            r.stderr
        );
        r
    };
    let w = "%{http_code} %{num_connects}\n";
    let mut json_cases = Vec::new();
    let mut expected_client_requests = 0usize;

    // Keep-alive: several URLs in one curl invocation share one connection.
    let ka = curl(&[
        "-w",
        w,
        "-o",
        "/dev/null",
        &url("/static/index.html?case=ka1"),
        "-o",
        "/dev/null",
        &url("/static/big.txt?case=ka2"),
        "-o",
        "/dev/null",
        &url("/api/items?case=ka3"),
        "-o",
        "/dev/null",
        &url("/static/data.json?case=ka4"),
    ]);
    assert_eq!(ka.stdout, "200 1\n200 0\n200 0\n200 0\n", "keep-alive GETs");
    expected_client_requests += 4;

    // POST, PUT, PATCH and DELETE with JSON bodies, again on one connection.
    let api: [(&str, &str, bool); 4] = [
        ("POST", "/api/items?case=post", true),
        ("PUT", "/api/items/7?case=put", true),
        ("PATCH", "/api/items/7?case=patch", true),
        ("DELETE", "/api/items/7?case=delete", false),
    ];
    let mut args: Vec<String> = Vec::new();
    for (i, (method, path, echoed)) in api.iter().enumerate() {
        let body = json_doc(&format!("{method}-body"), i + 1);
        if i > 0 {
            args.extend([
                "--next".into(),
                "-sS".into(),
                "--max-time".into(),
                "15".into(),
            ]);
        }
        args.extend([
            "-w".into(),
            w.into(),
            "-o".into(),
            "/dev/null".into(),
            "-X".into(),
            (*method).into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data-binary".into(),
            body.to_string(),
            url(path),
        ]);
        json_cases.push(JsonCase {
            method,
            path: (*path).into(),
            body,
            echoed: *echoed,
        });
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let methods = curl(&args);
    assert_eq!(
        methods.stdout, "200 1\n200 0\n200 0\n204 0\n",
        "API methods"
    );
    expected_client_requests += 4;

    // A chunked upload, uploaded from a file so that curl sends it in several chunks (one per
    // 64 KiB read); nginx de-chunks it for the upstream, which echoes it.
    let chunked_body = json_doc("chunked", 1500);
    let chunked_file = d.join("chunked.json");
    std::fs::write(&chunked_file, chunked_body.to_string()).unwrap();
    let out = d.join("chunked.out");
    let chunked = curl(&[
        "-v",
        "-o",
        out.to_str().unwrap(),
        "-X",
        "POST",
        "-T",
        chunked_file.to_str().unwrap(),
        "-H",
        "Content-Type: application/json",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect:",
        &url("/api/upload?case=chunked"),
    ]);
    assert!(
        chunked.stderr.contains("> Transfer-Encoding: chunked"),
        "curl did not send a chunked body:\n{}",
        chunked.stderr
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&std::fs::read(&out).unwrap()).unwrap(),
        chunked_body,
        "the upstream's echo of the chunked body"
    );
    json_cases.push(JsonCase {
        method: "POST",
        path: "/api/upload?case=chunked".into(),
        body: chunked_body,
        echoed: true,
    });
    expected_client_requests += 1;

    // Expect: 100-continue with a body over 1 KiB: an interim 100 before the final response.
    let expect_body = json_doc("expect", 20);
    assert!(expect_body.to_string().len() > 1024);
    let expect = curl(&[
        "-v",
        "-o",
        "/dev/null",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &expect_body.to_string(),
        &url("/api/items?case=expect"),
    ]);
    assert!(
        expect.stderr.contains("< HTTP/1.1 100 Continue"),
        "nginx sent no 100 Continue:\n{}",
        expect.stderr
    );
    json_cases.push(JsonCase {
        method: "POST",
        path: "/api/items?case=expect".into(),
        body: expect_body,
        echoed: true,
    });
    expected_client_requests += 1;

    // gzip.
    let out = d.join("gzip.out");
    let gz = curl(&[
        "-v",
        "--compressed",
        "-o",
        out.to_str().unwrap(),
        &url("/static/data.json?case=gzip"),
    ]);
    assert!(
        gz.stderr
            .to_ascii_lowercase()
            .contains("< content-encoding: gzip"),
        "nginx did not gzip:\n{}",
        gz.stderr
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), data_json);
    expected_client_requests += 1;

    // HEAD, 204, 404, HTTP/1.0.
    let head = curl(&["-I", &url("/static/index.html?case=head")]);
    assert!(
        head.stdout.starts_with("HTTP/1.1 200"),
        "HEAD: {}",
        head.stdout
    );
    for (path, code, extra) in [
        ("/nocontent?case=204", "204", None),
        ("/static/missing.html?case=404", "404", None),
        ("/static/index.html?case=http10", "200", Some("--http1.0")),
    ] {
        let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a.extend(extra);
        let u = url(path);
        a.push(&u);
        assert_eq!(curl(&a).stdout, code, "{path}");
    }
    expected_client_requests += 4;

    // 304, by If-None-Match with the ETag of a first GET and by If-Modified-Since (the file's
    // own modification time, which nginx compares exactly).
    let etag_get = curl(&[
        "-o",
        "/dev/null",
        "-D",
        "-",
        &url("/static/index.html?case=etag"),
    ]);
    let etag = etag_get
        .stdout
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("etag"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no ETag in\n{}", etag_get.stdout));
    let inm = format!("If-None-Match: {etag}");
    let r = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &inm,
        &url("/static/index.html?case=inm"),
    ]);
    assert_eq!(r.stdout, "304", "If-None-Match");
    let r = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-z",
        www.join("index.html").to_str().unwrap(),
        &url("/static/index.html?case=ims"),
    ]);
    assert_eq!(r.stdout, "304", "If-Modified-Since");
    expected_client_requests += 3;

    // ab: HTTP/1.0 keep-alive, 4 connections.
    let n = AB_REQUESTS.to_string();
    let ab = run(
        lab.exec(&client_ns, &tools.ab).args([
            "-k",
            "-n",
            &n,
            "-c",
            "4",
            "-s",
            "10",
            &url("/static/ab.txt?case=ab"),
        ]),
        Duration::from_secs(30),
    );
    let ab_line = |key: &str| {
        ab.stdout
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("?")
            .to_owned()
    };
    assert!(
        ab.status.success()
            && ab_line("Complete requests:") == n
            && ab_line("Failed requests:") == "0"
            && !ab.stdout.contains("Non-2xx"),
        "ab:\n{}{}",
        ab.stdout,
        ab.stderr
    );
    expected_client_requests += AB_REQUESTS;
    println!(
        "e2e_netns: client traffic done after {:?}",
        started.elapsed()
    );

    // Let the last mirrored frames reach the receiver and nginx write its last log lines.
    std::thread::sleep(Duration::from_millis(1000));

    // ---- Stop the receiver ----
    let status = stop(lab.child("daemon"), libc::SIGTERM, Duration::from_secs(10));
    let daemon_stderr = daemon_log.lock().unwrap().join("\n");
    std::fs::write(d.join("daemon.log"), &daemon_stderr).unwrap();
    if tools.tcpdump.is_some() {
        stop(lab.child("tcpdump"), libc::SIGTERM, Duration::from_secs(5));
    }
    let end_secs = now_secs();
    if let Some(line) = daemon_stderr.lines().find(|l| l.contains("stopped")) {
        println!("e2e_netns: daemon: {line}");
    }

    // ---- Compare ----
    let mut failures: Vec<String> = Vec::new();
    match status {
        Some(s) if s.success() => {}
        Some(s) => failures.push(format!("the daemon exited with {s} after SIGTERM")),
        None => failures.push("the daemon did not exit within 10 s of SIGTERM".into()),
    }

    let access = std::fs::read_to_string(d.join("access.log")).unwrap_or_default();
    let mut logged: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut logged_client = 0usize;
    for line in access.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert!(f.len() >= 4, "access log line {line:?}");
        if f[0] != CLIENT_IP {
            continue;
        }
        logged_client += 1;
        *logged
            .entry((f[1].to_owned(), f[2].to_owned(), f[3].to_owned()))
            .or_default() += 1;
    }
    assert_eq!(
        logged_client, expected_client_requests,
        "nginx logged a different number of client requests than the test made:\n{access}"
    );

    let records_text = std::fs::read_to_string(&records_path).unwrap_or_default();
    let mut records: Vec<Value> = Vec::new();
    for (i, line) in records_text.lines().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => records.push(v),
            Err(e) => failures.push(format!(
                "record line {}: not JSON ({e}): {line:.200}",
                i + 1
            )),
        }
    }
    let mut recorded: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for r in &records {
        *recorded
            .entry((
                field(r, "method").to_owned(),
                field(r, "path").to_owned(),
                field(r, "statusCode").to_owned(),
            ))
            .or_default() += 1;
    }
    for (key, &n) in &logged {
        let got = recorded.get(key).copied().unwrap_or(0);
        if got != n {
            failures.push(format!(
                "{key:?}: nginx logged {n}, the receiver recorded {got}"
            ));
        }
    }
    for (key, &n) in &recorded {
        if !logged.contains_key(key) {
            failures.push(format!("{key:?}: recorded {n} times, never in nginx's log"));
        }
    }

    // Every record.
    for r in &records {
        let id = format!(
            "{} {} ->{}",
            field(r, "method"),
            field(r, "path"),
            field(r, "statusCode")
        );
        let fields = r.as_object().map(|o| o.len()).unwrap_or(0);
        if let Some((k, _)) = r
            .as_object()
            .into_iter()
            .flatten()
            .find(|(_, v)| !v.is_string())
        {
            failures.push(format!("{id}: field {k} is not a string"));
        }
        for (name, want) in [
            ("akto_vxlan_id", VNI.to_string()),
            ("ip", CLIENT_IP.to_owned()),
            ("destIp", SERVER_IP.to_owned()),
            ("source", "MIRRORING".to_owned()),
            ("is_pending", "false".to_owned()),
            ("akto_account_id", "1000000".to_owned()),
        ] {
            if field(r, name) != want {
                failures.push(format!(
                    "{id}: {name} is {:?}, not {want:?}",
                    field(r, name)
                ));
            }
        }
        for name in ["requestHeaders", "responseHeaders"] {
            if serde_json::from_str::<serde_json::Map<String, Value>>(field(r, name)).is_err() {
                failures.push(format!(
                    "{id}: {name} is not a JSON object: {:.200}",
                    field(r, name)
                ));
            }
        }
        if fields < 16 {
            failures.push(format!("{id}: only {fields} fields"));
        }
        let time: u64 = field(r, "time").parse().unwrap_or(0);
        if time + 2 < start_secs || time > end_secs + 2 {
            failures.push(format!(
                "{id}: time {time} outside the run [{start_secs}, {end_secs}]"
            ));
        }
        let status: u16 = field(r, "statusCode").parse().unwrap_or(0);
        let want_type =
            if field(r, "path").ends_with("case=http10") || field(r, "path").ends_with("case=ab") {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
        if field(r, "type") != want_type {
            failures.push(format!(
                "{id}: type {:?}, not {want_type:?}",
                field(r, "type")
            ));
        }
        // Bodies against the messages' own Content-Length, where it gives the body's length.
        let req_h = headers(r, "requestHeaders");
        let resp_h = headers(r, "responseHeaders");
        if let Some(cl) = req_h.get("content-length")
            && cl.parse::<usize>().ok() != Some(field(r, "requestPayload").len())
        {
            failures.push(format!(
                "{id}: requestPayload has {} bytes, Content-Length says {cl}",
                field(r, "requestPayload").len()
            ));
        }
        let bodiless = field(r, "method") == "HEAD" || status == 204 || status == 304;
        if bodiless && !field(r, "responsePayload").is_empty() {
            failures.push(format!(
                "{id}: responsePayload should be empty: {:.200}",
                field(r, "responsePayload")
            ));
        }
        if !bodiless
            && !resp_h.contains_key("content-encoding")
            && let Some(cl) = resp_h.get("content-length")
            && cl.parse::<usize>().ok() != Some(field(r, "responsePayload").len())
        {
            failures.push(format!(
                "{id}: responsePayload has {} bytes, Content-Length says {cl}",
                field(r, "responsePayload").len()
            ));
        }
    }

    let find = |method: &str, path: &str| -> Option<&Value> {
        records
            .iter()
            .find(|r| field(r, "method") == method && field(r, "path") == path)
    };
    // The JSON bodies curl sent, in the request and in the upstream's echo.
    for case in &json_cases {
        let Some(r) = find(case.method, &case.path) else {
            failures.push(format!("no record of {} {}", case.method, case.path));
            continue;
        };
        let req = serde_json::from_str::<Value>(field(r, "requestPayload"));
        if req.as_ref().ok() != Some(&case.body) {
            failures.push(format!(
                "{} {}: requestPayload is not the JSON sent ({:?}): {:.300}",
                case.method,
                case.path,
                req.err(),
                field(r, "requestPayload")
            ));
        }
        if case.echoed {
            let resp = serde_json::from_str::<Value>(field(r, "responsePayload"));
            if resp.as_ref().ok() != Some(&case.body) {
                failures.push(format!(
                    "{} {}: responsePayload is not the echoed JSON ({:?}): {:.300}",
                    case.method,
                    case.path,
                    resp.err(),
                    field(r, "responsePayload")
                ));
            }
        } else if field(r, "statusCode") != "204" || !field(r, "responsePayload").is_empty() {
            failures.push(format!(
                "{} {}: expected an empty 204",
                case.method, case.path
            ));
        }
    }
    if let Some(r) = find("POST", "/api/upload?case=chunked")
        && !headers(r, "requestHeaders")
            .get("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
    {
        failures.push("the chunked upload's record has no transfer-encoding: chunked".into());
    }

    // Bodies of the GETs.
    let mut expect_body = |path: &str, want: &str, encoding: Option<&str>| {
        let Some(r) = find("GET", path) else {
            failures.push(format!("no record of GET {path}"));
            return;
        };
        let got = field(r, "responsePayload");
        if got != want {
            failures.push(format!(
                "GET {path}: responsePayload ({} bytes) is not the content served ({} bytes): {:.200}",
                got.len(),
                want.len(),
                got
            ));
        }
        let enc = headers(r, "responseHeaders")
            .get("content-encoding")
            .cloned();
        if enc.as_deref() != encoding {
            failures.push(format!(
                "GET {path}: content-encoding {enc:?}, expected {encoding:?}"
            ));
        }
    };
    expect_body("/static/index.html?case=ka1", index_html, None);
    expect_body("/static/big.txt?case=ka2", &big_txt, None);
    expect_body("/static/data.json?case=ka4", &data_json, None);
    expect_body("/static/data.json?case=gzip", &data_json, Some("gzip"));
    expect_body("/static/index.html?case=http10", index_html, None);
    if let Some(r) = find("GET", "/api/items?case=ka3") {
        let doc = serde_json::from_str::<Value>(field(r, "responsePayload")).ok();
        if doc
            .as_ref()
            .and_then(|d| d.get("path"))
            .and_then(Value::as_str)
            != Some("/api/items?case=ka3")
        {
            failures.push(format!(
                "GET /api/items?case=ka3: unexpected upstream answer {:.200}",
                field(r, "responsePayload")
            ));
        }
    }
    // ab's requests, all of them, with the file's content.
    let ab_records: Vec<&Value> = records
        .iter()
        .filter(|r| field(r, "path") == "/static/ab.txt?case=ab")
        .collect();
    if ab_records.len() != AB_REQUESTS {
        failures.push(format!(
            "{} records of ab's {AB_REQUESTS} requests",
            ab_records.len()
        ));
    }
    let ab_bad = ab_records
        .iter()
        .filter(|r| {
            field(r, "method") != "GET"
                || field(r, "statusCode") != "200"
                || field(r, "responsePayload") != ab_txt
        })
        .count();
    if ab_bad > 0 {
        failures.push(format!(
            "{ab_bad} of ab's records differ from GET 200 with the file"
        ));
    }

    println!(
        "e2e_netns: {} records, {} client requests in nginx's log, finished in {:?}",
        records.len(),
        logged_client,
        started.elapsed()
    );
    if failures.is_empty() && std::env::var_os("MIRROR_E2E_KEEP").is_none() {
        return;
    }
    drop(lab);
    let kept = dir.keep();
    if failures.is_empty() {
        println!("e2e_netns: artifacts kept in {}", kept.display());
    } else {
        const SHOWN: usize = 40;
        let mut shown: Vec<String> = failures.iter().take(SHOWN).cloned().collect();
        if failures.len() > SHOWN {
            shown.push(format!("... and {} more", failures.len() - SHOWN));
        }
        panic!(
            "{} problem(s):\n  {}\nartifacts (records.jsonl, access.log, daemon.log, underlay.pcap) kept in {}\ndaemon log:\n{}",
            failures.len(),
            shown.join("\n  "),
            kept.display(),
            daemon_stderr
        );
    }
}
