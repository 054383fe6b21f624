//! The deployment files: `cloudformation/mirror-receiver.yaml` passes cfn-lint (no errors) and
//! checkov (no failed checks; skips only with a written reason), and
//! `packer/mirror-receiver.pkr.hcl` passes `packer validate` and `packer fmt -check`.
//!
//! Each tool test skips with a message when its tool is missing, and fails instead when
//! `MIRROR_INFRA_REQUIRE=1`. The tools are looked up on `PATH`, or at `CFN_LINT_BIN`,
//! `CHECKOV_BIN` and `PACKER_BIN`. CI installs them with
//! `apt-get install -y packer` and `pip install cfn-lint checkov`.
//!
//! The packer template keeps to what Debian 12's packer 1.6.6 (with its built-in amazon-ebs
//! builder) knows, so the full `packer validate` runs with it; from Packer 1.10 on it needs
//! `packer plugins install github.com/hashicorp/amazon`.

mod common;

use common::{BIN, Need, skip};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn template() -> PathBuf {
    Path::new(ROOT).join("cloudformation/mirror-receiver.yaml")
}

fn packer_template() -> PathBuf {
    Path::new(ROOT).join("packer/mirror-receiver.pkr.hcl")
}

/// The tool's program (from `env_var` or `PATH`) if it runs, else a skip (or a panic when
/// `MIRROR_INFRA_REQUIRE=1`).
fn tool(name: &str, env_var: &str, version_args: &[&str], install: &str) -> Option<String> {
    let program = std::env::var(env_var).unwrap_or_else(|_| name.to_string());
    match Command::new(&program)
        .args(version_args)
        .env("CHECKPOINT_DISABLE", "1")
        .output()
    {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout);
            eprintln!(
                "using {program}: {}",
                version.lines().next().unwrap_or("").trim()
            );
            Some(program)
        }
        result => {
            let why = match result {
                Ok(out) => format!(
                    "`{program} {}` failed: {}",
                    version_args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => format!("{program} not found ({e})"),
            };
            let why = format!("{why}; install: {install} (or set {env_var})");
            skip(Need::Infra, name, &why);
            None
        }
    }
}

/// Runs `cmd` to completion, killing it after `limit`.
fn run(mut cmd: Command, limit: Duration) -> Output {
    let f = common::run(cmd.env("CHECKPOINT_DISABLE", "1"), limit);
    Output {
        status: f.status,
        stdout: f.stdout.into_bytes(),
        stderr: f.stderr.into_bytes(),
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn cloudformation_passes_cfn_lint() {
    let Some(cfn_lint) = tool(
        "cfn-lint",
        "CFN_LINT_BIN",
        &["--version"],
        "pip install cfn-lint",
    ) else {
        return;
    };
    let mut cmd = Command::new(cfn_lint);
    cmd.arg(template());
    let out = run(cmd, Duration::from_secs(60));
    // Exit status bits: 1 fatal, 2 errors, 4 warnings, 8 informational.
    let code = out.status.code().expect("cfn-lint killed by a signal");
    assert_eq!(code & 0b11, 0, "cfn-lint reports errors: {}", text(&out));
    if code != 0 {
        eprintln!("cfn-lint warnings or notes (not failures): {}", text(&out));
    }
}

#[test]
fn cloudformation_passes_checkov() {
    let Some(checkov) = tool(
        "checkov",
        "CHECKOV_BIN",
        &["--version"],
        "pip install checkov",
    ) else {
        return;
    };
    let mut cmd = Command::new(checkov);
    cmd.arg("-f")
        .arg(template())
        .args(["--framework", "cloudformation", "--output", "json"])
        // Offline: no Prisma Cloud guidelines or mappings.
        .args(["--skip-download", "--compact"])
        .env("BC_SKIP_MAPPING", "TRUE");
    let out = run(cmd, Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let start = stdout
        .find(['{', '['])
        .unwrap_or_else(|| panic!("no JSON from checkov: {}", text(&out)));
    let report: serde_json::Value = serde_json::from_str(&stdout[start..])
        .unwrap_or_else(|e| panic!("checkov JSON: {e}: {}", text(&out)));
    // One framework gives an object, several a list.
    let reports = match report {
        serde_json::Value::Array(list) => list,
        one => vec![one],
    };
    let mut passed = 0;
    for report in &reports {
        let summary = &report["summary"];
        passed += summary["passed"].as_u64().unwrap_or(0);
        let failed = report["results"]["failed_checks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let names: Vec<String> = failed
            .iter()
            .map(|c| {
                format!(
                    "{} {} on {}",
                    c["check_id"].as_str().unwrap_or("?"),
                    c["check_name"].as_str().unwrap_or("?"),
                    c["resource"].as_str().unwrap_or("?")
                )
            })
            .collect();
        assert!(
            names.is_empty() && summary["failed"].as_u64() == Some(0),
            "checkov failed checks: {names:#?}"
        );
        assert_eq!(
            summary["parsing_errors"].as_u64(),
            Some(0),
            "checkov could not parse the template: {}",
            text(&out)
        );
        let skipped = report["results"]["skipped_checks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(Some(skipped.len() as u64), summary["skipped"].as_u64());
        for skipped in &skipped {
            let reason = skipped["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or("");
            assert!(
                reason.split_whitespace().count() >= 3,
                "{} skipped on {} without a written reason",
                skipped["check_id"],
                skipped["resource"]
            );
        }
    }
    assert!(
        passed >= 10,
        "checkov ran only {passed} checks: {}",
        text(&out)
    );
}

/// `packer validate` with the binary under test as both architectures' binary (the file
/// provisioner checks that its source exists).
fn packer_validate(packer: &str, template: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(packer);
    cmd.arg("validate")
        .args(extra)
        .arg("-var")
        .arg(format!("binary_x86_64={BIN}"))
        .arg("-var")
        .arg(format!("binary_arm64={BIN}"))
        .arg(template)
        .current_dir(ROOT);
    run(cmd, Duration::from_secs(60))
}

fn packer() -> Option<String> {
    tool(
        "packer",
        "PACKER_BIN",
        &["version"],
        "apt-get install -y packer",
    )
}

#[test]
fn packer_template_validates() {
    let Some(packer) = packer() else {
        return;
    };
    let out = packer_validate(&packer, &packer_template(), &[]);
    let all = text(&out);
    if !out.status.success() && all.contains("amazon-ebs") && all.contains("plugin") {
        // Packer >= 1.10 without the amazon plugin.
        let why = format!(
            "packer lacks the amazon plugin: {all}; run `packer plugins install github.com/hashicorp/amazon`"
        );
        skip(Need::Infra, "packer_template_validates", &why);
        return;
    }
    assert!(out.status.success(), "packer validate: {all}");
}

#[test]
fn packer_template_is_formatted() {
    let Some(packer) = packer() else {
        return;
    };
    let mut cmd = Command::new(packer);
    cmd.args(["fmt", "-check", "-diff"]).arg(packer_template());
    let out = run(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "packer fmt -check: {}", text(&out));
}

/// Without any tool: what the templates must contain, and that the environment variables the
/// stack writes are the receiver's own (README "Configuration").
#[test]
fn templates_have_the_required_settings() {
    let cfn = std::fs::read_to_string(template()).unwrap();
    for needle in [
        "Scheme: internal",
        "load_balancing.cross_zone.enabled",
        "Protocol: UDP",
        "Port: 4789",
        "HealthCheckProtocol: HTTP",
        "HealthCheckPort: \"8080\"",
        "HealthCheckPath: /readyz",
        "HttpTokens: required",
        "MetricName: mirror_kernel_drops_total",
        "MetricName: mirror_sink_dropped_total",
        "Encrypted: true",
        "AssociatePublicIpAddress: false",
        "PredefinedMetricType: ASGAverageCPUUtilization",
        "Type: AWS::EC2::TrafficMirrorTarget",
        "Type: AWS::EC2::TrafficMirrorFilter",
        "MetricName: UnHealthyHostCount",
        "MetricName: NetworkSkipMirrorIn",
        "MetricName: NetworkSkipMirrorOut",
        "Action: secretsmanager:GetSecretValue",
        "Resource: !Ref KafkaSecretArn",
        "AmazonSSMManagedInstanceCore",
        "CloudWatchAgentServerPolicy",
    ] {
        assert!(cfn.contains(needle), "template lacks {needle:?}");
    }
    let rules = cfn
        .matches("Type: AWS::EC2::TrafficMirrorFilterRule")
        .count();
    assert!(
        rules <= 10,
        "{rules} filter rules, AWS allows 10 per filter"
    );

    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let mut vars: Vec<&str> = cfn
        .match_indices("MIRROR_")
        .map(|(i, _)| {
            let rest = &cfn[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|v| v.len() > "MIRROR_".len())
        .collect();
    vars.sort_unstable();
    vars.dedup();
    assert!(vars.contains(&"MIRROR_KAFKA_BROKERS"), "{vars:?}");
    for var in vars {
        assert!(
            readme.contains(&format!("`{var}`")),
            "{var} is not a setting in README"
        );
    }

    let hcl = std::fs::read_to_string(packer_template()).unwrap();
    // One shared source (encrypted volume and AMI) named once per architecture.
    assert!(hcl.contains("encrypt_boot  = true"));
    assert_eq!(hcl.matches("encrypted             = true").count(), 1);
    for arch in ["x86_64", "arm64"] {
        assert!(
            hcl.contains(&format!("al2023-ami-2023.*-kernel-*-{arch}")),
            "{arch}"
        );
        assert!(
            hcl.contains(&format!("name            = \"{arch}\"")),
            "{arch}"
        );
    }
    // The CloudWatch agent scrapes the receiver's /metrics for the stack's drop alarms.
    assert!(hcl.contains("mirror-receiver-prometheus.yaml"));
    let agent =
        std::fs::read_to_string(Path::new(ROOT).join("packer/files/amazon-cloudwatch-agent.json"))
            .unwrap();
    for needle in [
        "\"metric_namespace\": \"MirrorReceiver\"",
        "^mirror_kernel_drops_total$",
        "^mirror_sink_dropped_total$",
        "mirror-receiver-prometheus.yaml",
    ] {
        assert!(agent.contains(needle), "agent config lacks {needle}");
    }
    let scrape = std::fs::read_to_string(
        Path::new(ROOT).join("packer/files/mirror-receiver-prometheus.yaml"),
    )
    .unwrap();
    assert!(scrape.contains("job_name: mirror-receiver") && scrape.contains("127.0.0.1:8080"));
    assert!(hcl.contains("systemctl enable mirror-receiver"));
    for (file, dest) in [
        (
            "mirror-receiver.service",
            "/etc/systemd/system/mirror-receiver.service",
        ),
        ("mirror-receiver.env", "/etc/mirror-receiver/env"),
        (
            "90-mirror-receiver-sysctl.conf",
            "/etc/sysctl.d/90-mirror-receiver.conf",
        ),
        (
            "90-mirror-receiver-journald.conf",
            "/etc/systemd/journald.conf.d/90-mirror-receiver.conf",
        ),
    ] {
        assert!(
            Path::new(ROOT).join("packer/files").join(file).is_file(),
            "packer/files/{file} missing"
        );
        assert!(
            hcl.contains(&format!("files/{file}")) && hcl.contains(&format!("{file} {dest}")),
            "{file} is not installed as {dest}"
        );
    }
    let sysctl = std::fs::read_to_string(
        Path::new(ROOT).join("packer/files/90-mirror-receiver-sysctl.conf"),
    )
    .unwrap();
    for setting in [
        "net.core.rmem_max = 134217728",
        "net.core.rmem_default =",
        "net.core.netdev_max_backlog =",
    ] {
        assert!(sysctl.contains(setting), "sysctl lacks {setting}");
    }
}
