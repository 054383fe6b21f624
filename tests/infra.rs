//! The deployment files: `cloudformation/mirror-receiver.yaml` passes cfn-lint (no errors) and
//! checkov (no failed checks; skips only with a written reason), and
//! `packer/mirror-receiver.pkr.hcl` passes `packer validate` and `packer fmt -check`.
//!
//! The template has two mirror targets, chosen by `TargetKind`: `NLB` (the default) and `GWLB`.
//! cfn-lint also lints each one with deployment parameters (it then resolves the conditions),
//! and fails on a reference to a resource the chosen kind leaves out; checkov, which follows
//! the parameters' defaults, checks a copy whose default is `GWLB` too. The template itself,
//! read through PyYAML, is checked branch by branch: the Gateway Load Balancer path (GENEVE
//! 6081 target group health-checked like the NLB's, 2-tuple stickiness, the endpoint service,
//! endpoint and mirror target), and that the sessions, receivers, security group, alarms and
//! outputs use whichever target the kind creates.
//!
//! Each tool test skips with a message when its tool is missing, and fails instead when
//! `MIRROR_INFRA_REQUIRE=1`. The tools are looked up on `PATH`, or at `CFN_LINT_BIN`,
//! `CHECKOV_BIN` and `PACKER_BIN`; the Python with PyYAML at `MIRROR_INFRA_PYTHON`, else the CI
//! venv's (`/opt/mirror-receiver-ci-venv/bin/python`, where cfn-lint brings PyYAML), else
//! `python3`. CI installs them with `apt-get install -y packer` and `pip install cfn-lint checkov`.
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
    common::run_output(cmd.env("CHECKPOINT_DISABLE", "1"), limit)
}

use common::output_text as text;

/// cfn-lint, or a skip.
fn cfn_lint() -> Option<String> {
    tool(
        "cfn-lint",
        "CFN_LINT_BIN",
        &["--version"],
        "pip install cfn-lint",
    )
}

#[test]
fn cloudformation_passes_cfn_lint() {
    let Some(cfn_lint) = cfn_lint() else {
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

/// Deployment parameters: the required ones, plus `extra`.
fn parameters(extra: &[(&str, serde_json::Value)]) -> serde_json::Value {
    use serde_json::json;
    let mut params = vec![
        ("VpcId", json!("vpc-0123456789abcdef0")),
        ("VpcCidr", json!("10.0.0.0/16")),
        (
            "SubnetIds",
            json!(["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]),
        ),
        ("ImageId", json!("ami-0123456789abcdef0")),
        ("KafkaBootstrapServers", json!("b-1.kafka.internal:9092")),
    ];
    params.extend(extra.iter().cloned());
    serde_json::Value::Array(
        params
            .into_iter()
            .map(|(k, v)| json!({"ParameterKey": k, "ParameterValue": v}))
            .collect(),
    )
}

/// With deployment parameters cfn-lint resolves the conditions: each target kind, and the
/// Gateway Load Balancer endpoint in another VPC with principals of other accounts, lints
/// without errors and without W1001 (a Ref or GetAtt to a resource the kind leaves out, which
/// CloudFormation would refuse).
#[test]
fn cloudformation_passes_cfn_lint_with_each_target_kind() {
    use serde_json::json;
    let Some(cfn_lint) = cfn_lint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("nlb-default", parameters(&[])),
        ("nlb", parameters(&[("TargetKind", json!("NLB"))])),
        ("gwlb", parameters(&[("TargetKind", json!("GWLB"))])),
        (
            "gwlb-endpoint-elsewhere",
            parameters(&[
                ("TargetKind", json!("GWLB")),
                ("EndpointVpcId", json!("vpc-0123456789abcdef1")),
                ("EndpointSubnetId", json!("subnet-0cccccccccccccccc")),
                (
                    "EndpointServicePrincipals",
                    json!([
                        "arn:aws:iam::111122223333:root",
                        "arn:aws:iam::444455556666:root"
                    ]),
                ),
            ]),
        ),
    ];
    for (name, params) in cases {
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, params.to_string()).unwrap();
        let mut cmd = Command::new(&cfn_lint);
        cmd.args(["--format", "json", "--parameter-files"])
            .arg(&file)
            .arg("--")
            .arg(template());
        let out = run(cmd, Duration::from_secs(60));
        let code = out.status.code().expect("cfn-lint killed by a signal");
        assert_eq!(code & 0b1, 0, "{name}: cfn-lint failed: {}", text(&out));
        let matches: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: cfn-lint JSON: {e}: {}", text(&out)));
        let bad: Vec<String> = matches
            .iter()
            .filter(|m| m["Level"] == "Error" || m["Rule"]["Id"] == "W1001")
            .map(|m| format!("{} {}", m["Rule"]["Id"], m["Message"]))
            .collect();
        assert!(bad.is_empty(), "{name}: {bad:#?}");
        if !matches.is_empty() {
            let all = serde_json::to_string_pretty(&matches).unwrap();
            eprintln!("{name}: cfn-lint warnings or notes (not failures): {all}");
        }
    }
}

/// checkov's report on `template`: no failed check, no parsing error, every skip with a reason.
fn checkov_passes(template: &Path) {
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
        .arg(template)
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

#[test]
fn cloudformation_passes_checkov() {
    checkov_passes(&template());
}

/// checkov evaluates conditions with the parameters' defaults, so the Gateway Load Balancer
/// resources are checked in a copy of the template whose `TargetKind` defaults to `GWLB`.
#[test]
fn cloudformation_passes_checkov_with_target_kind_gwlb() {
    let yaml = std::fs::read_to_string(template()).unwrap();
    let default = "  TargetKind:\n    Type: String\n    Default: NLB\n";
    assert_eq!(yaml.matches(default).count(), 1, "TargetKind's default");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("mirror-receiver-gwlb.yaml");
    std::fs::write(
        &copy,
        yaml.replace(default, &default.replace("NLB", "GWLB")),
    )
    .unwrap();
    checkov_passes(&copy);
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
    // The daemon's unit is enabled; the capture unit is installed, verified and left disabled.
    assert!(hcl.contains("\"systemctl enable mirror-receiver\","));
    assert!(!hcl.contains("enable mirror-receiver-capture"));
    assert!(hcl.contains("systemctl is-enabled mirror-receiver-capture)\\\" = disabled"));
    assert!(hcl.contains("verify /etc/systemd/system/mirror-receiver.service /etc/systemd/system/mirror-receiver-capture.service"));
    for (file, dest) in [
        (
            "mirror-receiver.service",
            "/etc/systemd/system/mirror-receiver.service",
        ),
        (
            "mirror-receiver-capture.service",
            "/etc/systemd/system/mirror-receiver-capture.service",
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

// ---- The template's two target kinds, read as data -------------------------------------------

use serde_json::{Value, json};

const CI_VENV_PYTHON: &str = "/opt/mirror-receiver-ci-venv/bin/python";

/// Loads a CloudFormation template with PyYAML, the short forms (`!Ref`, `!GetAtt A.B`,
/// `!If`, ...) becoming their long forms, and prints it as JSON.
const YAML_TO_JSON: &str = r#"
import json, sys, yaml

class Loader(yaml.SafeLoader):
    pass

def intrinsic(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}

Loader.add_multi_constructor("!", intrinsic)
with open(sys.argv[1]) as f:
    json.dump(yaml.load(f, Loader=Loader), sys.stdout)
"#;

/// The template as JSON, or `None` (a skip) without a Python that has PyYAML.
fn template_json() -> Option<Value> {
    let candidates = match std::env::var("MIRROR_INFRA_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec![CI_VENV_PYTHON.to_string(), "python3".to_string()],
    };
    let mut why = Vec::new();
    for python in &candidates {
        match Command::new(python)
            .args(["-c", YAML_TO_JSON])
            .arg(template())
            .output()
        {
            Ok(out) if out.status.success() => {
                return Some(serde_json::from_slice(&out.stdout).expect("template JSON"));
            }
            Ok(out) => why.push(format!(
                "{python}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => why.push(format!("{python}: {e}")),
        }
    }
    let why = format!(
        "no Python with PyYAML ({}); install: pip install pyyaml (or set MIRROR_INFRA_PYTHON)",
        why.join("; ")
    );
    skip(Need::Infra, "the template's structure", &why);
    None
}

/// The target kinds and the condition each one makes true.
const KINDS: [(&str, &str); 2] = [("NLB", "IsNlb"), ("GWLB", "IsGwlb")];

/// `value` as deployed with `TargetKind` = `kind`: every `Fn::If` on IsNlb or IsGwlb replaced
/// by the branch taken (other conditions are left as they are).
fn resolve(value: &Value, kind: &str) -> Value {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(args)) = map.get("Fn::If")
                && let [Value::String(cond), then, otherwise] = args.as_slice()
                && KINDS.iter().any(|(_, c)| c == cond)
            {
                let taken = KINDS.iter().any(|(k, c)| *k == kind && c == cond);
                return resolve(if taken { then } else { otherwise }, kind);
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), resolve(v, kind)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve(v, kind)).collect()),
        other => other.clone(),
    }
}

/// Whether an entry with this `Condition` exists with `TargetKind` = `kind`.
fn exists(entry: &Value, kind: &str) -> bool {
    match entry["Condition"].as_str() {
        Some(cond) if KINDS.iter().any(|(_, c)| *c == cond) => {
            KINDS.iter().any(|(k, c)| *k == kind && *c == cond)
        }
        _ => true,
    }
}

/// The resources (or outputs) that exist with `TargetKind` = `kind`, resolved for it.
fn section(t: &Value, name: &str, kind: &str) -> serde_json::Map<String, Value> {
    t[name]
        .as_object()
        .unwrap_or_else(|| panic!("no {name}"))
        .iter()
        .filter(|(_, v)| exists(v, kind))
        .map(|(k, v)| (k.clone(), resolve(v, kind)))
        .collect()
}

/// The names `value` refers to: Ref, Fn::GetAtt, ${...} in Fn::Sub, DependsOn.
fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("Ref", Value::String(name)) => out.push(name.clone()),
                    ("Fn::GetAtt", Value::Array(parts)) => {
                        if let Some(Value::String(name)) = parts.first() {
                            out.push(name.clone());
                        }
                    }
                    ("Fn::Sub", sub) => {
                        let (text, vars) = match sub {
                            Value::String(t) => (t.as_str(), None),
                            Value::Array(a) => (a[0].as_str().unwrap(), a.get(1)),
                            _ => panic!("Fn::Sub {sub}"),
                        };
                        let vars = vars.and_then(Value::as_object);
                        for piece in text.split("${").skip(1) {
                            let name = piece.split(['}', '.']).next().unwrap();
                            if !name.starts_with('!') && !vars.is_some_and(|v| v.contains_key(name))
                            {
                                out.push(name.to_string());
                            }
                        }
                        if let Some(vars) = vars {
                            references(&Value::Object(vars.clone()), out);
                        }
                        continue;
                    }
                    ("DependsOn", Value::String(name)) => out.push(name.clone()),
                    ("DependsOn", Value::Array(names)) => {
                        out.extend(names.iter().filter_map(|n| n.as_str().map(String::from)))
                    }
                    _ => {}
                }
                references(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

fn r(name: &str) -> Value {
    json!({ "Ref": name })
}

/// A target group's attributes as key -> value.
fn attributes(tg: &Value) -> std::collections::BTreeMap<String, String> {
    tg["Properties"]["TargetGroupAttributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["Key"].as_str().unwrap().to_string(),
                a["Value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn target_kind_chooses_nlb_by_default_or_gwlb() {
    let Some(t) = template_json() else {
        return;
    };
    let p = &t["Parameters"]["TargetKind"];
    assert_eq!(p["Default"], "NLB");
    assert_eq!(p["AllowedValues"], json!(["NLB", "GWLB"]));
    assert_eq!(
        t["Conditions"]["IsNlb"],
        json!({"Fn::Equals": [r("TargetKind"), "NLB"]})
    );
    assert_eq!(
        t["Conditions"]["IsGwlb"],
        json!({"Fn::Equals": [r("TargetKind"), "GWLB"]})
    );
    // Today's NLB resources keep their logical ids (an existing stack keeps them), and each
    // kind's own resources exist only with it.
    let resources = t["Resources"].as_object().unwrap();
    for (name, cond) in [
        ("LoadBalancer", "IsNlb"),
        ("TargetGroup", "IsNlb"),
        ("Listener", "IsNlb"),
        ("MirrorTarget", "IsNlb"),
        ("GatewayLoadBalancer", "IsGwlb"),
        ("GatewayTargetGroup", "IsGwlb"),
        ("GatewayListener", "IsGwlb"),
        ("EndpointService", "IsGwlb"),
        ("EndpointServicePermissions", "IsGwlb"),
        ("GatewayEndpoint", "IsGwlb"),
        ("GatewayMirrorTarget", "IsGwlb"),
    ] {
        assert_eq!(resources[name]["Condition"], cond, "{name}");
    }
}

/// The GENEVE target group: port 6081, the NLB's health check (HTTP /readyz on the same admin
/// port, same timing), 2-tuple stickiness so that both directions of a connection, whose
/// VXLAN source ports differ, reach the same receiver, and failover that moves a failed
/// receiver's flows.
#[test]
fn gwlb_target_group_is_geneve_6081_health_checked_like_the_nlb_and_sticky_on_two_tuples() {
    let Some(t) = template_json() else {
        return;
    };
    let nlb = &t["Resources"]["TargetGroup"];
    let gwlb = &t["Resources"]["GatewayTargetGroup"];
    let p = &gwlb["Properties"];
    assert_eq!(gwlb["Type"], "AWS::ElasticLoadBalancingV2::TargetGroup");
    assert_eq!(p["Protocol"], "GENEVE");
    assert_eq!(p["Port"], 6081);
    assert_eq!(p["TargetType"], "instance");
    assert_eq!(p["VpcId"], r("VpcId"));
    assert_eq!(p["HealthCheckProtocol"], "HTTP");
    assert_eq!(p["HealthCheckPath"], "/readyz");
    assert_eq!(p["HealthCheckPort"], "8080");
    for key in [
        "HealthCheckEnabled",
        "HealthCheckProtocol",
        "HealthCheckPort",
        "HealthCheckPath",
        "Matcher",
        "HealthCheckIntervalSeconds",
        "HealthCheckTimeoutSeconds",
        "HealthyThresholdCount",
        "UnhealthyThresholdCount",
    ] {
        assert_eq!(p[key], nlb["Properties"][key], "{key}");
    }
    let attrs = attributes(gwlb);
    assert_eq!(attrs["stickiness.enabled"], "true");
    assert_eq!(attrs["stickiness.type"], "source_ip_dest_ip");
    assert_eq!(attrs["target_failover.on_deregistration"], "rebalance");
    assert_eq!(attrs["target_failover.on_unhealthy"], "rebalance");
    assert_eq!(
        attrs["deregistration_delay.timeout_seconds"],
        attributes(nlb)["deregistration_delay.timeout_seconds"]
    );
}

/// Gateway Load Balancer -> listener -> endpoint service -> endpoint -> mirror target.
#[test]
fn gwlb_path_runs_from_the_mirror_target_to_the_receivers() {
    let Some(t) = template_json() else {
        return;
    };
    let res = &t["Resources"];
    let lb = &res["GatewayLoadBalancer"]["Properties"];
    assert_eq!(lb["Type"], "gateway");
    assert_eq!(lb["Subnets"], r("SubnetIds"));
    assert_eq!(
        lb["LoadBalancerAttributes"],
        json!([{"Key": "load_balancing.cross_zone.enabled", "Value": "true"}])
    );
    let listener = &res["GatewayListener"]["Properties"];
    assert_eq!(listener["LoadBalancerArn"], r("GatewayLoadBalancer"));
    assert!(listener.get("Protocol").is_none() && listener.get("Port").is_none());
    assert_eq!(
        listener["DefaultActions"],
        json!([{"Type": "forward", "TargetGroupArn": r("GatewayTargetGroup")}])
    );
    let service = &res["EndpointService"]["Properties"];
    assert_eq!(
        service["GatewayLoadBalancerArns"],
        json!([r("GatewayLoadBalancer")])
    );
    assert_eq!(service["AcceptanceRequired"], false);
    assert_eq!(
        res["EndpointServicePermissions"]["Properties"]["ServiceId"],
        r("EndpointService")
    );
    let endpoint = &res["GatewayEndpoint"]["Properties"];
    assert_eq!(endpoint["VpcEndpointType"], "GatewayLoadBalancer");
    assert_eq!(
        endpoint["ServiceName"],
        json!({"Fn::Sub": "com.amazonaws.vpce.${AWS::Region}.${EndpointService}"})
    );
    assert_eq!(
        endpoint["VpcId"],
        json!({"Fn::If": ["HasEndpointVpc", r("EndpointVpcId"), r("VpcId")]})
    );
    // One subnet, by default the first of the receivers'.
    assert_eq!(
        endpoint["SubnetIds"],
        json!([{"Fn::If": ["HasEndpointSubnet", r("EndpointSubnetId"),
                           {"Fn::Select": [0, r("SubnetIds")]}]}])
    );
    let target = &res["GatewayMirrorTarget"];
    assert_eq!(target["Type"], "AWS::EC2::TrafficMirrorTarget");
    assert_eq!(
        target["Properties"]["GatewayLoadBalancerEndpointId"],
        r("GatewayEndpoint")
    );
    assert!(target["Properties"].get("NetworkLoadBalancerArn").is_none());
    // EndpointSubnetId is required with EndpointVpcId, and both need GWLB.
    let rules = t["Rules"].as_object().unwrap();
    assert_eq!(
        rules["EndpointVpcNeedsSubnet"]["RuleCondition"],
        json!({"Fn::Not": [{"Fn::Equals": [r("EndpointVpcId"), ""]}]})
    );
    assert_eq!(
        rules["EndpointSettingsNeedGwlb"]["RuleCondition"],
        json!({"Fn::Equals": [r("TargetKind"), "NLB"]})
    );
}

/// For each kind: the mirror target the session sync creates sessions to (the function's
/// TARGET_ID, its IAM policy, the custom resource), the target group the receivers join, what
/// the security group admits, what the receivers listen on, the alarms' load balancer and the
/// outputs are that kind's own.
#[test]
fn each_target_kind_points_sessions_receivers_and_alarms_at_its_own_resources() {
    let Some(t) = template_json() else {
        return;
    };
    for (kind, target, tg, lb, port, listen, namespace) in [
        (
            "NLB",
            "MirrorTarget",
            "TargetGroup",
            "LoadBalancer",
            4789,
            "0.0.0.0:4789",
            "AWS/NetworkELB",
        ),
        (
            "GWLB",
            "GatewayMirrorTarget",
            "GatewayTargetGroup",
            "GatewayLoadBalancer",
            6081,
            "geneve://0.0.0.0:6081",
            "AWS/GatewayELB",
        ),
    ] {
        let res = section(&t, "Resources", kind);
        let outputs = section(&t, "Outputs", kind);
        assert!(res.contains_key(target) && res.contains_key(tg) && res.contains_key(lb));

        assert_eq!(
            res["SessionSync"]["Properties"]["TrafficMirrorTargetId"],
            r(target),
            "{kind}"
        );
        assert_eq!(
            res["SessionSyncFunction"]["Properties"]["Environment"]["Variables"]["TARGET_ID"],
            r(target),
            "{kind}"
        );
        let policy = res["SessionSyncRole"]["Properties"]["Policies"].to_string();
        let arn = "traffic-mirror-target/${Target}";
        assert_eq!(policy.matches(arn).count(), 2, "{kind}: {policy}");
        assert_eq!(
            policy
                .matches(&json!({ "Target": r(target) }).to_string())
                .count(),
            2,
            "{kind}: {policy}"
        );
        assert_eq!(
            outputs["TrafficMirrorTargetId"]["Value"],
            r(target),
            "{kind}"
        );

        assert_eq!(
            res["AutoScalingGroup"]["Properties"]["TargetGroupARNs"],
            json!([r(tg)]),
            "{kind}"
        );
        let health_port: u16 = res[tg]["Properties"]["HealthCheckPort"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let ingress = res["InstanceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
            .as_array()
            .unwrap();
        let rules: Vec<(String, Value, Value, Value)> = ingress
            .iter()
            .map(|i| {
                (
                    i["IpProtocol"].as_str().unwrap().to_string(),
                    i["FromPort"].clone(),
                    i["ToPort"].clone(),
                    i["CidrIp"].clone(),
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                ("udp".to_string(), json!(port), json!(port), r("VpcCidr")),
                (
                    "tcp".to_string(),
                    json!(health_port),
                    json!(health_port),
                    r("VpcCidr")
                ),
            ],
            "{kind}"
        );

        let user_data = &res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
            ["Fn::Sub"];
        assert!(
            user_data[0]
                .as_str()
                .unwrap()
                .contains("MIRROR_LISTEN=${Listen}\n")
        );
        assert_eq!(user_data[1]["Listen"], listen, "{kind}");

        for alarm in ["UnhealthyTargetsAlarm", "NoHealthyTargetsAlarm"] {
            let p = &res[alarm]["Properties"];
            assert_eq!(p["Namespace"], namespace, "{kind} {alarm}");
            assert_eq!(
                p["Dimensions"],
                json!([
                    {"Name": "LoadBalancer", "Value": {"Fn::GetAtt": [lb, "LoadBalancerFullName"]}},
                    {"Name": "TargetGroup", "Value": {"Fn::GetAtt": [tg, "TargetGroupFullName"]}},
                ]),
                "{kind} {alarm}"
            );
        }
    }
    let gwlb = section(&t, "Outputs", "GWLB");
    for output in [
        "GatewayLoadBalancerArn",
        "GatewayLoadBalancerEndpointId",
        "EndpointServiceId",
        "EndpointServiceName",
    ] {
        assert!(gwlb.contains_key(output), "GWLB lacks output {output}");
        assert!(!section(&t, "Outputs", "NLB").contains_key(output));
    }
}

/// No resource or output of a kind refers to a resource that kind leaves out (CloudFormation
/// refuses such a template for those parameters).
#[test]
fn no_target_kind_refers_to_a_resource_it_leaves_out() {
    let Some(t) = template_json() else {
        return;
    };
    let all: Vec<&String> = t["Resources"].as_object().unwrap().keys().collect();
    for (kind, _) in KINDS {
        let res = section(&t, "Resources", kind);
        let mut checked = 0;
        for (what, entries) in [
            ("resource", &res),
            ("output", &section(&t, "Outputs", kind)),
        ] {
            for (name, entry) in entries {
                let mut refs = Vec::new();
                references(entry, &mut refs);
                for target in refs.iter().filter(|n| all.contains(n)) {
                    assert!(
                        res.contains_key(target),
                        "{kind}: {what} {name} refers to {target}, which {kind} leaves out"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 40, "{kind}: only {checked} references");
    }
}
