//! The systemd unit the AMI installs: `systemd-analyze verify` accepts it, and
//! `systemd-analyze security --offline=true` rates its exposure 2.5 or lower.

mod common;

use common::{BIN, Need, free_udp_port, receiver, signal, skip};
use std::process::Command;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packer/files/mirror-receiver.service"
);

/// The unit with its ExecStart paths pointing at the binary under test (verify checks that the
/// executables exist), in a temporary directory.
fn unit_copy() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
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
    let text = std::fs::read_to_string(UNIT).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/mirror-receiver run"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirror-receiver.service");
    std::fs::write(&path, text.replace("/usr/bin/mirror-receiver", BIN)).unwrap();
    Some((dir, path))
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some((_dir, path)) = unit_copy() else {
        return;
    };
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("mirror-receiver.service:"),
        "warnings about the unit: {stderr}"
    );
}

#[test]
fn unit_exposure_is_at_most_2_5() {
    let Some((_dir, path)) = unit_copy() else {
        return;
    };
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
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read: {line}"));
    assert!(level <= 2.5, "{line}");
}

#[test]
fn unit_has_the_required_settings() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    for setting in [
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
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(setting)),
            "unit lacks {setting}"
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
