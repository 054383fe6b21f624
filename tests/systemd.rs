//! The systemd units the AMI installs, `mirror-receiver.service` (the daemon, `run`) and
//! `mirror-receiver-capture.service` (`capture`, live from an interface): `systemd-analyze
//! verify` accepts each, and `systemd-analyze security --offline=true` rates each one's
//! exposure 2.5 or lower. The capture unit keeps every setting of the daemon's but those that
//! capturing needs changed, and has no privilege beyond CAP_NET_RAW. None of these tests runs
//! `capture`: verify only checks that the executables exist.

mod common;

use common::{BIN, Need, free_udp_port, receiver, signal, skip};
use std::process::Command;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packer/files/mirror-receiver.service"
);

const CAPTURE_UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packer/files/mirror-receiver-capture.service"
);

/// The unit at `unit` with its ExecStart paths pointing at the binary under test (verify checks
/// that the executables exist), in a temporary directory under its own name.
fn unit_copy(unit: &str, exec_start: &str) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        skip(
            Need::Systemd,
            "the systemd unit checks",
            "systemd-analyze not found (Debian package systemd)",
        );
        return None;
    }
    let text = std::fs::read_to_string(unit).unwrap();
    assert!(
        text.lines().any(|l| l == exec_start),
        "{unit} lacks {exec_start}"
    );
    let dir = tempfile::tempdir().unwrap();
    let name = std::path::Path::new(unit).file_name().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text.replace("/usr/bin/mirror-receiver", BIN)).unwrap();
    Some((dir, path))
}

fn verify(unit: &str, exec_start: &str) {
    let Some((_dir, path)) = unit_copy(unit, exec_start) else {
        return;
    };
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        !stderr.contains(&format!("{name}:")),
        "warnings about the unit: {stderr}"
    );
}

/// `systemd-analyze security --offline=true`'s overall exposure level of the unit.
fn exposure(unit: &str, exec_start: &str) -> Option<f64> {
    let (_dir, path) = unit_copy(unit, exec_start)?;
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line: {stdout}"));
    let level = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read: {line}"));
    Some(level)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    verify(UNIT, "ExecStart=/usr/bin/mirror-receiver run");
}

#[test]
fn capture_unit_passes_systemd_analyze_verify() {
    verify(CAPTURE_UNIT, "ExecStart=/usr/bin/mirror-receiver capture");
}

#[test]
fn unit_exposure_is_at_most_2_5() {
    if let Some(level) = exposure(UNIT, "ExecStart=/usr/bin/mirror-receiver run") {
        assert!(level <= 2.5, "exposure {level}");
    }
}

/// CAP_NET_RAW, AF_PACKET and the host's user namespace are what capturing costs (1.8 with
/// systemd 252, against the daemon's 1.2); the bound stays the daemon's.
#[test]
fn capture_unit_exposure_is_at_most_2_5() {
    if let Some(level) = exposure(CAPTURE_UNIT, "ExecStart=/usr/bin/mirror-receiver capture") {
        assert!(level <= 2.5, "exposure {level}");
    }
}

/// Settings both units must have.
const REQUIRED: &[&str] = &[
    "Type=notify",
    "WatchdogSec=",
    "Restart=always",
    "EnvironmentFile=-/etc/mirror-receiver/env",
    "ExecStartPre=/usr/bin/mirror-receiver validate --offline",
    "DynamicUser=yes",
    "StateDirectory=mirror-receiver",
    "ProtectSystem=strict",
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "RestrictAddressFamilies=",
    "SystemCallFilter=@system-service",
    "MemoryMax=",
    "LimitNOFILE=",
];

#[test]
fn unit_has_the_required_settings() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    for setting in REQUIRED {
        assert!(
            text.lines().any(|l| l.starts_with(setting)),
            "unit lacks {setting}"
        );
    }
}

/// The `[Service]` settings of a unit, comments and blank lines left out, in order.
fn service_settings(text: &str) -> Vec<&str> {
    let mut in_service = false;
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            settings.push(line);
        }
    }
    settings
}

/// The values a unit gives `key` (every line `key=...`, in order).
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn capture_unit_runs_capture_with_only_cap_net_raw() {
    let text = std::fs::read_to_string(CAPTURE_UNIT).unwrap();
    for setting in REQUIRED {
        assert!(
            text.lines().any(|l| l.starts_with(setting)),
            "capture unit lacks {setting}"
        );
    }
    assert_eq!(
        values(&text, "ExecStart"),
        ["/usr/bin/mirror-receiver capture"]
    );
    // validate checks capture's settings only when given an interface.
    assert_eq!(
        values(&text, "ExecStartPre"),
        ["/usr/bin/mirror-receiver validate --offline --interface ${MIRROR_CAPTURE_INTERFACE}"]
    );
    // AF_PACKET sockets need CAP_NET_RAW, and promiscuous mode through PACKET_ADD_MEMBERSHIP
    // nothing more: no CAP_NET_ADMIN, no other capability.
    assert_eq!(values(&text, "CapabilityBoundingSet"), ["CAP_NET_RAW"]);
    assert_eq!(values(&text, "AmbientCapabilities"), ["CAP_NET_RAW"]);
    let settings = service_settings(&text);
    assert!(
        !settings.iter().any(|s| s.contains("CAP_NET_ADMIN")),
        "{settings:?}"
    );
    let families = values(&text, "RestrictAddressFamilies");
    assert_eq!(families.len(), 1, "{families:?}");
    let mut families: Vec<&str> = families[0].split_whitespace().collect();
    families.sort_unstable();
    assert_eq!(families, ["AF_INET", "AF_INET6", "AF_PACKET", "AF_UNIX"]);
    // A private user namespace would leave CAP_NET_RAW useless against the host's network
    // namespace.
    assert!(values(&text, "PrivateUsers").iter().all(|v| *v == "no"));
    // Not both on one host: the same admin port and spool.
    assert_eq!(values(&text, "Conflicts"), ["mirror-receiver.service"]);
    assert_eq!(values(&text, "WantedBy"), ["multi-user.target"]);
}

/// Everything the daemon's unit sets, the capture unit sets the same, but for what capturing
/// changes: the commands, the capability, the address families and the user namespace.
#[test]
fn capture_unit_keeps_every_other_setting_of_the_daemons_unit() {
    let main = std::fs::read_to_string(UNIT).unwrap();
    let capture = std::fs::read_to_string(CAPTURE_UNIT).unwrap();
    let changed = [
        "ExecStartPre=",
        "ExecStart=",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=",
        "PrivateUsers=",
    ];
    let capture_settings = service_settings(&capture);
    let mut kept = 0;
    for setting in service_settings(&main) {
        if changed.iter().any(|c| setting.starts_with(c)) {
            continue;
        }
        assert!(
            capture_settings.contains(&setting),
            "the capture unit lacks the daemon's {setting}"
        );
        kept += 1;
    }
    assert!(kept >= 40, "only {kept} settings compared");
    for setting in &capture_settings {
        let key = &setting[..=setting.find('=').unwrap()];
        assert!(
            changed.contains(&key) || main.lines().any(|l| l.trim() == *setting),
            "the capture unit adds {setting}"
        );
    }
}

/// Under systemd (Type=notify, WatchdogSec) the daemon says READY=1 once bound, feeds the
/// watchdog while its workers run, and says STOPPING=1 on SIGTERM.
#[test]
fn daemon_notifies_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = free_udp_port();
    let mut child = receiver()
        .args([
            "run",
            "--workers",
            "2",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !(seen.iter().any(|m: &String| m.contains("READY=1"))
            && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3)
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    signal(&child, libc::SIGTERM);
    let status = common::wait_until(&mut child, Duration::from_secs(10))
        .expect("the daemon stops within 10 s of SIGTERM");
    while let Ok(n) = sock.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(status.success());
    assert_eq!(seen.first().map(|m| m.trim()), Some("READY=1"), "{seen:?}");
    assert!(
        seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{seen:?}"
    );
    assert!(seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
}
