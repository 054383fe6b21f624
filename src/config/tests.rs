use super::*;
use clap::{CommandFactory, Parser};
use std::collections::HashMap;

/// Layers `args` (with the process environment as clap sees it) and `alias_env` as the Akto
/// variables, then parses `run`'s settings.
fn parse(args: &[&str], alias_env: &[(&str, &str)]) -> Result<RunArgs, ConfigError> {
    let env: HashMap<String, String> = alias_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |k: &str| env.get(k).cloned();
    let argv = std::iter::once("mirror-receiver")
        .chain(args.iter().copied())
        .map(std::ffi::OsString::from)
        .collect();
    let argv = layered_argv(argv, &lookup)?;
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Run(a) => Ok(a),
        _ => unreachable!(),
    }
}

#[test]
fn defaults_are_documented_values() {
    let a = parse(&["run"], &[]).unwrap();
    assert!(a.listen.is_empty());
    let settings = a.check().unwrap();
    assert_eq!(settings.listeners, vec![DEFAULT_LISTEN]);
    assert_eq!(settings.listeners[0].to_string(), "vxlan://0.0.0.0:4789");
    assert!(settings.live.is_none());
    assert_eq!(a.output.topic, "akto.api.logs");
    assert_eq!(a.output.output, "-");
    assert_eq!(a.output.kafka_brokers, None);
    assert_eq!(a.pipeline.flow_idle_timeout, 30.0);
    assert_eq!(a.pipeline.max_body_bytes, 1 << 20);
    assert_eq!(a.pipeline.max_record_bytes, 1_000_000);
    assert_eq!(a.pipeline.account_id, "1000000");
}

#[test]
fn akto_aliases_fill_unset_settings() {
    let a = parse(
        &["run"],
        &[
            ("AKTO_KAFKA_BROKER_URL", "url:9092"),
            ("AKTO_KAFKA_BROKER_MAL", "mal:9092"),
            ("AKTO_TRAFFIC_BATCH_SIZE", "77"),
            ("AKTO_TRAFFIC_BATCH_TIME_SECS", "3"),
            ("TRAFFIC_INACTIVITY_THRESHOLD", "45"),
            ("TRAFFIC_MAX_ACTIVE_CONN", "1234"),
        ],
    )
    .unwrap();
    // AKTO_KAFKA_BROKER_MAL wins over AKTO_KAFKA_BROKER_URL.
    assert_eq!(a.output.kafka_brokers.as_deref(), Some("mal:9092"));
    assert_eq!(a.output.batch_size, 77);
    assert_eq!(a.output.batch_time, 3.0);
    assert_eq!(a.pipeline.flow_idle_timeout, 45.0);
    assert_eq!(a.pipeline.max_flows, 1234);
    let a = parse(&["run"], &[("AKTO_KAFKA_BROKER_URL", "url:9092")]).unwrap();
    assert_eq!(a.output.kafka_brokers.as_deref(), Some("url:9092"));
}

#[test]
fn flags_win_over_aliases() {
    let a = parse(
        &["run", "--kafka-brokers", "flag:9092", "--max-flows", "9"],
        &[
            ("AKTO_KAFKA_BROKER_MAL", "mal:9092"),
            ("TRAFFIC_MAX_ACTIVE_CONN", "1234"),
        ],
    )
    .unwrap();
    assert_eq!(a.output.kafka_brokers.as_deref(), Some("flag:9092"));
    assert_eq!(a.pipeline.max_flows, 9);
}

#[test]
fn bad_alias_values_name_the_variable() {
    let e = parse(&["run"], &[("TRAFFIC_MAX_ACTIVE_CONN", "lots")]).unwrap_err();
    assert_eq!(e.name, "TRAFFIC_MAX_ACTIVE_CONN");
    assert!(e.to_string().contains("lots"));
}

#[test]
fn invalid_values_are_rejected_with_the_setting_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--max-flows", "0"], "--max-flows"),
        (&["run", "--max-record-bytes", "10"], "--max-record-bytes"),
        (&["run", "--account-id", "acme"], "--account-id"),
        (&["run", "--flow-idle-timeout=-1"], "--flow-idle-timeout"),
        (&["run", "--reorder-timeout", "NaN"], "--reorder-timeout"),
    ];
    for (args, name) in cases {
        let a = parse(args, &[]).unwrap();
        let e = a.pipeline.to_config().unwrap_err();
        assert_eq!(&e.name, name, "{args:?}");
    }
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--kafka-brokers", " , "], "--kafka-brokers"),
        (&["run", "--batch-size", "0"], "--batch-size"),
        (&["run", "--batch-time", "1000"], "--batch-time"),
        (&["run", "--topic", ""], "--topic"),
        (&["run", "--shutdown-timeout=-3"], "--shutdown-timeout"),
        (&["run", "--shutdown-timeout", "inf"], "--shutdown-timeout"),
        (&["run", "--batch-time", "NaN"], "--batch-time"),
        (&["run", "--workers", "100000"], "--workers"),
        (&["run", "--recv-buffer", "10"], "--recv-buffer"),
    ];
    for (args, name) in cases {
        let a = parse(args, &[]).unwrap();
        assert_eq!(&a.check().err().expect("rejected").name, name, "{args:?}");
    }
}

#[test]
fn log_levels_accept_akto_spellings() {
    assert_eq!(log_filter("DEBUG").unwrap(), "debug");
    assert_eq!(log_filter("DBEUG").unwrap(), "debug");
    assert_eq!(log_filter("WARN").unwrap(), "warn");
    assert_eq!(log_filter("OFF").unwrap(), "off");
    assert_eq!(log_filter("loud").unwrap_err().name, "--log-level");
}

#[test]
fn every_flag_has_a_mirror_env_var() {
    let cmd = Cli::command();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            if arg.is_positional() || ["help", "version"].contains(&arg.get_id().as_str()) {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(
                env.as_deref().is_some_and(|e| e.starts_with("MIRROR_")),
                "{} --{} has no MIRROR_* variable",
                sub.get_name(),
                arg.get_id()
            );
        }
    }
}

#[test]
fn blank_akto_aliases_count_as_unset() {
    // A blank AKTO_KAFKA_BROKER_MAL neither hides the config file's brokers nor sets any.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receiver.toml");
    std::fs::write(&file, "kafka-brokers = \"file:9092\"\nmax-flows = 7\n").unwrap();
    let env = |k: &str| match k {
        "AKTO_KAFKA_BROKER_MAL" => Some("  ".to_owned()),
        "TRAFFIC_MAX_ACTIVE_CONN" => Some(String::new()),
        _ => None,
    };
    let argv = ["mirror-receiver", "run", "--config", file.to_str().unwrap()]
        .map(std::ffi::OsString::from)
        .to_vec();
    let argv = layered_argv(argv, &env).unwrap();
    let Command::Run(a) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    assert_eq!(a.output.kafka_brokers.as_deref(), Some("file:9092"));
    assert_eq!(a.pipeline.max_flows, 7);
}

#[test]
fn every_alias_names_a_setting_of_run() {
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").unwrap();
    for (id, names, _) in ALIASES {
        let found = run
            .get_arguments()
            .chain(cmd.get_arguments())
            .any(|a| a.get_id().as_str() == *id && a.get_long() == Some(&id.replace('_', "-")));
        assert!(found, "{id} ({names:?}) is not a setting of run");
        // The help names the aliases (log_level's is in the README alone).
        let arg = run.get_arguments().find(|a| a.get_id().as_str() == *id);
        if let Some(help) = arg.and_then(|a| a.get_help()) {
            for name in *names {
                assert!(
                    help.to_string().contains(name),
                    "--{id}'s help omits {name}"
                );
            }
        }
    }
}

#[test]
fn akto_booleans_and_megabytes_are_converted() {
    let a = parse(
        &["run"],
        &[
            ("AKTO_IGNORE_IP_TRAFFIC", "TRUE"),
            ("AKTO_IGNORE_CLOUD_METADATA_CALLS", "yes"),
            ("AKTO_MEM_THRESH_RESTART", "64"),
        ],
    )
    .unwrap();
    assert!(a.pipeline.ignore_ip_traffic);
    assert!(
        !a.pipeline.ignore_cloud_metadata_calls,
        "only \"true\" is true"
    );
    assert_eq!(a.pipeline.memory_budget, 64 << 20);
    // TRAFFIC_BUFFER_THRESHOLD comes first.
    let a = parse(
        &["run"],
        &[
            ("TRAFFIC_BUFFER_THRESHOLD", "32"),
            ("AKTO_MEM_THRESH_RESTART", "64"),
        ],
    )
    .unwrap();
    assert_eq!(a.pipeline.memory_budget, 32 << 20);
    let e = parse(&["run"], &[("AKTO_MEM_THRESH_RESTART", "1.5")]).unwrap_err();
    assert_eq!(e.name, "AKTO_MEM_THRESH_RESTART");
}

#[test]
fn an_alias_wins_over_the_config_file_and_a_false_one_still_hides_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receiver.toml");
    std::fs::write(
        &file,
        "max-flows = 7\nignore-ip-traffic = true\nlog-level = \"error\"\n",
    )
    .unwrap();
    let env = |k: &str| match k {
        "TRAFFIC_MAX_ACTIVE_CONN" => Some("11".to_owned()),
        "AKTO_IGNORE_IP_TRAFFIC" => Some("false".to_owned()),
        "AKTO_LOG_LEVEL" => Some("DBEUG".to_owned()),
        _ => None,
    };
    let argv = ["mirror-receiver", "run", "--config", file.to_str().unwrap()]
        .map(std::ffi::OsString::from)
        .to_vec();
    let cli = Cli::try_parse_from(layered_argv(argv, &env).unwrap()).unwrap();
    assert_eq!(
        cli.log_level, "DBEUG",
        "a global setting layers the same way"
    );
    let Command::Run(a) = cli.command else {
        unreachable!()
    };
    assert_eq!(a.pipeline.max_flows, 11);
    assert!(!a.pipeline.ignore_ip_traffic);
}

#[test]
fn the_flags_defaults_are_the_stages_defaults() {
    let a = parse(&["run"], &[]).unwrap();
    let (pipeline, record) = a.pipeline.to_config().unwrap();
    // The daemon bounds buffered bytes by default; the library alone does not.
    let flow = FlowConfig {
        memory_budget: 1 << 30,
        ..FlowConfig::default()
    };
    assert_eq!(
        pipeline,
        PipelineConfig {
            flow,
            http: HttpConfig::default(),
        }
    );
    assert_eq!(record, RecordConfig::default());
}

#[test]
fn listeners_name_their_encapsulation() {
    let a = parse(
        &[
            "run",
            "--listen",
            "geneve://0.0.0.0:6081",
            "--listen",
            "127.0.0.1:4789",
        ],
        &[],
    )
    .unwrap();
    let l = a.check().unwrap().listeners;
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].encap, crate::wire::Encapsulation::Geneve);
    assert_eq!(l[0].addr, "0.0.0.0:6081".parse().unwrap());
    assert_eq!(l[1].encap, crate::wire::Encapsulation::Vxlan);
    assert_eq!(l[1].to_string(), "vxlan://127.0.0.1:4789");
    let l: Listener = "geneve://[::1]:6081".parse().unwrap();
    assert_eq!(l.addr, "[::1]:6081".parse().unwrap());
    for bad in ["udp://0.0.0.0:1", "geneve://nowhere", "4789"] {
        let e = bad.parse::<Listener>().unwrap_err();
        assert!(
            e.contains("unknown encapsulation") || e.contains("not an address"),
            "{bad}: {e}"
        );
    }
    let twice = parse(
        &[
            "run",
            "--listen",
            "0.0.0.0:4789",
            "--listen",
            "vxlan://0.0.0.0:4789",
        ],
        &[],
    )
    .unwrap();
    let e = twice.check().err().unwrap();
    assert!(e.to_string().contains("--listen"), "{e}");
}

#[test]
fn capture_checks_its_interface_and_filter() {
    let parse_capture = |args: &[&str]| {
        let argv: Vec<std::ffi::OsString> = std::iter::once("mirror-receiver")
            .chain(std::iter::once("capture"))
            .chain(args.iter().copied())
            .map(std::ffi::OsString::from)
            .collect();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Capture(c) => c,
            _ => unreachable!(),
        }
    };
    let c = parse_capture(&[
        "--interface",
        "eth0",
        "--capture-filter",
        "tcp port 80",
        "--vni",
        "7",
    ]);
    let s = c.run.check_with(Some(&c.live)).unwrap();
    // capture listens on UDP only where told.
    assert!(s.listeners.is_empty());
    let live = s.live.unwrap();
    assert_eq!(live.capture.interface, "eth0");
    assert_eq!(live.capture.filter.as_deref(), Some("tcp port 80"));
    assert_eq!(
        (live.vni, live.capture.buffer, live.capture.promiscuous),
        (7, 64 << 20, false)
    );

    let c = parse_capture(&[]);
    let e = c.run.check_with(Some(&c.live)).err().unwrap();
    assert!(e.to_string().contains("--interface"), "{e}");
    let c = parse_capture(&["--interface", "eth0", "--capture-filter", "tcp prot 80"]);
    let e = c.run.check_with(Some(&c.live)).err().unwrap();
    assert!(e.to_string().contains("--capture-filter"), "{e}");
    let c = parse_capture(&["--interface", "a-name-that-is-too-long"]);
    assert!(c.run.check_with(Some(&c.live)).is_err());
    let c = parse_capture(&["--interface", "eth0", "--capture-buffer", "1000"]);
    let e = c.run.check_with(Some(&c.live)).err().unwrap();
    assert!(e.to_string().contains("--capture-buffer"), "{e}");
    let c = parse_capture(&["--interface", "eth0", "--listen", "geneve://0.0.0.0:6081"]);
    let s = c.run.check_with(Some(&c.live)).unwrap();
    assert_eq!(s.listeners.len(), 1);
}
