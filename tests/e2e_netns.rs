//! End to end, with real peers and the kernel's own VXLAN, as AWS VPC Traffic Mirroring delivers
//! traffic.
//!
//! Three network namespaces: an app client and an app server joined by a veth pair (the app link),
//! and a receiver joined to the server by a second veth pair (the underlay). In the server
//! namespace a kernel VXLAN device (VNI 4242) points at the receiver, and tc mirrors every frame
//! of the app link, both directions, into it. nginx listens on the app link in front of a python
//! JSON upstream on loopback (tests/e2e/upstream.py); curl, ab and h2load in the client namespace
//! are the clients. The daemon runs in the receiver namespace; after SIGTERM its records are compared
//! with nginx's access log.
//!
//! - `mirrored_nginx_traffic_matches_access_log`: a 1500-byte app link; keep-alive, every method
//!   with JSON bodies, a chunked upload, `Expect: 100-continue`, gzip, HEAD, 204, 304, 404 and
//!   HTTP/1.0: the records match nginx's access log one for one, with the right bodies.
//! - `jumbo_frames_cut_at_8500_still_pair`: EC2's jumbo frames (app link MTU 9001) with bodies of
//!   10 KB to 1 MB (static files plain and gzip'ed, hence chunked; POSTs with Content-Length and
//!   chunked). Run A: whole frames through the kernel VXLAN, every exchange reported once and
//!   whole. Run B: the app link's capture wrapped with every frame cut to 8500 bytes (AWS's
//!   largest mirror packet length) by `../shared/corpus/vxlanize.py` and replayed: every
//!   exchange still reported once, each payload that lost bytes flagged `…:missing=N` with N
//!   what the capture shows was cut, and holding what was seen before the first gap.
//! - `load_through_kernel_vxlan_pairs_every_exchange`: h2load (HTTP/1.1 keep-alive, 32
//!   connections paced to 25,600 exchanges/s; 15,000 must be reached) for some seconds against a daemon with two receive sockets (the kernel VXLAN's outer source ports
//!   differ per direction, so a connection's two directions land on different sockets): every
//!   exchange paired, no unmatched response, no kernel drop.
//!
//! The tests take turns (they share the machine's two cores and the load test measures a rate).
//! Needs root, `ip`, `tc`, `ethtool`, nginx, curl, ab, h2load and python3 (Debian: iproute2
//! ethtool nginx-light curl apache2-utils nghttp2-client python3), and for the jumbo test tcpdump; without them each
//! says why and passes. MIRROR_E2E_REQUIRE=1 turns a missing prerequisite (also the corpus the
//! jumbo test's run B needs) into a failure. tcpdump records the underlay, kept with the other
//! artifacts when a test fails (or always, with MIRROR_E2E_KEEP=1).

#[path = "e2e/capture.rs"]
mod capture;
mod common;

use common::{Finished, Need, run, run_ok, signal, wait_until};
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
/// nginx's HTTP/2 (h2c, prior knowledge) listener.
const H2_PORT: u16 = 8082;
const UPSTREAM: &str = "127.0.0.1:9000";
/// The daemon's admin endpoint, on the receiver namespace's own loopback.
const ADMIN: &str = "127.0.0.1:18080";
const AB_REQUESTS: usize = 200;
/// Bytes VXLAN adds to an inner frame: outer Ethernet, IPv4, UDP and the VXLAN header.
const VXLAN_OVERHEAD: usize = 14 + 20 + 8 + 8;

const UPSTREAM_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/upstream.py");
const NGINX_CONF: &str = include_str!("e2e/nginx.conf.in");

/// The tests one at a time: they share two cores, and the load test measures a rate.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Absolute paths of the programs the test runs.
struct Tools {
    ip: PathBuf,
    tc: PathBuf,
    ethtool: PathBuf,
    nginx: PathBuf,
    curl: PathBuf,
    ab: PathBuf,
    h2load: PathBuf,
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

/// The tools, or why the test cannot run here; `need_tcpdump` makes tcpdump one of them.
fn prerequisites(need_tcpdump: bool) -> Result<Tools, Vec<String>> {
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
    let mut tools = Tools {
        ip: find("ip", "iproute2"),
        tc: find("tc", "iproute2"),
        ethtool: find("ethtool", "ethtool"),
        nginx: find("nginx", "nginx-light"),
        curl: find("curl", "curl"),
        ab: find("ab", "apache2-utils"),
        h2load: find("h2load", "nghttp2-client"),
        python3: find("python3", "python3"),
        tcpdump: None,
    };
    tools.tcpdump = if need_tcpdump {
        Some(find("tcpdump", "tcpdump"))
    } else {
        which("tcpdump")
    };
    if why.is_empty() { Ok(tools) } else { Err(why) }
}

/// The tools, or None after saying why the test `name` passes without running (a failure under
/// MIRROR_E2E_REQUIRE=1).
fn tools_or_skip(name: &str, need_tcpdump: bool) -> Option<Tools> {
    match prerequisites(need_tcpdump) {
        Ok(t) => Some(t),
        Err(why) => {
            common::skip(Need::E2e, name, &why.join("; "));
            None
        }
    }
}

/// Runs `cmd`, which must succeed within 10 s; returns its stdout.
fn check(cmd: &mut Command) -> String {
    run_ok(cmd, Duration::from_secs(10)).stdout
}

/// Namespaces and processes of the test, all removed when it ends, passing or not: processes are
/// killed first, then the namespaces (and with them their interfaces) deleted.
struct Lab {
    ip: PathBuf,
    /// `<pid><letter of the test>`: in the names of namespaces and interfaces (at most 15 bytes).
    tag: String,
    namespaces: Vec<String>,
    children: Vec<(&'static str, Child)>,
}

impl Lab {
    fn new(tools: &Tools, test_letter: char) -> Lab {
        Lab {
            ip: tools.ip.clone(),
            tag: format!("{}{test_letter}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
        }
    }

    fn ns(&self, role: &str) -> String {
        format!("mre2e-{role}-{}", self.tag)
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

    /// The child last started under `name`.
    fn child(&mut self, name: &'static str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .rev()
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

/// Reads a child's stream line by line into `log`, telling `ready` when a line contains
/// `marker`.
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

/// MTUs of the lab's links.
#[derive(Clone, Copy)]
struct Mtus {
    /// The app link (both veth ends).
    app: u32,
    /// The underlay (both veth ends).
    underlay: u32,
    /// The VXLAN device: at most the underlay's less VXLAN's 50 bytes, and at least the app
    /// link's, or the kernel refuses to encapsulate the largest mirrored frames.
    vxlan: u32,
}

/// A 1500-byte app link over a jumbo-frame underlay: encapsulated frames are never fragmented.
const STANDARD_MTUS: Mtus = Mtus {
    app: 1500,
    underlay: 9000,
    vxlan: 8950,
};

/// EC2's jumbo frames on the app link (9001, frames up to 9015 bytes with their Ethernet header),
/// over an underlay that carries them whole once encapsulated (9015 + 50 bytes).
const JUMBO_MTUS: Mtus = Mtus {
    app: 9001,
    underlay: 9200,
    vxlan: 9150,
};

/// The lab's namespaces and the interfaces the tests capture on.
struct Net {
    client: String,
    server: String,
    recv: String,
    /// The receiver's end of the underlay.
    recv_dev: String,
    /// The server's end of the app link (where tc mirrors).
    server_dev: String,
}

/// Builds the network: client <-app link-> server <-underlay-> receiver, with the app link
/// mirrored into VXLAN on the server side.
fn build_network(lab: &mut Lab, tools: &Tools, mtus: &Mtus) -> Net {
    let tag = lab.tag.clone();
    let (c, s, r) = (
        lab.add_ns("client"),
        lab.add_ns("server"),
        lab.add_ns("recv"),
    );
    let (app_c, app_s) = (format!("appc{tag}"), format!("apps{tag}"));
    let (und_s, und_r) = (format!("unds{tag}"), format!("undr{tag}"));
    let Mtus {
        app,
        underlay,
        vxlan,
    } = *mtus;
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
        "-n {c} link add {app_c} mtu {app} type veth peer name {app_s} mtu {app} netns {s}"
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
        "-n {s} link add {und_s} mtu {underlay} address {UNDERLAY_SERVER_MAC} type veth \
         peer name {und_r} mtu {underlay} address {UNDERLAY_RECEIVER_MAC} netns {r}"
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
    // The mirror target, as AWS encapsulates: VXLAN to the receiver on UDP 4789.
    ip(format!(
        "-n {s} link add vxm0 type vxlan id {VNI} remote {UNDERLAY_RECEIVER_IP} \
         local {UNDERLAY_SERVER_IP} dstport 4789 dev {und_s}"
    ));
    ip(format!("-n {s} link set vxm0 mtu {vxlan} up"));
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
    Net {
        client: c,
        server: s,
        recv: r,
        recv_dev: und_r,
        server_dev: app_s,
    }
}

/// Writes nginx's configuration for the test's directory `d` (content under `d/www`).
fn write_nginx_conf(d: &Path) {
    let conf = NGINX_CONF
        .replace("@DIR@", &d.to_string_lossy())
        .replace("@LISTEN@", &format!("{SERVER_IP}:{HTTP_PORT}"))
        .replace("@LISTEN_H2@", &format!("{SERVER_IP}:{H2_PORT}"))
        .replace("@UPSTREAM@", UPSTREAM);
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
}

/// Starts tcpdump in namespace `ns` on interface `dev` (`args` before `-w`, `filter` after),
/// writing `path`, as child `name`; returns its stderr lines, or None (said why) when it did not
/// start.
fn start_tcpdump(
    lab: &mut Lab,
    tools: &Tools,
    name: &'static str,
    (ns, dev): (&str, &str),
    args: &[&str],
    path: &Path,
    filter: &[&str],
) -> Option<Arc<Mutex<Vec<String>>>> {
    let tcpdump = tools.tcpdump.as_ref()?;
    let mut cmd = lab.exec(ns, tcpdump);
    cmd.args(["-i", dev, "-n", "-U", "-Z", "root"])
        .args(args)
        .arg("-w")
        .arg(path)
        .args(filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting tcpdump");
    let log = Arc::new(Mutex::new(Vec::new()));
    let ready = watch_lines(child.stderr.take().unwrap(), "listening on", log.clone());
    lab.children.push((name, child));
    if ready.recv_timeout(Duration::from_secs(5)).is_err() {
        println!(
            "e2e_netns: {name} did not start, no capture: {}",
            log.lock().unwrap().join(" | ")
        );
        return None;
    }
    Some(log)
}

/// Stops a tcpdump started by [`start_tcpdump`] and returns the packets its kernel side dropped
/// (None when it said nothing about it).
fn stop_tcpdump(
    lab: &mut Lab,
    name: &'static str,
    log: &Mutex<Vec<String>>,
    path: &Path,
) -> Option<u64> {
    // Let it write what it has taken: stop only once the file has not grown for 300 ms.
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut since) = (size(), Instant::now());
    while since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = size();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    if lab.child(name).try_wait().unwrap().is_none() {
        stop(lab.child(name), libc::SIGTERM, Duration::from_secs(5));
    }
    // Its statistics are its last lines; the reader thread takes them after the exit.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let dropped = log.lock().unwrap().iter().find_map(|l| {
            l.strip_suffix(" packets dropped by kernel")
                .and_then(|n| n.trim().parse().ok())
        });
        if dropped.is_some() || Instant::now() > deadline {
            return dropped;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `mirror-receiver run` in `ns` (UDP 4789, admin on [`ADMIN`], records to `records`,
/// `extra` flags) and waits until it receives; returns its stderr lines.
fn start_daemon(
    lab: &mut Lab,
    ns: &str,
    records: &Path,
    extra: &[&str],
) -> Arc<Mutex<Vec<String>>> {
    let mut args = vec!["run", "--listen", "0.0.0.0:4789"];
    args.extend_from_slice(extra);
    start_receiver(lab, ns, records, &args, "receiving VXLAN")
}

/// Starts `mirror-receiver <args>` in `ns` (admin on [`ADMIN`], records to `records`) and waits
/// for a log line containing `ready`; returns its stderr lines.
fn start_receiver(
    lab: &mut Lab,
    ns: &str,
    records: &Path,
    args: &[&str],
    ready: &'static str,
) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut cmd = lab.exec(ns, Path::new(env!("CARGO_BIN_EXE_mirror-receiver")));
    cmd.args(["--log-level", "info"])
        .args(args)
        .args(["--admin-listen", ADMIN])
        .arg("--output")
        .arg(records)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("MIRROR_KAFKA_BROKERS")
        .env_remove("AKTO_KAFKA_BROKER_MAL")
        .env_remove("AKTO_KAFKA_BROKER_URL")
        .env_remove("MIRROR_ADMIN_LISTEN")
        .env_remove("MIRROR_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting mirror-receiver");
    let seen = watch_lines(child.stderr.take().unwrap(), ready, log.clone());
    lab.children.push(("daemon", child));
    wait_ready(&seen, "mirror-receiver", &log);
    log
}

/// SIGTERM to the daemon; its exit (None: not within 10 s) and its stderr, also written to
/// `log_file`.
fn stop_daemon(
    lab: &mut Lab,
    log: &Mutex<Vec<String>>,
    log_file: &Path,
) -> (Option<ExitStatus>, String) {
    let status = stop(lab.child("daemon"), libc::SIGTERM, Duration::from_secs(10));
    // The reader thread takes the last lines after the exit.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !log.lock().unwrap().iter().any(|l| l.contains("stopped")) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = log.lock().unwrap().join("\n");
    std::fs::write(log_file, &text).unwrap();
    (status, text)
}

/// What the daemon's exit says about how it stopped, as a failure.
fn daemon_exit_failure(status: Option<ExitStatus>) -> Option<String> {
    match status {
        Some(s) if s.success() => None,
        Some(s) => Some(format!("the daemon exited with {s} after SIGTERM")),
        None => Some("the daemon did not exit within 10 s of SIGTERM".into()),
    }
}

/// GET `path` from the daemon's admin endpoint, from inside the receiver namespace.
fn admin_get(lab: &Lab, tools: &Tools, ns: &str, path: &str) -> String {
    let r = run(
        lab.exec(ns, &tools.curl)
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://{ADMIN}{path}")),
        Duration::from_secs(15),
    );
    assert!(r.status.success(), "GET {path}: {}", r.stderr);
    r.stdout
}

/// The `key=value` fields of the first line of `log` containing `marker` (a summary line).
fn summary_fields(log: &str, marker: &str) -> Option<BTreeMap<String, String>> {
    let line = log.lines().find(|l| l.contains(marker))?;
    Some(
        line.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

fn summary_u64(fields: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    fields.get(key).and_then(|v| v.parse().ok())
}

/// Starts the app server in `server_ns`: the python upstream on loopback and nginx on the app
/// link (configuration in `d`), and waits until nginx answers.
fn start_peers(lab: &mut Lab, tools: &Tools, server_ns: &str, d: &Path) {
    {
        let mut cmd = lab.exec(server_ns, &tools.python3);
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
    let mut cmd = lab.exec(server_ns, &tools.nginx);
    cmd.arg("-p")
        .arg(d)
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(d.join("nginx.out")).unwrap())
        .stderr(std::fs::File::create(d.join("nginx.err")).unwrap());
    let child = cmd.spawn().expect("starting nginx");
    lab.children.push(("nginx", child));
    // Probe from the server's own namespace: over loopback, so never mirrored, and logged with
    // the server's address, which the comparisons leave out.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = run(
            lab.exec(server_ns, &tools.curl).args([
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
            return;
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

/// curl in the client namespace (`-sS`, 60 s at most), which must succeed.
fn curl_in(lab: &Lab, tools: &Tools, ns: &str, args: &[&str]) -> Finished {
    let r = run(
        lab.exec(ns, &tools.curl)
            .args(["-sS", "--max-time", "60"])
            .args(args),
        Duration::from_secs(70),
    );
    assert!(
        r.status.success(),
        "curl {args:?} failed ({}): {}",
        r.status,
        r.stderr
    );
    r
}

/// One line of nginx's access log (tests/e2e/nginx.conf.in's `e2e` format).
struct LogLine {
    client: String,
    method: String,
    uri: String,
    status: String,
    /// `$msec`: when nginx finished the request, epoch seconds.
    msec: f64,
}

/// nginx's access log in `d`.
fn access_log(d: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(d.join("access.log")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert!(f.len() >= 9, "access log line {line:?}");
            LogLine {
                client: f[0].to_owned(),
                method: f[1].to_owned(),
                uri: f[2].to_owned(),
                status: f[3].to_owned(),
                msec: f[8].parse().unwrap_or(0.0),
            }
        })
        .collect()
}

/// (method, request target, status) of every client request in nginx's log, counted.
fn logged_exchanges(log: &[LogLine]) -> BTreeMap<(String, String, String), usize> {
    let mut logged = BTreeMap::new();
    for l in log.iter().filter(|l| l.client == CLIENT_IP) {
        *logged
            .entry((l.method.clone(), l.uri.clone(), l.status.clone()))
            .or_default() += 1;
    }
    logged
}

/// The JSON records of a JSON-lines file; a line that is not JSON is a failure.
fn read_records(path: &Path, failures: &mut Vec<String>) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => records.push(v),
            Err(e) => failures.push(format!(
                "{}: line {}: not JSON ({e}): {line:.200}",
                path.display(),
                i + 1
            )),
        }
    }
    records
}

/// Every logged exchange recorded exactly as often as nginx logged it, and nothing else.
fn compare_with_log(
    what: &str,
    logged: &BTreeMap<(String, String, String), usize>,
    records: &[Value],
    failures: &mut Vec<String>,
) {
    let mut recorded: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for r in records {
        *recorded
            .entry((
                field(r, "method").to_owned(),
                field(r, "path").to_owned(),
                field(r, "statusCode").to_owned(),
            ))
            .or_default() += 1;
    }
    for (key, &n) in logged {
        let got = recorded.get(key).copied().unwrap_or(0);
        if got != n {
            failures.push(format!(
                "{what}: {key:?}: nginx logged {n}, the receiver recorded {got}"
            ));
        }
    }
    for (key, &n) in &recorded {
        if !logged.contains_key(key) {
            failures.push(format!(
                "{what}: {key:?}: recorded {n} times, never in nginx's log"
            ));
        }
    }
}

/// Ends a test: passes when there are no failures (keeping the artifacts with MIRROR_E2E_KEEP),
/// else keeps them and panics with the failures and `log`.
fn finish(name: &str, failures: &[String], lab: Lab, dir: tempfile::TempDir, log: &str) {
    if failures.is_empty() && std::env::var_os("MIRROR_E2E_KEEP").is_none() {
        return;
    }
    drop(lab);
    let kept = dir.keep();
    if failures.is_empty() {
        println!("{name}: artifacts kept in {}", kept.display());
        return;
    }
    const SHOWN: usize = 60;
    let mut shown: Vec<String> = failures.iter().take(SHOWN).cloned().collect();
    if failures.len() > SHOWN {
        shown.push(format!("... and {} more", failures.len() - SHOWN));
    }
    // The log's summary lines are long; its tail is what tells.
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    panic!(
        "{name}: {} problem(s):\n  {}\nartifacts kept in {}\nlog (last lines):\n{}",
        failures.len(),
        shown.join("\n  "),
        kept.display(),
        tail.join("\n")
    );
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
    let _serial = serial();
    let Some(tools) = tools_or_skip("mirrored_nginx_traffic_matches_access_log", false) else {
        return;
    };
    let started = Instant::now();
    let start_secs = now_secs();
    let dir = tempfile::Builder::new()
        .prefix("mirror-e2e-")
        .tempdir()
        .expect("temporary directory");
    let d = dir.path().to_path_buf();
    let mut lab = Lab::new(&tools, 'a');
    let net = build_network(&mut lab, &tools, &STANDARD_MTUS);
    let (client_ns, server_ns, recv_ns) =
        (net.client.clone(), net.server.clone(), net.recv.clone());
    println!(
        "e2e_netns: network ready in {:?} ({client_ns}, {server_ns}, {recv_ns}); artifacts in {}",
        started.elapsed(),
        d.display()
    );

    // Content nginx serves.
    let www = d.join("www/static");
    std::fs::create_dir_all(&www).unwrap();
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
    write_nginx_conf(&d);

    // The receiver, and optionally a capture of what it is sent (only a diagnostic: the test
    // goes on without it).
    let records_path = d.join("records.jsonl");
    let underlay_dump = start_tcpdump(
        &mut lab,
        &tools,
        "tcpdump",
        (&recv_ns, &net.recv_dev),
        &["-s", "0"],
        &d.join("underlay.pcap"),
        &["udp", "port", "4789"],
    );
    let daemon_log = start_daemon(&mut lab, &recv_ns, &records_path, &["--workers", "1"]);
    start_peers(&mut lab, &tools, &server_ns, &d);
    println!("e2e_netns: peers ready after {:?}", started.elapsed());

    // ---- Client traffic ----
    let curl = |args: &[&str]| curl_in(&lab, &tools, &client_ns, args);
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
    let (status, daemon_stderr) = stop_daemon(&mut lab, &daemon_log, &d.join("daemon.log"));
    if let Some(log) = &underlay_dump {
        stop_tcpdump(&mut lab, "tcpdump", log, &d.join("underlay.pcap"));
    }
    let end_secs = now_secs();
    if let Some(line) = daemon_stderr.lines().find(|l| l.contains("stopped")) {
        println!("e2e_netns: daemon: {line}");
    }

    // ---- Compare ----
    let mut failures: Vec<String> = daemon_exit_failure(status).into_iter().collect();
    let log = access_log(&d);
    let logged_client = log.iter().filter(|l| l.client == CLIENT_IP).count();
    assert_eq!(
        logged_client,
        expected_client_requests,
        "nginx logged a different number of client requests than the test made:\n{}",
        std::fs::read_to_string(d.join("access.log")).unwrap_or_default()
    );
    let records = read_records(&records_path, &mut failures);
    compare_with_log("records", &logged_exchanges(&log), &records, &mut failures);

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
    finish(
        "mirrored_nginx_traffic_matches_access_log",
        &failures,
        lab,
        dir,
        &daemon_stderr,
    );
}

// ---------------------------------------------------------------------------------------------
// Jumbo frames, whole and cut at AWS's 8500-byte packet length

/// AWS's largest mirror packet length: every mirrored frame past it arrives cut to it.
const JUMBO_CUT: usize = 8500;
/// A record payload this large may be cut at the size caps (`--max-record-bytes` 1,000,000 by
/// default shares its room between the two payloads); smaller ones never are.
const CAP_HINT: usize = 400_000;
/// Body sizes of the jumbo test, 10 KB to 1 MB.
const JUMBO_SIZES: [(&str, usize); 4] = [
    ("10k", 10_240),
    ("64k", 65_536),
    ("200k", 204_800),
    ("1m", 1_000_000),
];

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// `len` bytes of random base64-alphabet text (6 bits of entropy a byte: gzip saves little),
/// with a newline every 76 characters when `lines`.
fn noise(len: usize, seed: u64, lines: bool) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut s = Vec::with_capacity(len);
    while s.len() < len {
        if lines && s.len() % 77 == 76 {
            s.push(b'\n');
        } else {
            s.push(ALPHABET[(xorshift(&mut x) >> 58) as usize]);
        }
    }
    String::from_utf8(s).unwrap()
}

/// `len` bytes of very compressible text: numbered lines of a few repeating phrases.
fn prose(len: usize, seed: u64) -> String {
    const PHRASES: [&str; 4] = [
        "the mirrored packet crosses the load balancer and reaches the receiver",
        "every request is paired with its response in the order the client sent them",
        "jumbo frames carry nine thousand bytes and the session cuts them at its length",
        "a record names what was lost so that nothing disappears without a word",
    ];
    let mut s = String::with_capacity(len + 100);
    let mut i = seed as usize;
    while s.len() < len {
        s.push_str(&format!("{:07} {}\n", i, PHRASES[i % 4]));
        i += 1;
    }
    s.truncate(len);
    s
}

/// A JSON document of exactly `len` bytes naming `case` (the upstream echoes only JSON).
fn json_of_len(case: &str, len: usize, seed: u64) -> String {
    let head = format!("{{\"case\":\"{case}\",\"fill\":\"");
    let tail = "\"}";
    let fill = len - head.len() - tail.len();
    format!("{head}{}{tail}", noise(fill, seed, false))
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| format!("gunzip: {e}"))?;
    Ok(out)
}

/// One entry of a record's `truncated` field: `:missing=N`, `:ended`, or neither (a size cap).
#[derive(Debug)]
struct CutEntry {
    missing: Option<u64>,
    ended: bool,
}

/// A record's `truncated` field by payload name (empty without the field).
fn truncated_entries(rec: &Value) -> Result<BTreeMap<String, CutEntry>, String> {
    let Some(t) = rec.get("truncated") else {
        return Ok(BTreeMap::new());
    };
    let t = t.as_str().ok_or("truncated is not a string")?;
    let mut out = BTreeMap::new();
    for e in t.split(',') {
        let mut parts = e.split(':');
        let name = parts.next().unwrap_or("");
        if name != "requestPayload" && name != "responsePayload" {
            return Err(format!("unknown entry {e:?} in truncated {t:?}"));
        }
        let mut entry = CutEntry {
            missing: None,
            ended: false,
        };
        for p in parts {
            if p == "ended" {
                entry.ended = true;
            } else if let Some(n) = p.strip_prefix("missing=") {
                entry.missing = Some(n.parse().map_err(|e| format!("{e:?} in {t:?}: {e}"))?);
            } else {
                return Err(format!("unknown qualifier {p:?} in truncated {t:?}"));
            }
        }
        if out.insert(name.to_owned(), entry).is_some() {
            return Err(format!("{name} twice in truncated {t:?}"));
        }
    }
    Ok(out)
}

/// What one run's records showed against the capture.
#[derive(Default)]
struct RunTally {
    reported: usize,
    /// Messages the cut took bytes from, and how many of them the records flagged with
    /// `:missing=N`.
    damaged: usize,
    flagged: usize,
}

/// Checks the records of one run against the exchanges of the capture, `conns` telling which
/// bytes the run's receiver saw: each exchange reported once with its status; each payload whole
/// (or cut at a size cap, then saying so) when nothing of it was lost, else flagged
/// `…:missing=N` and holding what came before the first gap.
fn check_run(
    run: &str,
    exchanges: &[capture::Exchange],
    conns: &[capture::Connection],
    records: &[Value],
    failures: &mut Vec<String>,
) -> RunTally {
    let mut tally = RunTally::default();
    let mut by_key: BTreeMap<(&str, &str), Vec<&Value>> = BTreeMap::new();
    for r in records {
        by_key
            .entry((field(r, "method"), field(r, "path")))
            .or_default()
            .push(r);
    }
    for ex in exchanges {
        let id = format!("{run}: {} {}", ex.method, ex.target);
        let found = by_key
            .get(&(ex.method.as_str(), ex.target.as_str()))
            .map_or(&[][..], Vec::as_slice);
        let [rec] = found else {
            failures.push(format!("{id}: {} records, expected 1", found.len()));
            continue;
        };
        tally.reported += 1;
        for (name, want) in [
            ("statusCode", ex.status.as_str()),
            ("is_pending", "false"),
            ("akto_vxlan_id", "4242"),
            ("ip", CLIENT_IP),
            ("destIp", SERVER_IP),
        ] {
            if field(rec, name) != want {
                failures.push(format!(
                    "{id}: {name} is {:?}, not {want:?}",
                    field(rec, name)
                ));
            }
        }
        let entries = match truncated_entries(rec) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{id}: {e}"));
                continue;
            }
        };
        let conn = &conns[ex.conn];
        let sides = [
            ("requestPayload", Some(&ex.request), &conn.requests),
            ("responsePayload", ex.response.as_ref(), &conn.responses),
        ];
        for (side, msg, stream) in sides {
            let Some(msg) = msg else {
                failures.push(format!("{id}: the capture holds no response"));
                continue;
            };
            let id = format!("{id}: {side}");
            let payload = field(rec, side).as_bytes();
            let gz = msg.encoding() == Some("gzip");
            let full = if gz {
                match gunzip(&msg.body(stream)) {
                    Ok(b) => b,
                    Err(e) => {
                        failures.push(format!("{id}: the captured body: {e}"));
                        continue;
                    }
                }
            } else {
                msg.body(stream)
            };
            // Content-Length and no content coding: the bytes lost are the body's bytes lost,
            // and the payload is exactly the body up to the first of them.
            let exact = !gz && !msg.chunked();
            let missing = msg.missing(stream);
            let entry = entries.get(side);
            if missing == 0 {
                match entry {
                    Some(e) if e.missing.is_some() || e.ended => failures.push(format!(
                        "{id}: flagged {e:?} (truncated {:?}) though no byte of it was lost",
                        field(rec, "truncated")
                    )),
                    Some(_) if full.len() < CAP_HINT => failures.push(format!(
                        "{id}: flagged as cut at a size cap (truncated {:?}) with {} bytes",
                        field(rec, "truncated"),
                        full.len()
                    )),
                    Some(_) if payload.is_empty() || !full.starts_with(payload) => {
                        failures.push(format!(
                            "{id}: cut at a size cap, {} bytes that are not a prefix of the {}-byte body",
                            payload.len(),
                            full.len()
                        ))
                    }
                    Some(_) => {}
                    None if payload != full.as_slice() => failures.push(format!(
                        "{id}: {} bytes, not the {}-byte body sent ({:.80})",
                        payload.len(),
                        full.len(),
                        field(rec, side)
                    )),
                    None => {}
                }
                continue;
            }
            tally.damaged += 1;
            let head_lost = stream.missing(msg.start..msg.body);
            if head_lost > 0 {
                failures.push(format!(
                    "{id}: the cut took {head_lost} bytes of its head (the test's traffic should not do that)"
                ));
            }
            match entry {
                None => failures.push(format!(
                    "{id}: {missing} bytes of it were cut off, but the record does not say so (truncated {:?})",
                    field(rec, "truncated")
                )),
                Some(CutEntry { missing: None, .. }) => failures.push(format!(
                    "{id}: {missing} bytes of it were cut off, but truncated is {:?} (no missing=N)",
                    field(rec, "truncated")
                )),
                Some(CutEntry {
                    missing: Some(n),
                    ended,
                }) => {
                    tally.flagged += 1;
                    if *n == 0 {
                        failures.push(format!("{id}: missing=0 ({missing} bytes were cut off)"));
                    }
                    if exact && *n != missing as u64 {
                        failures.push(format!(
                            "{id}: missing={n}, but the capture shows {missing} bytes of it cut off"
                        ));
                    }
                    if *ended {
                        failures.push(format!(
                            "{id}: also flagged :ended, though its connection carried all of it"
                        ));
                    }
                }
            }
            let seen = msg.body_seen(stream);
            if payload.is_empty() {
                failures.push(format!(
                    "{id}: empty, though {} bytes of its body came before the first gap",
                    seen.len()
                ));
            } else if !full.starts_with(payload) {
                failures.push(format!(
                    "{id}: {} bytes that are not a prefix of the {}-byte body{} ({:.80})",
                    payload.len(),
                    full.len(),
                    if gz { " (decoded)" } else { "" },
                    field(rec, side)
                ));
            } else if exact
                && payload != seen.as_slice()
                // Also cut at the record's size cap (the entry can say only one of the two).
                && !(seen.len() >= CAP_HINT && seen.starts_with(payload))
            {
                failures.push(format!(
                    "{id}: {} bytes, not the {} bytes before the first gap",
                    payload.len(),
                    seen.len()
                ));
            }
        }
    }
    tally
}

#[test]
fn jumbo_frames_cut_at_8500_still_pair() {
    const NAME: &str = "jumbo_frames_cut_at_8500_still_pair";
    let _serial = serial();
    let Some(tools) = tools_or_skip(NAME, true) else {
        return;
    };
    // Run B needs the corpus's vxlanize.py; without it, run A still runs.
    let corpus = common::corpus_dir(&["vxlanize.py", "pcapio.py"]);
    if let Err(why) = &corpus {
        common::skip(Need::E2e, &format!("{NAME}, run B"), why);
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("mirror-e2e-jumbo-")
        .tempdir()
        .expect("temporary directory");
    let d = dir.path().to_path_buf();
    let mut lab = Lab::new(&tools, 'j');
    let net = build_network(&mut lab, &tools, &JUMBO_MTUS);

    // Content: plain files of every size, random (gzip gains little) and prose (gzip gains
    // much); JSON bodies to POST, which the upstream echoes.
    let www = d.join("www/static");
    std::fs::create_dir_all(&www).unwrap();
    let mut files = Vec::new();
    for (i, (label, size)) in JUMBO_SIZES.into_iter().enumerate() {
        let seed = i as u64 + 1;
        for (kind, content) in [
            ("noise", noise(size, seed, true)),
            ("prose", prose(size, seed * 1000)),
        ] {
            let name = format!("{kind}-{label}.txt");
            std::fs::write(www.join(&name), content).unwrap();
            files.push(name);
        }
    }
    let mut bodies = BTreeMap::new();
    for (i, (label, size)) in JUMBO_SIZES.into_iter().enumerate() {
        for kind in ["post", "chunked"] {
            let case = format!("{kind}-{label}");
            let path = d.join(format!("{case}.json"));
            std::fs::write(&path, json_of_len(&case, size, 100 + i as u64)).unwrap();
            bodies.insert(case, path);
        }
    }
    write_nginx_conf(&d);

    // Captures: the app link on the server's side, whole frames (tcpdump's default snap length
    // would do too; 9100 says what is needed), for run B; the underlay's heads, to show that
    // mirred and VXLAN carried whole jumbo frames.
    let app_pcap = d.join("app.pcap");
    let underlay_pcap = d.join("underlay.pcap");
    let app_dump = start_tcpdump(
        &mut lab,
        &tools,
        "tcpdump-app",
        (&net.server, &net.server_dev),
        // Immediate mode: each packet leaves the kernel's ring as it arrives. Without it,
        // TPACKET_V3 hands a block over only when it fills or its timer retires it, and what a
        // block holds when tcpdump is stopped is lost without being counted as a drop (a CI
        // run lost the last 556 KB of a 1 MB response so). -B: a 64 MiB ring for the bursts.
        &["-s", "9100", "--immediate-mode", "-B", "65536"],
        &app_pcap,
        &["tcp", "port", &HTTP_PORT.to_string()],
    )
    .expect("tcpdump on the app link (run B replays its capture)");
    let underlay_dump = start_tcpdump(
        &mut lab,
        &tools,
        "tcpdump-underlay",
        (&net.recv, &net.recv_dev),
        &["-s", "128"],
        &underlay_pcap,
        &["udp", "port", "4789"],
    )
    .expect("tcpdump on the underlay");
    // One receive socket keeps the mirror's order, so run A pins what jumbo frames and cut
    // frames do; two directions arriving on different sockets is the load test's subject.
    let records_a = d.join("records-a.jsonl");
    let daemon_log = start_daemon(&mut lab, &net.recv, &records_a, &["--workers", "1"]);
    start_peers(&mut lab, &tools, &net.server, &d);
    println!(
        "{NAME}: network and peers ready after {:?}; artifacts in {}",
        started.elapsed(),
        d.display()
    );

    // ---- Client traffic ----
    let curl = |args: &[&str]| curl_in(&lab, &tools, &net.client, args);
    let w = "%{http_code} %{num_connects} [%header{content-encoding}]\n";
    let mut expected = 0usize;
    // Keep-alive GETs of every file, plain then gzip'ed (nginx then sends them chunked).
    for (case, extra, encoding) in [("get", None, ""), ("gzip", Some("--compressed"), "gzip")] {
        let mut args: Vec<String> = extra.into_iter().map(str::to_owned).collect();
        let mut want = String::new();
        for (i, name) in files.iter().enumerate() {
            args.extend([
                "-w".into(),
                w.into(),
                "-o".into(),
                "/dev/null".into(),
                url(&format!("/static/{name}?case={case}")),
            ]);
            want.push_str(&format!("200 {} [{encoding}]\n", u8::from(i == 0)));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl(&args).stdout, want, "keep-alive GETs ({case})");
        expected += files.len();
    }
    // Two GETs on connections of their own.
    for name in ["noise-64k.txt", "prose-200k.txt"] {
        let r = curl(&[
            "-w",
            w,
            "-o",
            "/dev/null",
            &url(&format!("/static/{name}?case=fresh")),
        ]);
        assert_eq!(r.stdout, "200 1 []\n", "GET {name}");
        expected += 1;
    }
    // POSTs with Content-Length on one connection, and chunked uploads on another; the
    // upstream echoes each body (with Content-Length). No `Expect: 100-continue`: the
    // exchange is one request and one response.
    for (kind, labels) in [
        ("post", &["10k", "64k", "200k", "1m"][..]),
        ("chunked", &["64k", "1m"][..]),
    ] {
        let mut args: Vec<String> = Vec::new();
        let mut want = String::new();
        for (i, label) in labels.iter().enumerate() {
            let case = format!("{kind}-{label}");
            if i > 0 {
                args.extend(["--next", "-sS", "--max-time", "60"].map(String::from));
            }
            args.extend(
                [
                    "-w",
                    w,
                    "-o",
                    "/dev/null",
                    "-H",
                    "Content-Type: application/json",
                    "-H",
                    "Expect:",
                ]
                .map(String::from),
            );
            let body = bodies[&case].to_string_lossy().into_owned();
            if kind == "post" {
                args.extend(["--data-binary".into(), format!("@{body}")]);
            } else {
                args.extend(
                    [
                        "-X",
                        "POST",
                        "-H",
                        "Transfer-Encoding: chunked",
                        "-T",
                        &body,
                    ]
                    .map(String::from),
                );
            }
            args.push(url(&format!("/api/echo?case={case}")));
            want.push_str(&format!("200 {} []\n", u8::from(i == 0)));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl(&args).stdout, want, "{kind} uploads");
        expected += labels.len();
    }
    println!("{NAME}: client traffic done after {:?}", started.elapsed());

    // Let the last mirrored frames reach the receiver and nginx write its last log lines.
    std::thread::sleep(Duration::from_millis(1000));
    let metrics_a = admin_get(&lab, &tools, &net.recv, "/metrics");
    std::fs::write(d.join("metrics-a.txt"), &metrics_a).unwrap();
    let (status, daemon_stderr) = stop_daemon(&mut lab, &daemon_log, &d.join("daemon.log"));
    let app_dropped = stop_tcpdump(&mut lab, "tcpdump-app", &app_dump, &app_pcap);
    let underlay_dropped =
        stop_tcpdump(&mut lab, "tcpdump-underlay", &underlay_dump, &underlay_pcap);

    // ---- Run A: whole frames through the kernel's VXLAN ----
    let mut failures: Vec<String> = daemon_exit_failure(status).into_iter().collect();
    let log = access_log(&d);
    let logged = logged_exchanges(&log);
    let logged_n: usize = logged.values().sum();
    assert_eq!(
        logged_n,
        expected,
        "nginx logged a different number of client requests than the test made:\n{}",
        std::fs::read_to_string(d.join("access.log")).unwrap_or_default()
    );
    if app_dropped != Some(0) || underlay_dropped != Some(0) {
        failures.push(format!(
            "tcpdump's kernel drops: app link {app_dropped:?}, underlay {underlay_dropped:?} (the captures are incomplete)"
        ));
    }
    let (link, app_frames) = capture::read_pcap(&app_pcap).unwrap();
    assert_eq!(link, 1, "the app link's capture is not Ethernet");
    let (_, underlay_frames) = capture::read_pcap(&underlay_pcap).unwrap();
    let max_app = app_frames.iter().map(|f| f.orig_len).max().unwrap_or(0);
    let max_underlay = underlay_frames
        .iter()
        .map(|f| f.orig_len)
        .max()
        .unwrap_or(0);
    let over_cut: Vec<&capture::Frame> = app_frames
        .iter()
        .filter(|f| f.orig_len > JUMBO_CUT)
        .collect();
    // Jumbo frames on the app link, and each carried whole: the largest datagram on the
    // underlay is the largest app frame plus VXLAN's 50 bytes (fragments would be smaller).
    if max_app <= JUMBO_CUT || max_app > JUMBO_MTUS.app as usize + 14 {
        failures.push(format!(
            "the app link's largest frame has {max_app} bytes: jumbo frames (9001-byte MTU) not in effect"
        ));
    }
    if max_underlay != max_app + VXLAN_OVERHEAD {
        failures.push(format!(
            "the underlay's largest frame has {max_underlay} bytes, not the app link's largest \
             ({max_app}) + {VXLAN_OVERHEAD}: mirred/VXLAN did not carry whole jumbo frames"
        ));
    }
    let whole = capture::connections(&app_frames, HTTP_PORT, None);
    for (i, c) in whole.iter().enumerate() {
        for (dir, s) in [("requests", &c.requests), ("responses", &c.responses)] {
            let lost = s.uncovered(0..s.data.len());
            if lost > 0 {
                failures.push(format!(
                    "the app link's capture lost {lost} bytes of the {dir} of connection {i} (client port {})",
                    c.client.1
                ));
            }
        }
    }
    let exchanges = capture::exchanges(&whole).unwrap_or_else(|e| {
        panic!(
            "the app link's capture does not parse as the test's HTTP (tcpdump's kernel drops: \
             {app_dropped:?}): {e}"
        )
    });
    if exchanges.len() != logged_n {
        failures.push(format!(
            "the app link's capture holds {} exchanges, nginx logged {logged_n}",
            exchanges.len()
        ));
    }
    let records = read_records(&records_a, &mut failures);
    compare_with_log("run A", &logged, &records, &mut failures);
    let tally_a = check_run("run A", &exchanges, &whole, &records, &mut failures);
    // Whole frames: nothing counted as cut, nothing dropped.
    let vni_metric = |name: &str| format!("{name}{{vni=\"{VNI}\"}}");
    for name in [
        "mirror_truncated_segments_total".to_owned(),
        "mirror_truncated_missing_bytes_total".to_owned(),
        vni_metric("mirror_vni_truncated_segments_total"),
        vni_metric("mirror_vni_truncated_missing_bytes_total"),
        "mirror_kernel_drops_total".to_owned(),
        "mirror_http_unmatched_responses_total".to_owned(),
    ] {
        let v = common::metric(&metrics_a, &name);
        if v != Some(0.0) {
            failures.push(format!("run A: {name} is {v:?}, not 0"));
        }
    }
    let truncated_a = common::metric(&metrics_a, "mirror_truncated_segments_total");
    println!(
        "{NAME}: run A: {} of {logged_n} logged exchanges reported ({} records), {} app frames \
         ({} over {JUMBO_CUT} bytes, largest {max_app}), largest underlay frame {max_underlay}, \
         mirror_truncated_segments_total {truncated_a:?}",
        tally_a.reported,
        records.len(),
        app_frames.len(),
        over_cut.len(),
    );
    if let Some(line) = daemon_stderr.lines().find(|l| l.contains("stopped")) {
        println!("{NAME}: run A daemon: {line}");
    }

    // ---- Run B: the same frames cut at 8500 bytes, replayed ----
    let mut replay_log = String::new();
    match &corpus {
        // Said by the skip above.
        Err(_) => {}
        Ok(corpus) => {
            let cut_pcap = d.join("app.vxlan-8500.pcap");
            run_ok(
                Command::new(&tools.python3)
                    .arg(corpus.join("vxlanize.py"))
                    .arg(&app_pcap)
                    .arg(&cut_pcap)
                    .args([
                        "--vni",
                        &VNI.to_string(),
                        "--truncate",
                        &JUMBO_CUT.to_string(),
                    ]),
                Duration::from_secs(120),
            );
            let records_b = d.join("records-b.jsonl");
            let replay = run(
                common::receiver()
                    .args(["--log-level", "info", "replay"])
                    .arg(&cut_pcap)
                    .arg("--output")
                    .arg(&records_b),
                Duration::from_secs(300),
            );
            replay_log = replay.stderr.clone();
            std::fs::write(d.join("replay.log"), &replay.stderr).unwrap();
            if !replay.status.success() {
                failures.push(format!("run B: replay exited with {}", replay.status));
            }
            let records = read_records(&records_b, &mut failures);
            compare_with_log("run B", &logged, &records, &mut failures);
            let cut = capture::connections(&app_frames, HTTP_PORT, Some(JUMBO_CUT));
            let tally_b = check_run("run B", &exchanges, &cut, &records, &mut failures);
            // What the replay counted against what the capture shows was cut.
            let (mut cut_segments, mut cut_bytes) = (0u64, 0u64);
            for f in &app_frames {
                if let Some(s) = capture::tcp_segment(f) {
                    let lost = s.payload.len() - s.kept(Some(JUMBO_CUT));
                    if f.orig_len > JUMBO_CUT && lost > 0 {
                        cut_segments += 1;
                        cut_bytes += lost as u64;
                    }
                }
            }
            let summary = summary_fields(&replay.stderr, "replay finished").unwrap_or_default();
            let got = |k: &str| summary_u64(&summary, k);
            if cut_segments == 0 || tally_b.damaged == 0 {
                failures.push("run B: no segment was cut: the test exercised nothing".into());
            }
            if got("truncated_segments") != Some(cut_segments) {
                failures.push(format!(
                    "run B: the replay's truncated_segments is {:?}, the capture has {cut_segments} segments over {JUMBO_CUT} bytes",
                    got("truncated_segments")
                ));
            }
            if summary.contains_key("truncated_bytes") && got("truncated_bytes") != Some(cut_bytes)
            {
                failures.push(format!(
                    "run B: the replay's truncated_bytes is {:?}, the cut took {cut_bytes} bytes",
                    got("truncated_bytes")
                ));
            }
            if summary.contains_key("damaged_gap")
                && got("damaged_gap") != Some(tally_b.damaged as u64)
            {
                failures.push(format!(
                    "run B: the replay's damaged_gap is {:?}, {} messages lost bytes to the cut",
                    got("damaged_gap"),
                    tally_b.damaged
                ));
            }
            for key in ["unmatched_responses", "dropped_gap", "unanswered"] {
                if got(key).is_some_and(|n| n > 0) {
                    failures.push(format!("run B: the replay's {key} is {:?}", got(key)));
                }
            }
            println!(
                "{NAME}: run B: {} of {logged_n} logged exchanges reported ({} records); {} messages \
                 lost bytes to the cut, {} flagged :missing=N; replay: truncated_segments {:?} \
                 (capture: {cut_segments}), truncated_bytes {:?} (capture: {cut_bytes}), \
                 damaged_gap {:?}, dropped_gap {:?}, pairs {:?}",
                tally_b.reported,
                records.len(),
                tally_b.damaged,
                tally_b.flagged,
                got("truncated_segments"),
                got("truncated_bytes"),
                got("damaged_gap"),
                got("dropped_gap"),
                got("pairs"),
            );

            // The same datagrams sent to a daemon (one socket, in order), for its metrics.
            let records_c = d.join("records-b-daemon.jsonl");
            let daemon_b = start_daemon(&mut lab, &net.recv, &records_c, &["--workers", "1"]);
            run_ok(
                lab.exec(&net.recv, Path::new(common::BIN))
                    .arg("send")
                    .arg(&cut_pcap)
                    .args(["--to", "127.0.0.1:4789", "--rate", "20000"]),
                Duration::from_secs(60),
            );
            // Shard counters reach /metrics about once a second: wait until the truncated
            // segments stand at what the capture holds (or 15 s pass; then the check below says
            // what they were).
            let waited = Instant::now();
            let mut metrics_b = admin_get(&lab, &tools, &net.recv, "/metrics");
            while waited.elapsed() < Duration::from_secs(15)
                && common::metric(&metrics_b, "mirror_truncated_segments_total")
                    != Some(cut_segments as f64)
            {
                std::thread::sleep(Duration::from_millis(250));
                metrics_b = admin_get(&lab, &tools, &net.recv, "/metrics");
            }
            std::fs::write(d.join("metrics-b.txt"), &metrics_b).unwrap();
            let (status, log_b) = stop_daemon(&mut lab, &daemon_b, &d.join("daemon-b.log"));
            replay_log.push_str("\ndaemon (run B):\n");
            replay_log.push_str(&log_b);
            failures.extend(daemon_exit_failure(status).map(|f| format!("run B: {f}")));
            let records = read_records(&records_c, &mut failures);
            compare_with_log("run B (daemon)", &logged, &records, &mut failures);
            let tally_c = check_run("run B (daemon)", &exchanges, &cut, &records, &mut failures);
            let m = |name: &str| common::metric(&metrics_b, name);
            for (name, want) in [
                ("mirror_truncated_segments_total".to_owned(), cut_segments),
                (
                    vni_metric("mirror_vni_truncated_segments_total"),
                    cut_segments,
                ),
                ("mirror_truncated_missing_bytes_total".to_owned(), cut_bytes),
                (
                    vni_metric("mirror_vni_truncated_missing_bytes_total"),
                    cut_bytes,
                ),
                (
                    vni_metric("mirror_vni_http_damaged_messages_total"),
                    tally_b.damaged as u64,
                ),
                ("mirror_kernel_drops_total".to_owned(), 0),
                ("mirror_http_unmatched_responses_total".to_owned(), 0),
            ] {
                if m(&name) != Some(want as f64) {
                    failures.push(format!(
                        "run B (daemon): {name} is {:?}, not {want}",
                        m(&name)
                    ));
                }
            }
            println!(
                "{NAME}: run B (daemon): {} of {logged_n} logged exchanges reported, {} flagged \
                 :missing=N; mirror_vni_truncated_segments_total {:?}, \
                 mirror_vni_truncated_missing_bytes_total {:?}, \
                 mirror_vni_http_damaged_messages_total {:?}",
                tally_c.reported,
                tally_c.flagged,
                m(&vni_metric("mirror_vni_truncated_segments_total")),
                m(&vni_metric("mirror_vni_truncated_missing_bytes_total")),
                m(&vni_metric("mirror_vni_http_damaged_messages_total")),
            );
        }
    }
    println!("{NAME}: finished in {:?}", started.elapsed());
    let log = format!("daemon (run A):\n{daemon_stderr}\nreplay (run B):\n{replay_log}");
    finish(NAME, &failures, lab, dir, &log);
}

// ---------------------------------------------------------------------------------------------
// Load through the kernel's VXLAN

/// Exchanges the load makes: about 6 s at its rate.
const LOAD_REQUESTS: usize = 150_000;
/// Keep-alive connections, each held to `LOAD_RPS_PER_CONNECTION` by h2load.
const LOAD_CONNECTIONS: usize = 32;
/// 32 x 800 = 25,600 exchanges a second (each connection has 1.25 ms an exchange): above the
/// rate the test must reach, and within what a debug-build daemon on two cores takes. Unpaced
/// (ab -k), the load runs at 50-77k a second on this kind of machine, and what it then measures
/// is how far a debug build falls behind (its sockets' queues overflow, counted as kernel drops;
/// the two directions of a connection, on different sockets, drained out of step), not whether
/// it pairs.
const LOAD_RPS_PER_CONNECTION: usize = 800;
/// The rate the test must reach, exchanges per second: the proof that the load is real. The
/// paced h2load shares the two cores with nginx, tcpdump and the debug-build daemon, and has
/// reached 19,778/s in one CI-like run (the receiver paired every exchange), so the floor is
/// below what it reaches, not at what it is asked.
const LOAD_MIN_RATE: f64 = 15_000.0;

/// CPU seconds (user + system, all threads) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / hz
}

/// The Udp counters of /proc/net/snmp in namespace `ns` (InDatagrams, RcvbufErrors, ...).
fn udp_snmp(lab: &Lab, ns: &str) -> BTreeMap<String, u64> {
    let cat = which("cat").expect("cat");
    let text = check(lab.exec(ns, &cat).arg("/proc/net/snmp"));
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return BTreeMap::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

/// Per inner connection (its client port), the outer UDP source ports of each direction in a
/// capture of the underlay.
fn outer_ports(frames: &[capture::Frame]) -> BTreeMap<u16, [std::collections::BTreeSet<u16>; 2]> {
    let mut out: BTreeMap<u16, [std::collections::BTreeSet<u16>; 2]> = BTreeMap::new();
    for f in frames {
        let d = &f.data;
        if d.len() < VXLAN_OVERHEAD || d[12..14] != [0x08, 0x00] || d[23] != 17 {
            continue;
        }
        let sport = u16::from_be_bytes([d[34], d[35]]);
        let inner = capture::Frame {
            orig_len: f.orig_len.saturating_sub(VXLAN_OVERHEAD),
            data: d[VXLAN_OVERHEAD..].to_vec(),
        };
        let Some(s) = capture::tcp_segment(&inner) else {
            continue;
        };
        if s.dst.1 == HTTP_PORT {
            out.entry(s.src.1).or_default()[0].insert(sport);
        } else if s.src.1 == HTTP_PORT {
            out.entry(s.dst.1).or_default()[1].insert(sport);
        }
    }
    out
}

#[test]
fn load_through_kernel_vxlan_pairs_every_exchange() {
    load_through_kernel_vxlan("load_through_kernel_vxlan_pairs_every_exchange", 2);
}

#[test]
fn load_through_kernel_vxlan_pairs_every_exchange_with_four_workers() {
    load_through_kernel_vxlan(
        "load_through_kernel_vxlan_pairs_every_exchange_with_four_workers",
        4,
    );
}

/// h2load through the kernel's VXLAN (whose outer source ports differ per direction) to a
/// daemon with `workers` workers: every exchange pairs, none is lost, and the kernel's steering
/// program put every datagram on its owner's socket (nothing handed off).
fn load_through_kernel_vxlan(name: &'static str, workers: usize) {
    let _serial = serial();
    let Some(tools) = tools_or_skip(name, false) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("mirror-e2e-load-")
        .tempdir()
        .expect("temporary directory");
    let d = dir.path().to_path_buf();
    let mut lab = Lab::new(&tools, 'l');
    let net = build_network(&mut lab, &tools, &STANDARD_MTUS);
    let www = d.join("www/static");
    std::fs::create_dir_all(&www).unwrap();
    let load_txt = text(100, 5);
    std::fs::write(www.join("load.txt"), &load_txt).unwrap();
    write_nginx_conf(&d);

    // The first 20,000 datagrams' heads, to see the outer source ports of each direction.
    let underlay_pcap = d.join("underlay-head.pcap");
    let underlay_dump = start_tcpdump(
        &mut lab,
        &tools,
        "tcpdump",
        (&net.recv, &net.recv_dev),
        &["-s", "160", "-c", "20000"],
        &underlay_pcap,
        &["udp", "port", "4789"],
    );
    let records_path = d.join("records.jsonl");
    // Before the daemon binds: every datagram after this is delivered to its sockets or counted
    // by the kernel.
    let snmp_before = udp_snmp(&lab, &net.recv);
    let workers_arg = workers.to_string();
    let daemon_log = start_daemon(
        &mut lab,
        &net.recv,
        &records_path,
        &["--workers", &workers_arg],
    );
    let daemon_pid = lab.child("daemon").id();
    start_peers(&mut lab, &tools, &net.server, &d);
    println!(
        "{name}: network and peers ready after {:?}; artifacts in {}",
        started.elapsed(),
        d.display()
    );

    // ---- Load ----
    let path = "/static/load.txt?case=load";
    let cpu_before = cpu_seconds(daemon_pid);
    let load_started = Instant::now();
    let load = run(
        lab.exec(&net.client, &tools.h2load).args([
            "--h1",
            "-c",
            &LOAD_CONNECTIONS.to_string(),
            "-n",
            &LOAD_REQUESTS.to_string(),
            "--rps",
            &LOAD_RPS_PER_CONNECTION.to_string(),
            &url(path),
        ]),
        Duration::from_secs(600),
    );
    let load_wall = load_started.elapsed();
    std::fs::write(d.join("h2load.out"), &load.stdout).unwrap();
    // "requests: 150000 total, 150000 started, 150000 done, 150000 succeeded, 0 failed, ..."
    let counts: BTreeMap<String, usize> = load
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .unwrap_or_default()
        .split(", ")
        .filter_map(|kv| {
            let (n, k) = kv.split_once(' ')?;
            Some((k.to_owned(), n.parse().ok()?))
        })
        .collect();
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    let two_xx = load
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .and_then(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(0);
    // "finished in 5.86s, 25600.00 req/s, 19.39MB/s"
    let load_rate: f64 = load
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .unwrap_or(0.0);
    let load_complete = count("succeeded");
    let mut failures: Vec<String> = Vec::new();
    if !load.status.success()
        || load_complete != LOAD_REQUESTS
        || two_xx != LOAD_REQUESTS
        || count("failed") + count("errored") + count("timeout") > 0
    {
        failures.push(format!(
            "h2load: {load_complete} succeeded of {LOAD_REQUESTS}, {two_xx} 2xx:\n{}{}",
            load.stdout, load.stderr
        ));
    }

    // Wait until the daemon has taken and processed every datagram and its pair count stands
    // still (shard counters are published about once a second).
    let catch_up = Instant::now();
    let mut last = (f64::NAN, f64::NAN);
    let mut metrics = String::new();
    let mut steady = 0;
    while catch_up.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(500));
        metrics = admin_get(&lab, &tools, &net.recv, "/metrics");
        let m = |n: &str| common::metric(&metrics, n).unwrap_or(f64::NAN);
        let now = (m("mirror_http_pairs_total"), m("mirror_datagrams_total"));
        let received = m("mirror_received_datagrams_total");
        steady = if now == last && now.1 >= received {
            steady + 1
        } else {
            0
        };
        if steady >= 3 {
            break;
        }
        last = now;
    }
    let caught_up_after = catch_up.elapsed();
    let cpu_used = cpu_seconds(daemon_pid) - cpu_before;
    std::fs::write(d.join("metrics.txt"), &metrics).unwrap();
    let snmp_after = udp_snmp(&lab, &net.recv);
    let (status, daemon_stderr) = stop_daemon(&mut lab, &daemon_log, &d.join("daemon.log"));
    if let Some(log) = &underlay_dump {
        stop_tcpdump(&mut lab, "tcpdump", log, &underlay_pcap);
    }
    failures.extend(daemon_exit_failure(status));

    // ---- Compare ----
    let m = |n: &str| common::metric(&metrics, n);
    let kernel_drops = m("mirror_kernel_drops_total");
    let received = m("mirror_received_datagrams_total");
    let processed = m("mirror_datagrams_total");
    let pairs = m("mirror_http_pairs_total");
    let unmatched = m("mirror_http_unmatched_responses_total");
    let snmp = |k: &str| {
        snmp_after.get(k).copied().unwrap_or(0) - snmp_before.get(k).copied().unwrap_or(0)
    };
    if kernel_drops != Some(0.0) {
        failures.push(format!(
            "mirror_kernel_drops_total is {kernel_drops:?}: the kernel dropped datagrams for full \
             receive queues (received {received:?}, processed {processed:?})"
        ));
    }
    // (NoPorts is left out: a mirrored frame may reach the namespace before the daemon binds.)
    for k in ["RcvbufErrors", "InErrors"] {
        if snmp(k) > 0 {
            failures.push(format!(
                "the receiver namespace's /proc/net/snmp Udp {k} rose by {} during the run",
                snmp(k)
            ));
        }
    }
    if received != processed || received.map(|r| r as u64) != Some(snmp("InDatagrams")) {
        failures.push(format!(
            "datagrams: the kernel delivered {} (Udp InDatagrams), the daemon received {received:?} and processed {processed:?}",
            snmp("InDatagrams")
        ));
    }
    if unmatched != Some(0.0) {
        failures.push(format!(
            "mirror_http_unmatched_responses_total is {unmatched:?}, not 0"
        ));
    }
    let steering = m("mirror_ingest_kernel_steering");
    let handed_off = m("mirror_ingest_handed_off_total");
    if steering != Some(1.0) || handed_off != Some(0.0) {
        failures.push(format!(
            "{workers} workers: mirror_ingest_kernel_steering is {steering:?} (want 1), \
             mirror_ingest_handed_off_total {handed_off:?} (want 0: every datagram on the socket \
             of its flow's worker)"
        ));
    }
    let summary = summary_fields(&daemon_stderr, "stopped").unwrap_or_default();
    if summary_u64(&summary, "unmatched_responses").is_some_and(|n| n > 0) {
        failures.push(format!(
            "the daemon's summary: unmatched_responses={:?}",
            summary.get("unmatched_responses")
        ));
    }

    let log = access_log(&d);
    let load_log: Vec<&LogLine> = log
        .iter()
        .filter(|l| l.client == CLIENT_IP && l.uri == path)
        .collect();
    let logged_ok = load_log
        .iter()
        .filter(|l| l.method == "GET" && l.status == "200")
        .count();
    if load_log.len() != LOAD_REQUESTS || logged_ok != LOAD_REQUESTS {
        failures.push(format!(
            "nginx logged {} requests of h2load's {LOAD_REQUESTS} ({logged_ok} GET 200)",
            load_log.len()
        ));
    }
    let (first, last) = load_log.iter().fold((f64::MAX, f64::MIN), |(a, b), l| {
        (a.min(l.msec), b.max(l.msec))
    });
    let log_rate = if last > first {
        (load_log.len().saturating_sub(1)) as f64 / (last - first)
    } else {
        0.0
    };

    // The records: counted from the text (100,000 and more), each line checked for what counts.
    let text = std::fs::read_to_string(&records_path).unwrap_or_default();
    let (mut paired, mut pending, mut other, mut bad) = (0usize, 0usize, 0usize, 0usize);
    for line in text.lines() {
        let Ok(r) = serde_json::from_str::<Value>(line) else {
            bad += 1;
            continue;
        };
        if field(&r, "path") != path {
            other += 1;
        } else if field(&r, "is_pending") != "false" {
            pending += 1;
        } else if field(&r, "method") == "GET"
            && field(&r, "statusCode") == "200"
            && field(&r, "responsePayload") == load_txt
        {
            paired += 1;
        } else {
            bad += 1;
        }
    }
    if paired != logged_ok || pending + other + bad > 0 {
        failures.push(format!(
            "records: {paired} paired GET 200 with the file, of {logged_ok} in nginx's log; \
             {pending} pending, {bad} different or not JSON, {other} of other paths"
        ));
    }
    println!(
        "load: {load_rate:.0} exchanges/s by h2load, {log_rate:.0}/s by nginx's log, {} lines",
        load_log.len()
    );
    if load_rate < LOAD_MIN_RATE || log_rate < LOAD_MIN_RATE {
        failures.push(format!(
            "the load reached {load_rate:.0} exchanges/s by h2load, {log_rate:.0}/s by nginx's log \
             ({} lines over {:.3} s), below {LOAD_MIN_RATE}/s",
            load_log.len(),
            last - first
        ));
    }

    // The premise: the kernel's VXLAN gives a connection's two directions different outer
    // source ports (so SO_REUSEPORT may hand them to different sockets).
    let mut split_note = String::from("no underlay capture (tcpdump missing)");
    if underlay_dump.is_some()
        && let Ok((_, frames)) = capture::read_pcap(&underlay_pcap)
    {
        let ports = outer_ports(&frames);
        let both: Vec<_> = ports
            .values()
            .filter(|[a, b]| !a.is_empty() && !b.is_empty())
            .collect();
        let differ = both.iter().filter(|[a, b]| a != b).count();
        split_note = format!(
            "{differ} of {} connections seen both ways in the underlay's first {} datagrams had \
             different outer source ports per direction",
            both.len(),
            frames.len()
        );
        if !both.is_empty() && differ == 0 {
            failures.push(format!(
                "the premise does not hold: {split_note} (every direction shares its socket)"
            ));
        }
    }

    println!(
        "{name}: h2load: {load_complete} exchanges in {load_wall:.2?}, {load_rate:.0}/s (h2load), \
         {log_rate:.0}/s (nginx's log); daemon ({workers} workers, debug build: {}): {cpu_used:.2} CPU-s, \
         {:.1} µs a datagram, caught up {caught_up_after:.2?} after the load ended; \
         received {received:?}, processed {processed:?}, kernel drops {kernel_drops:?}, pairs \
         {pairs:?}, unmatched {unmatched:?}, handed off {handed_off:?}; records: {paired} paired of {logged_ok} logged; \
         Udp RcvbufErrors +{}; {split_note}",
        cfg!(debug_assertions),
        cpu_used * 1e6 / processed.unwrap_or(1.0).max(1.0),
        snmp("RcvbufErrors"),
    );
    if let Some(line) = daemon_stderr.lines().find(|l| l.contains("stopped")) {
        println!("{name}: daemon: {line}");
    }
    println!("{name}: finished in {:?}", started.elapsed());
    finish(name, &failures, lab, dir, &daemon_stderr);
}

/// HTTP/2 in clear text through the kernel's VXLAN: curl (`--http2-prior-knowledge`, one
/// request a connection), nghttp (20 concurrent streams on one connection) and h2load (4
/// connections, 8 streams each at a time) against nginx's h2c listener. Every request in
/// nginx's log is reported once with its method, path and status, as HTTP/2.
#[test]
fn mirrored_http2_streams_match_access_log() {
    const NAME: &str = "mirrored_http2_streams_match_access_log";
    let _serial = serial();
    let Some(tools) = tools_or_skip(NAME, false) else {
        return;
    };
    let Some(nghttp) = which("nghttp") else {
        return common::skip(
            Need::E2e,
            NAME,
            "`nghttp` not found (Debian package nghttp2-client)",
        );
    };
    let dir = tempfile::Builder::new()
        .prefix("mirror-e2e-h2-")
        .tempdir()
        .expect("temporary directory");
    let d = dir.path().to_path_buf();
    let mut lab = Lab::new(&tools, 'h');
    let net = build_network(&mut lab, &tools, &STANDARD_MTUS);
    let www = d.join("www/static");
    std::fs::create_dir_all(&www).unwrap();
    let page = text(5_000, 3);
    std::fs::write(www.join("page.txt"), &page).unwrap();
    let data_json = serde_json::to_string_pretty(&json_doc("h2", 30)).unwrap();
    std::fs::write(www.join("data.json"), &data_json).unwrap();
    let big_txt = text(300_000, 9);
    std::fs::write(www.join("big.txt"), &big_txt).unwrap();
    write_nginx_conf(&d);
    let records_path = d.join("records.jsonl");
    // The underlay, for tshark's http2 dissector as a second oracle.
    let underlay_pcap = d.join("underlay.pcap");
    let underlay_dump = start_tcpdump(
        &mut lab,
        &tools,
        "tcpdump",
        (&net.recv, &net.recv_dev),
        &["-s", "0"],
        &underlay_pcap,
        &["udp", "port", "4789"],
    );
    let daemon_log = start_daemon(&mut lab, &net.recv, &records_path, &["--workers", "2"]);
    start_peers(&mut lab, &tools, &net.server, &d);

    let h2 = |path: &str| format!("http://{SERVER_IP}:{H2_PORT}{path}");
    let mut failures = Vec::new();
    let got = curl_in(
        &lab,
        &tools,
        &net.client,
        &["--http2-prior-knowledge", &h2("/static/page.txt?case=curl")],
    );
    if got.stdout != page {
        failures.push(format!("curl got {} bytes, not the page", got.stdout.len()));
    }
    // To the python upstream through nginx, which reads the body (a `return` would answer
    // before it, and reset the stream).
    let posted = r#"{"order":42,"items":["a","b"]}"#;
    let echo = curl_in(
        &lab,
        &tools,
        &net.client,
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/json",
            "--data",
            posted,
            &h2("/api/orders?case=post"),
        ],
    );
    if echo.stdout != posted {
        failures.push(format!("the upstream echoed {:?}", echo.stdout));
    }
    curl_in(
        &lab,
        &tools,
        &net.client,
        &["--http2-prior-knowledge", &h2("/missing?case=404")],
    );
    curl_in(
        &lab,
        &tools,
        &net.client,
        &["--http2-prior-knowledge", &h2("/nocontent?case=204")],
    );
    curl_in(
        &lab,
        &tools,
        &net.client,
        &[
            "--http2-prior-knowledge",
            "-H",
            "if-modified-since: Fri, 01 Jan 2100 00:00:00 GMT",
            &h2("/static/page.txt?case=304"),
        ],
    );
    // gzip (nginx compresses the JSON), and a body of many DATA frames and window updates.
    let gz = curl_in(
        &lab,
        &tools,
        &net.client,
        &[
            "--http2-prior-knowledge",
            "--compressed",
            &h2("/static/data.json?case=gzip"),
        ],
    );
    if gz.stdout != data_json {
        failures.push("curl --compressed did not get the JSON".into());
    }
    let big = curl_in(
        &lab,
        &tools,
        &net.client,
        &["--http2-prior-knowledge", &h2("/static/big.txt?case=big")],
    );
    if big.stdout != big_txt {
        failures.push(format!("curl got {} bytes of big.txt", big.stdout.len()));
    }
    let streams = run(
        lab.exec(&net.client, &nghttp).args([
            "-n",
            "-m",
            "20",
            &h2("/static/data.json?case=nghttp"),
        ]),
        Duration::from_secs(60),
    );
    if !streams.status.success() {
        failures.push(format!(
            "nghttp failed: {}{}",
            streams.stdout, streams.stderr
        ));
    }
    let load = run(
        lab.exec(&net.client, &tools.h2load).args([
            "-n",
            "400",
            "-c",
            "4",
            "-m",
            "8",
            &h2("/static/page.txt?case=h2load"),
        ]),
        Duration::from_secs(120),
    );
    if !load.status.success() || !load.stdout.contains("400 succeeded") {
        failures.push(format!("h2load: {}{}", load.stdout, load.stderr));
    }
    // Let the last segments through the mirror and the daemon.
    std::thread::sleep(Duration::from_secs(2));
    let metrics = admin_get(&lab, &tools, &net.recv, "/metrics");
    let (status, daemon_stderr) = stop_daemon(&mut lab, &daemon_log, &d.join("daemon.log"));
    failures.extend(daemon_exit_failure(status));
    if let Some(log) = &underlay_dump {
        stop_tcpdump(&mut lab, "tcpdump", log, &underlay_pcap);
    }

    let log = access_log(&d);
    let logged = logged_exchanges(&log);
    let n_logged: usize = logged.values().sum();
    if n_logged != 7 + 20 + 400 {
        failures.push(format!("nginx logged {n_logged} client requests, not 427"));
    }
    let records = read_records(&records_path, &mut failures);
    compare_with_log("HTTP/2", &logged, &records, &mut failures);
    for r in &records {
        if field(r, "type") != "HTTP/2" {
            failures.push(format!(
                "type {:?} in {}",
                field(r, "type"),
                field(r, "path")
            ));
        }
    }
    let by_path = |p: &str| records.iter().find(|r| field(r, "path") == p);
    match by_path("/static/page.txt?case=curl") {
        Some(r) if field(r, "responsePayload") == page => {
            let req = headers(r, "requestHeaders");
            if req.get("host").map(String::as_str) != Some(&format!("{SERVER_IP}:{H2_PORT}")) {
                failures.push(format!(
                    "curl's record: host from :authority missing: {req:?}"
                ));
            }
        }
        other => failures.push(format!("curl's page: {other:?}")),
    }
    match by_path("/static/data.json?case=gzip") {
        Some(r)
            if field(r, "responsePayload") == data_json
                && headers(r, "responseHeaders")
                    .get("content-encoding")
                    .map(String::as_str)
                    == Some("gzip") => {}
        other => failures.push(format!("the gzip record: {other:.300?}")),
    }
    match by_path("/static/big.txt?case=big") {
        Some(r) if field(r, "responsePayload") == big_txt => {}
        other => failures.push(format!(
            "big.txt's record: {:?}",
            other.map(|r| field(r, "responsePayload").len())
        )),
    }
    for (path, status) in [
        ("/nocontent?case=204", "204"),
        ("/static/page.txt?case=304", "304"),
    ] {
        if by_path(path).map(|r| field(r, "statusCode")) != Some(status) {
            failures.push(format!("{path}: want {status}: {:?}", by_path(path)));
        }
    }
    match by_path("/api/orders?case=post") {
        Some(r)
            if field(r, "requestPayload") == posted
                && field(r, "responsePayload") == posted
                && field(r, "method") == "POST" => {}
        other => failures.push(format!("the POST's record: {other:?}")),
    }
    match tshark_http2(&underlay_pcap) {
        Ok((methods_paths, statuses)) => {
            let mut ours_mp: BTreeMap<(String, String), usize> = BTreeMap::new();
            let mut ours_st: BTreeMap<String, usize> = BTreeMap::new();
            for r in &records {
                *ours_mp
                    .entry((field(r, "method").to_owned(), field(r, "path").to_owned()))
                    .or_default() += 1;
                *ours_st
                    .entry(field(r, "statusCode").to_owned())
                    .or_default() += 1;
            }
            if methods_paths != ours_mp || statuses != ours_st {
                failures.push(format!(
                    "tshark's http2 dissector: requests {methods_paths:?}, statuses {statuses:?}; \
                     ours {ours_mp:?}, {ours_st:?}"
                ));
            }
        }
        Err(why) if underlay_dump.is_none() => println!("{NAME}: no tshark oracle: {why}"),
        Err(why) => common::skip(Need::E2e, NAME, &format!("tshark oracle: {why}")),
    }
    // Joined mid-connection: the capture without its first 40 % of datagrams, replayed. The
    // connections' prefaces and HPACK state are gone: the streams whose heads need no entry
    // from before are reported (some must be), and each must be among what the whole traffic
    // gave; nothing invented.
    if underlay_dump.is_some()
        && let Ok((_, frames)) = capture::read_pcap(&underlay_pcap)
    {
        let mut cut = mirror_receiver::testkit::Pcap::default();
        for f in &frames[frames.len() * 2 / 5..] {
            cut.frame(&f.data);
        }
        let cut_path = d.join("underlay-cut.pcap");
        std::fs::write(&cut_path, cut.into_bytes()).unwrap();
        let out = d.join("records-cut.jsonl");
        let replay = run(
            Command::new(env!("CARGO_BIN_EXE_mirror-receiver"))
                .args(["--log-level", "warn", "replay"])
                .arg(&cut_path)
                .arg("--output")
                .arg(&out),
            Duration::from_secs(60),
        );
        let full: std::collections::BTreeSet<(String, String, String)> = records
            .iter()
            .map(|r| {
                (
                    field(r, "method").into(),
                    field(r, "path").into(),
                    field(r, "statusCode").into(),
                )
            })
            .collect();
        let cut_records = read_records(&out, &mut failures);
        let invented: Vec<_> = cut_records
            .iter()
            .map(|r| (field(r, "method"), field(r, "path"), field(r, "statusCode")))
            .filter(|(m, p, s)| !full.contains(&((*m).into(), (*p).into(), (*s).into())))
            .collect();
        if !replay.status.success() || !invented.is_empty() || cut_records.is_empty() {
            failures.push(format!(
                "the capture joined mid-connection: replay {}, {} records, those not in the whole run: {invented:?}",
                replay.status,
                cut_records.len()
            ));
        }
        println!(
            "{NAME}: joined mid-connection ({} of {} datagrams): {} records, none invented",
            frames.len() - frames.len() * 2 / 5,
            frames.len(),
            cut_records.len()
        );
    }
    let m = |n: &str| common::metric(&metrics, n).unwrap_or(f64::NAN);
    let per_vni = format!("mirror_vni_http2_streams_total{{vni=\"{VNI}\"}}");
    if m("mirror_http2_streams_total") != n_logged as f64
        || m("mirror_http2_hpack_failures_total") != 0.0
        || m(&per_vni) != n_logged as f64
    {
        failures.push(format!(
            "mirror_http2_streams_total {}, {per_vni} {}, mirror_http2_hpack_failures_total {} (want {n_logged}, {n_logged}, 0)",
            m("mirror_http2_streams_total"),
            m(&per_vni),
            m("mirror_http2_hpack_failures_total")
        ));
    }
    println!(
        "{NAME}: {} records of {n_logged} logged requests; http2 streams {}, resets {}, framing lost {}",
        records.len(),
        m("mirror_http2_streams_total"),
        m("mirror_http2_resets_total"),
        m("mirror_http2_framing_lost_total")
    );
    finish(NAME, &failures, lab, dir, &daemon_stderr);
}

const GRPC_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/grpc_peer.py");
const GRPC_PORT: u16 = 50051;

/// The messages of a gRPC payload as the record carries it (base64 of length-prefixed
/// messages): (compressed flag, message) each, or why it does not read so.
fn grpc_messages(payload: &str) -> Result<Vec<(u8, Vec<u8>)>, String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| format!("not base64 ({e}): {payload:.80}"))?;
    let mut out = Vec::new();
    let mut rest = raw.as_slice();
    while !rest.is_empty() {
        let len = rest
            .get(1..5)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("a cut-off message prefix")?;
        let m = rest.get(5..5 + len).ok_or("a cut-off message")?;
        out.push((rest[0], m.to_vec()));
        rest = &rest[5 + len..];
    }
    Ok(out)
}

/// gRPC through the kernel's VXLAN between a Python grpcio client and server (unary, unary
/// with gzip-compressed messages, server streaming, client streaming, an error status): each
/// call is one record whose payloads base64-decode to the messages sent, uncompressed, with
/// grpc-status (and grpc-message) in the response headers.
#[test]
fn mirrored_grpc_calls_are_records_with_their_messages() {
    const NAME: &str = "mirrored_grpc_calls_are_records_with_their_messages";
    let _serial = serial();
    let Some(tools) = tools_or_skip(NAME, false) else {
        return;
    };
    if !python_has(&tools, NAME, "grpc", "grpcio") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("mirror-e2e-grpc-")
        .tempdir()
        .expect("temporary directory");
    let d = dir.path().to_path_buf();
    let mut lab = Lab::new(&tools, 'g');
    let net = build_network(&mut lab, &tools, &STANDARD_MTUS);
    let records_path = d.join("records.jsonl");
    let daemon_log = start_daemon(&mut lab, &net.recv, &records_path, &["--workers", "2"]);
    let addr = format!("{SERVER_IP}:{GRPC_PORT}");
    start_python_server(
        &mut lab,
        &tools,
        &net.server,
        "grpc-server",
        &[GRPC_PY.as_ref(), "server".as_ref(), addr.as_ref()],
        &d.join("grpc-server.log"),
    );
    let client = run(
        lab.exec(&net.client, &tools.python3)
            .args([GRPC_PY, "client", &addr]),
        Duration::from_secs(60),
    );
    let mut failures = Vec::new();
    let calls: Vec<Value> = serde_json::from_str(client.stdout.trim()).unwrap_or_else(|e| {
        failures.push(format!(
            "the gRPC client ({e}): {}{}",
            client.stdout, client.stderr
        ));
        Vec::new()
    });
    std::thread::sleep(Duration::from_secs(2));
    let (status, daemon_stderr) = stop_daemon(&mut lab, &daemon_log, &d.join("daemon.log"));
    failures.extend(daemon_exit_failure(status));
    let records = read_records(&records_path, &mut failures);
    if records.len() != calls.len() || calls.len() != 5 {
        failures.push(format!(
            "{} records of {} calls (want 5)",
            records.len(),
            calls.len()
        ));
    }
    let hexes = |v: &Value| -> Vec<Vec<u8>> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(mirror_receiver::testkit::hex)
            .collect()
    };
    for call in &calls {
        let path = call["path"].as_str().unwrap_or_default();
        let want_req = hexes(&call["request"]);
        let want_resp = hexes(&call["response"]);
        let found = records.iter().find(|r| {
            field(r, "path") == path
                && grpc_messages(field(r, "requestPayload"))
                    .is_ok_and(|m| m.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>() == want_req)
        });
        let Some(r) = found else {
            failures.push(format!("no record of {path} with request {want_req:?}"));
            continue;
        };
        let req = grpc_messages(field(r, "requestPayload")).unwrap_or_default();
        let resp = grpc_messages(field(r, "responsePayload"));
        let resp_headers = headers(r, "responseHeaders");
        let req_headers = headers(r, "requestHeaders");
        let checks = [
            (field(r, "method") == "POST", "method POST".to_owned()),
            (field(r, "type") == "HTTP/2", "type HTTP/2".to_owned()),
            (field(r, "statusCode") == "200", "statusCode 200".to_owned()),
            (
                resp_headers.get("grpc-status").map(String::as_str)
                    == Some(&call["status"].to_string()),
                format!("grpc-status {}", call["status"]),
            ),
            (
                req.iter().all(|(flag, _)| *flag == 0),
                "request messages uncompressed".to_owned(),
            ),
            (
                resp.as_ref().is_ok_and(|m| {
                    m.iter().all(|(f, _)| *f == 0)
                        && m.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>() == want_resp
                }),
                format!("response messages {want_resp:?}"),
            ),
            (
                call["gzip"] != true
                    || req_headers.get("grpc-encoding").map(String::as_str) == Some("gzip"),
                "the compressed call's grpc-encoding gzip".to_owned(),
            ),
            (
                call["status"] != 5
                    || resp_headers.get("grpc-message").map(String::as_str) == Some("no such item"),
                "grpc-message".to_owned(),
            ),
        ];
        for (ok, what) in checks {
            if !ok {
                failures.push(format!("{path}: want {what}: {r}"));
            }
        }
    }
    println!("{NAME}: {} calls, {} records", calls.len(), records.len());
    finish(NAME, &failures, lab, dir, &daemon_stderr);
}

const H2C_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/h2c_upgrade.py");
const H2C_PORT: u16 = 8083;

/// `Upgrade: h2c`: curl `--http2` on an http:// URL asks for it, a server of python-hyper's h2
/// answers `101` and then HTTP/2 (nginx and nghttpd take HTTP/2 in clear text only with prior
/// knowledge). Each upgraded request is reported once, answered by its HTTP/2 response.
#[test]
fn mirrored_h2c_upgrades_are_reported_with_their_http2_answers() {
    const NAME: &str = "mirrored_h2c_upgrades_are_reported_with_their_http2_answers";
    let _serial = serial();
    let Some(tools) = tools_or_skip(NAME, false) else {
        return;
    };
    if !python_has(&tools, NAME, "h2.connection", "h2") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("mirror-e2e-h2c-")
        .tempdir()
        .expect("temporary directory");
    let d = dir.path().to_path_buf();
    let mut lab = Lab::new(&tools, 'u');
    let net = build_network(&mut lab, &tools, &STANDARD_MTUS);
    let records_path = d.join("records.jsonl");
    let daemon_log = start_daemon(&mut lab, &net.recv, &records_path, &["--workers", "2"]);
    let server_log = d.join("h2c.log");
    let listen = format!("{SERVER_IP}:{H2C_PORT}");
    start_python_server(
        &mut lab,
        &tools,
        &net.server,
        "h2c-server",
        &[H2C_PY.as_ref(), listen.as_ref(), server_log.as_os_str()],
        &d.join("h2c-server.err"),
    );
    let mut failures = Vec::new();
    let paths = ["/upgrade/one", "/upgrade/two?x=1", "/upgrade/three"];
    for path in paths {
        let url = format!("http://{SERVER_IP}:{H2C_PORT}{path}");
        let got = curl_in(&lab, &tools, &net.client, &["--http2", &url]);
        if got.stdout != format!("h2c:{path}") {
            failures.push(format!("curl {url}: {:?}", got.stdout));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let (status, daemon_stderr) = stop_daemon(&mut lab, &daemon_log, &d.join("daemon.log"));
    failures.extend(daemon_exit_failure(status));
    let logged = std::fs::read_to_string(&server_log).unwrap_or_default();
    if logged.lines().count() != paths.len() {
        failures.push(format!("the server logged {logged:?}"));
    }
    let records = read_records(&records_path, &mut failures);
    let got: BTreeMap<&str, (&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                field(r, "path"),
                (
                    field(r, "method"),
                    field(r, "statusCode"),
                    field(r, "responsePayload"),
                ),
            )
        })
        .collect();
    let want: BTreeMap<&str, (&str, &str, String)> = paths
        .iter()
        .map(|p| (*p, ("GET", "200", format!("h2c:{p}"))))
        .collect();
    let got_owned: BTreeMap<&str, (&str, &str, String)> = got
        .iter()
        .map(|(p, (m, s, b))| (*p, (*m, *s, (*b).to_owned())))
        .collect();
    if records.len() != paths.len() || got_owned != want {
        failures.push(format!("records {got_owned:?}, want {want:?}"));
    }
    println!(
        "{NAME}: {} records of {} upgraded requests",
        records.len(),
        paths.len()
    );
    finish(NAME, &failures, lab, dir, &daemon_stderr);
}

/// What tshark's http2 dissector finds in a capture of the underlay (VXLAN on 4789, HTTP/2 on
/// [`H2_PORT`] inside): each request's (method, path) and each response's status, counted.
#[allow(clippy::type_complexity)]
fn tshark_http2(
    pcap: &Path,
) -> Result<(BTreeMap<(String, String), usize>, BTreeMap<String, usize>), String> {
    let tshark = which("tshark").ok_or("`tshark` not found (Debian package tshark)")?;
    let out = run(
        Command::new(tshark)
            .arg("-r")
            .arg(pcap)
            .args([
                "-d",
                &format!("tcp.port=={H2_PORT},http2"),
                "-Y",
                "http2.type == 1",
            ])
            .args(["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|"])
            .args(["-e", "http2.headers.method", "-e", "http2.headers.path"])
            .args(["-e", "http2.headers.status"]),
        Duration::from_secs(120),
    );
    if !out.status.success() {
        return Err(format!("tshark failed: {}", out.stderr));
    }
    let (mut requests, mut statuses) = (BTreeMap::new(), BTreeMap::new());
    // One line per packet with HEADERS frames; fields list one value per frame, `|`-joined.
    for line in out.stdout.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let split = |i: usize| -> Vec<&str> {
            f.get(i)
                .map_or(vec![], |v| v.split('|').filter(|s| !s.is_empty()).collect())
        };
        for (m, p) in split(0).into_iter().zip(split(1)) {
            *requests.entry((m.to_owned(), p.to_owned())).or_default() += 1;
        }
        for st in split(2) {
            *statuses.entry(st.to_owned()).or_default() += 1;
        }
    }
    Ok((requests, statuses))
}

/// True when the tests' python3 can import `module`; otherwise the test `name` is skipped (a
/// failure under MIRROR_E2E_REQUIRE=1) saying which PyPI package it needs.
fn python_has(tools: &Tools, name: &str, module: &str, package: &str) -> bool {
    let import = run(
        Command::new(&tools.python3).args(["-c", &format!("import {module}")]),
        Duration::from_secs(30),
    );
    if !import.status.success() {
        common::skip(
            Need::E2e,
            name,
            &format!(
                "{} cannot import {module} (pip install {package}; .ci/run puts it in its venv)",
                tools.python3.display()
            ),
        );
    }
    import.status.success()
}

/// Starts a python server (`args`: the script and its arguments) in namespace `ns` as child
/// `child`, its stderr to `stderr`, and waits until it prints "listening".
fn start_python_server(
    lab: &mut Lab,
    tools: &Tools,
    ns: &str,
    child: &'static str,
    args: &[&std::ffi::OsStr],
    stderr: &Path,
) {
    let mut cmd = lab.exec(ns, &tools.python3);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap());
    let mut process = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {child}: {e}"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let ready = watch_lines(process.stdout.take().unwrap(), "listening", log.clone());
    lab.children.push((child, process));
    wait_ready(&ready, child, &log);
}

/// Packets the interface `dev` of `ns` has received and sent, from its kernel counters.
fn link_packets(lab: &Lab, ns: &str, dev: &str) -> u64 {
    ["rx_packets", "tx_packets"]
        .iter()
        .map(|c| {
            let path = format!("/sys/class/net/{dev}/statistics/{c}");
            let out = check(lab.exec(ns, Path::new("/bin/cat")).arg(&path));
            out.trim()
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{path}: {out:?}: {e}"))
        })
        .sum()
}

/// Real captures of tagged traffic (802.1Q, QinQ) the capture test puts on the link.
const TAGGED: [&str; 3] = [
    "pcap/http-zeek-vlan.pcap",
    "pcap/http-zeek-qinq.pcap",
    "pcap/http-suricata-filecontainer-vlan-gzip.pcap",
];
const INJECT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/inject_frames.py");

/// `capture --interface` with two workers on the server's end of the app link (no VXLAN: the
/// frames themselves, as on a SPAN port, a GCP Packet Mirroring collector or a node's own
/// interface), with jumbo frames (MTU 9001): curl and ab against nginx, every exchange of nginx's
/// log reported once, pages whole; real captures of 802.1Q and QinQ traffic put on the link
/// reported as `replay` reports the files. Then a
/// flood while the daemon is stopped (SIGSTOP) overflows its 8 MiB rings: the ring drops are
/// counted, and the frames taken, dropped and skipped at startup add up to every packet the
/// interface's own counters saw, so nothing else was lost; traffic after the flood is still
/// reported.
#[test]
fn live_capture_of_the_app_link_matches_access_log() {
    const NAME: &str = "live_capture_of_the_app_link_matches_access_log";
    let _serial = serial();
    let Some(tools) = tools_or_skip(NAME, false) else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("mirror-e2e-capture-")
        .tempdir()
        .expect("temporary directory");
    let d = dir.path().to_path_buf();
    std::fs::create_dir_all(d.join("www")).unwrap();
    std::fs::write(d.join("www/page.html"), text(20_000, 7)).unwrap();
    write_nginx_conf(&d);
    let mut lab = Lab::new(&tools, 'c');
    // Jumbo frames on the app link: the 20 KB page in 9001-byte frames, kept whole.
    let net = build_network(&mut lab, &tools, &JUMBO_MTUS);
    // No IPv6 on the app link: its neighbour discovery would add frames of its own timing.
    for (ns, dev) in [
        (&net.server, &net.server_dev),
        (&net.client, &format!("appc{}", lab.tag)),
    ] {
        check(
            lab.exec(ns, Path::new("/usr/sbin/sysctl"))
                .arg("-qw")
                .arg(format!("net.ipv6.conf.{dev}.disable_ipv6=1")),
        );
    }
    start_peers(&mut lab, &tools, &net.server, &d);
    let records_path = d.join("records.jsonl");
    let before = link_packets(&lab, &net.server, &net.server_dev);
    let daemon_log = start_receiver(
        &mut lab,
        &net.server,
        &records_path,
        &[
            "capture",
            "--interface",
            &net.server_dev,
            "--workers",
            "2",
            "--capture-buffer",
            "8388608",
        ],
        "capturing",
    );
    let mut failures = Vec::new();
    // Keep-alive (several URLs on one connection), a POST with a JSON body, a 404, and ab's
    // 4 concurrent keep-alive connections.
    curl_in(
        &lab,
        &tools,
        &net.client,
        &[&url("/page.html"), &url("/nocontent?a=1"), &url("/missing")],
    );
    let body = json_doc("capture", 20).to_string();
    curl_in(
        &lab,
        &tools,
        &net.client,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
            &url("/api/echo"),
        ],
    );
    let ab = run(
        lab.exec(&net.client, &tools.ab)
            .args(["-q", "-k", "-n", "200", "-c", "4"])
            .arg(url("/page.html")),
        Duration::from_secs(60),
    );
    assert!(ab.status.success(), "ab: {}", ab.stderr);
    // Tagged frames (this kernel has neither vlan devices nor tc's vlan action): real captures
    // of 802.1Q and QinQ traffic put on the link as they are. The kernel takes the outer tag
    // into the frame's metadata; libpcap puts it back.
    let tagged = match common::corpus_dir(&TAGGED) {
        Ok(dir) => {
            let files: Vec<PathBuf> = TAGGED.iter().map(|f| dir.join(f)).collect();
            let sent = run(
                lab.exec(&net.client, &tools.python3)
                    .arg(INJECT_PY)
                    .arg(format!("appc{}", lab.tag))
                    .args(&files),
                Duration::from_secs(60),
            );
            assert!(sent.status.success(), "inject_frames.py: {}", sent.stderr);
            Some(files)
        }
        Err(why) => {
            common::skip(Need::Corpus, NAME, &format!("the tagged part: {why}"));
            None
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let before_flood = admin_get(&lab, &tools, &net.server, "/metrics");
    if !before_flood.contains("mirror_capture_ring_drops_total 0\n") {
        failures.push("the rings dropped frames before the flood".into());
    }
    // The flood: 200,000 datagrams (about 28 MB of frames) while the daemon is stopped, into
    // rings of 8 MiB.
    let pid = lab.child("daemon").id();
    // SAFETY: kill on the pid of our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let flood = run(
        lab.exec(&net.client, &tools.python3).arg("-c").arg(format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             for i in range(200000):\n    s.sendto(b'x' * 100, ('{SERVER_IP}', 9))\n"
        )),
        Duration::from_secs(60),
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    assert!(flood.status.success(), "flood: {}", flood.stderr);
    std::thread::sleep(Duration::from_millis(500));
    // After the flood the capture goes on.
    curl_in(&lab, &tools, &net.client, &[&url("/nocontent?after=flood")]);
    std::thread::sleep(Duration::from_secs(1));
    let metrics = admin_get(&lab, &tools, &net.server, "/metrics");
    let (status, daemon_stderr) = stop_daemon(&mut lab, &daemon_log, &d.join("daemon.log"));
    failures.extend(daemon_exit_failure(status));
    let after = link_packets(&lab, &net.server, &net.server_dev);

    let all = read_records(&records_path, &mut failures);
    let (records, injected): (Vec<Value>, Vec<Value>) =
        all.into_iter().partition(|r| field(r, "ip") == CLIENT_IP);
    // The tagged captures: what the capture reports of them is what replay reports of the
    // files (the pipeline's reading of tagged frames; the live path must lose no tag).
    if let Some(files) = &tagged {
        let key = |r: &Value| {
            format!(
                "{} {} {} {}",
                field(r, "method"),
                field(r, "path"),
                field(r, "statusCode"),
                field(r, "responsePayload").len()
            )
        };
        let mut want: Vec<String> = Vec::new();
        for f in files {
            let out = run(
                Command::new(env!("CARGO_BIN_EXE_mirror-receiver"))
                    .args(["--log-level", "warn", "replay"])
                    .arg(f)
                    .env_remove("MIRROR_KAFKA_BROKERS")
                    .env_remove("AKTO_KAFKA_BROKER_MAL")
                    .env_remove("AKTO_KAFKA_BROKER_URL"),
                Duration::from_secs(60),
            );
            assert!(
                out.status.success(),
                "replay {}: {}",
                f.display(),
                out.stderr
            );
            for line in out.stdout.lines() {
                want.push(key(&serde_json::from_str(line).unwrap()));
            }
        }
        let mut got: Vec<String> = injected.iter().map(key).collect();
        want.sort();
        got.sort();
        if want.len() < 12 || got != want {
            failures.push(format!(
                "tagged captures: replay reports {want:?}, the live capture {got:?}"
            ));
        }
    }
    let logged = logged_exchanges(&access_log(&d));
    compare_with_log("capture", &logged, &records, &mut failures);
    if logged.values().sum::<usize>() < 205 {
        failures.push(format!("nginx logged only {logged:?}"));
    }
    for r in &records {
        if field(r, "path").starts_with("/page.html") && field(r, "responsePayload").len() != 20_000
        {
            failures.push(format!(
                "{}: the page's payload is {} bytes, not 20,000",
                field(r, "path"),
                field(r, "responsePayload").len()
            ));
        }
    }
    for r in records.iter().chain(&injected) {
        if field(r, "akto_vxlan_id") != "0" {
            failures.push(format!(
                "record of {} from {} with akto_vxlan_id {}",
                field(r, "path"),
                field(r, "ip"),
                field(r, "akto_vxlan_id")
            ));
        }
    }
    match records.iter().find(|r| field(r, "path") == "/api/echo") {
        Some(r) => {
            if field(r, "requestPayload") != body {
                failures.push("the POST's body is not the one sent".into());
            }
        }
        None => failures.push("no record of the POST".into()),
    }
    match summary_fields(&daemon_stderr, "stopped") {
        None => failures.push("no summary line at the daemon's exit".into()),
        Some(f) => {
            let get = |k: &str| summary_u64(&f, k).unwrap_or(0);
            let (frames, drops, skipped) = (
                get("capture_frames"),
                get("capture_ring_drops"),
                get("capture_startup_skipped"),
            );
            if drops == 0 {
                failures.push("the flood into 8 MiB rings dropped nothing".into());
            }
            let on_metrics = metrics
                .lines()
                .find_map(|l| l.strip_prefix("mirror_capture_ring_drops_total "))
                .and_then(|v| v.trim().parse::<u64>().ok());
            // Read before the exit, after the flood: what it says then, the exit says too.
            if on_metrics != Some(drops) {
                failures.push(format!(
                    "/metrics says mirror_capture_ring_drops_total {on_metrics:?}, the exit {drops}"
                ));
            }
            // Every packet the interface saw was taken, dropped by a full ring (counted), or
            // skipped at startup (counted).
            let seen = after - before;
            if frames + drops + skipped != seen {
                failures.push(format!(
                    "the interface counted {seen} packets; the capture took {frames}, dropped \
                     {drops}, skipped {skipped} (sum {})",
                    frames + drops + skipped
                ));
            }
            if get("datagrams") != frames {
                failures.push(format!(
                    "{frames} frames taken, {} processed",
                    get("datagrams")
                ));
            }
            println!(
                "{NAME}: {seen} packets on the link: {frames} taken, {drops} ring drops, \
                 {skipped} skipped at startup; {} records",
                records.len()
            );
        }
    }
    finish(NAME, &failures, lab, dir, &daemon_stderr);
}

const GENEVE_RELAY_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/geneve_relay.py");
/// The relay's GWLB endpoint id (its default); its low 24 bits are the VNI of traffic that
/// Geneve carries without the mirror's VXLAN.
const GWLB_ENDPOINT_ID: u64 = 0x0E3C_5B1A_2F47_A901;

/// Geneve as a Gateway Load Balancer delivers it, and VXLAN, served at once by one daemon
/// (`--listen geneve://…:6081 --listen vxlan://…:4799`, two workers each). This kernel has no
/// `geneve` device, so the kernel's VXLAN (mirroring the app link as before) sends to
/// tests/e2e/geneve_relay.py in the receiver namespace, which wraps each datagram as GWLB does
/// (Geneve with AWS's three TLVs of class 0x0108). Three phases, each its own requests:
/// `nested` (Geneve around the mirror's IPv4/UDP/VXLAN packet: a mirror session whose target is
/// a GWLB endpoint), `ip` (Geneve around the inner IP packet, as GWLB carries inline traffic) and
/// `vxlan` (the datagrams forwarded unchanged to the VXLAN listener). Every request of nginx's
/// log is reported once, with the VXLAN VNI where the mirror's VXLAN is inside and the low 24
/// bits of the GWLB endpoint id where it is not; the nested phase is steered by the kernel
/// (nothing handed off).
#[test]
fn geneve_and_vxlan_served_at_once_match_access_log() {
    const NAME: &str = "geneve_and_vxlan_served_at_once_match_access_log";
    let _serial = serial();
    let Some(tools) = tools_or_skip(NAME, false) else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("mirror-e2e-geneve-")
        .tempdir()
        .expect("temporary directory");
    let d = dir.path().to_path_buf();
    std::fs::create_dir_all(d.join("www")).unwrap();
    std::fs::write(d.join("www/page.html"), text(30_000, 11)).unwrap();
    write_nginx_conf(&d);
    let mut lab = Lab::new(&tools, 'v');
    let net = build_network(&mut lab, &tools, &STANDARD_MTUS);
    start_peers(&mut lab, &tools, &net.server, &d);
    let records_path = d.join("records.jsonl");
    let daemon_log = start_receiver(
        &mut lab,
        &net.recv,
        &records_path,
        &[
            "run",
            "--listen",
            "geneve://127.0.0.1:6081",
            "--listen",
            "vxlan://127.0.0.1:4799",
            "--workers",
            "2",
        ],
        "receiving VXLAN",
    );
    let mut failures = Vec::new();
    let phases = [
        ("nested", "127.0.0.1:6081", VNI),
        (
            "ip",
            "127.0.0.1:6081",
            (GWLB_ENDPOINT_ID & 0xff_ffff) as u32,
        ),
        ("vxlan", "127.0.0.1:4799", VNI),
    ];
    let body = json_doc("geneve", 10).to_string();
    for (mode, target, _) in phases {
        start_python_server(
            &mut lab,
            &tools,
            &net.recv,
            "relay",
            &[
                GENEVE_RELAY_PY.as_ref(),
                format!("0.0.0.0:{}", 4789).as_ref(),
                target.as_ref(),
                "--mode".as_ref(),
                mode.as_ref(),
            ],
            &d.join(format!("relay-{mode}.err")),
        );
        // Keep-alive: three requests on one connection, a 30 KB page, a POST with a body.
        curl_in(
            &lab,
            &tools,
            &net.client,
            &[
                &url(&format!("/nocontent?via={mode}&n=1")),
                &url(&format!("/nocontent?via={mode}&n=2")),
                &url(&format!("/page.html?via={mode}")),
            ],
        );
        curl_in(
            &lab,
            &tools,
            &net.client,
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
                &body,
                &url(&format!("/api/echo?via={mode}")),
            ],
        );
        std::thread::sleep(Duration::from_millis(500));
        let status = stop(lab.child("relay"), libc::SIGTERM, Duration::from_secs(5));
        if !status.is_some_and(|s| s.success()) {
            failures.push(format!("the {mode} relay exited with {status:?}"));
        }
        // The kernel steers GWLB's nesting by the mirrored flow, as it does VXLAN, although
        // the relay sends everything from one socket: nothing is handed off. (Geneve around an
        // IP packet, phase `ip`, goes by the kernel's outer hash and may be.)
        if mode == "nested" {
            let metrics = admin_get(&lab, &tools, &net.recv, "/metrics");
            let handed = metrics
                .lines()
                .find_map(|l| l.strip_prefix("mirror_ingest_handed_off_total "))
                .map(str::trim);
            if handed != Some("0") {
                failures.push(format!("nested: handed off {handed:?}, not 0"));
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let (status, daemon_stderr) = stop_daemon(&mut lab, &daemon_log, &d.join("daemon.log"));
    failures.extend(daemon_exit_failure(status));
    let records = read_records(&records_path, &mut failures);
    let logged = logged_exchanges(&access_log(&d));
    compare_with_log("geneve", &logged, &records, &mut failures);
    for (mode, _, vni) in phases {
        let mine: Vec<&Value> = records
            .iter()
            .filter(|r| field(r, "path").contains(&format!("via={mode}")))
            .collect();
        if mine.len() != 4 {
            failures.push(format!("{mode}: {} records, not 4", mine.len()));
        }
        for r in &mine {
            if field(r, "akto_vxlan_id") != vni.to_string() {
                failures.push(format!(
                    "{mode}: {} with akto_vxlan_id {}, not {vni}",
                    field(r, "path"),
                    field(r, "akto_vxlan_id")
                ));
            }
        }
        match mine.iter().find(|r| field(r, "method") == "POST") {
            Some(r) if field(r, "responsePayload") == body => {}
            Some(r) => failures.push(format!(
                "{mode}: the POST's response is {:.80}",
                field(r, "responsePayload")
            )),
            None => failures.push(format!("{mode}: no record of the POST")),
        }
        if let Some(r) = mine
            .iter()
            .find(|r| field(r, "path").starts_with("/page.html"))
        {
            if field(r, "responsePayload").len() != 30_000 {
                failures.push(format!(
                    "{mode}: the page's payload is {} bytes",
                    field(r, "responsePayload").len()
                ));
            }
        }
    }
    if let Some(f) = summary_fields(&daemon_stderr, "stopped") {
        println!(
            "{NAME}: {} records; handed_off={:?} decode_drops={:?}",
            records.len(),
            f.get("handed_off"),
            f.get("decode_drops")
        );
    } else {
        failures.push("no summary line at the daemon's exit".into());
    }
    finish(NAME, &failures, lab, dir, &daemon_stderr);
}
