//! The mirror session sync function of `cloudformation/mirror-receiver.yaml` (Python, inline in
//! the template): `tests/sessions/test_sessions_sync.py` extracts it from the template and runs
//! it against moto's server and a small fake of the traffic mirror session API on loopback
//! (an instance appears, an instance leaves, foreign sessions, an interface with 3 sessions, an
//! unsupported instance type, IP targets, drift, idempotence, the custom resource).
//!
//! Needs a Python with boto3, PyYAML and `moto[server]`: `MIRROR_SESSIONS_PYTHON`, else
//! `/opt/mirror-receiver-ci-venv/bin/python` (the venv `.ci/run` creates). Without one the test
//! skips with a message, and fails instead when `MIRROR_INFRA_REQUIRE=1` (as CI sets).

mod common;

use common::{Need, skip};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CI_VENV_PYTHON: &str = "/opt/mirror-receiver-ci-venv/bin/python";
const INSTALL: &str = "python3 -m venv /opt/mirror-receiver-ci-venv && \
                       /opt/mirror-receiver-ci-venv/bin/pip install boto3 'moto[server]'";

fn skip_or_fail(why: &str) {
    let why = format!("{why}; install: {INSTALL} (or set MIRROR_SESSIONS_PYTHON)");
    skip(Need::Infra, "the sessions-sync tests", &why);
}

/// A Python that can import what the test needs and has `moto_server` beside it.
fn python() -> Option<String> {
    let python =
        std::env::var("MIRROR_SESSIONS_PYTHON").unwrap_or_else(|_| CI_VENV_PYTHON.to_string());
    let probe = Command::new(&python)
        .args([
            "-c",
            "import boto3, yaml, moto, werkzeug, os, sys; \
             p = os.path.join(os.path.dirname(sys.executable), 'moto_server'); \
             sys.exit(0 if os.access(p, os.X_OK) else 'moto_server is not installed beside ' + sys.executable); \
             ",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => Some(python),
        Ok(out) => {
            skip_or_fail(&format!(
                "{python} lacks boto3, PyYAML or moto[server]: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            None
        }
        Err(e) => {
            skip_or_fail(&format!("{python} not found ({e})"));
            None
        }
    }
}

#[test]
fn session_sync_against_a_local_fake_of_ec2_and_elb() {
    let Some(python) = python() else {
        return;
    };
    let script = Path::new(ROOT).join("tests/sessions/test_sessions_sync.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .current_dir(ROOT)
        // No real AWS configuration may leak in: the test sets its own endpoint and keys.
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let common::Finished {
        status,
        stdout,
        stderr,
    } = common::run(&mut cmd, Duration::from_secs(300));
    // unittest reports on stderr.
    eprintln!("{stderr}");
    assert!(
        status.success(),
        "session sync tests failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let ran = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= 10, "only {ran} session sync tests ran:\n{stderr}");
    // unittest's last line: "OK", or "OK (skipped=N)" when some were skipped.
    assert!(
        !stderr.contains("skipped="),
        "session sync tests were skipped:\n{stderr}"
    );
}
