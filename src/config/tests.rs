use super::*;
use clap::{CommandFactory, FromArgMatches};
use std::collections::HashMap;

/// Parses `args` with `flag_env` as the process environment seen by clap, then applies Akto
/// aliases from `alias_env`.
fn parse(args: &[&str], alias_env: &[(&str, &str)]) -> Result<RunArgs, ConfigError> {
    let matches = Cli::command()
        .try_get_matches_from(std::iter::once("mirror-receiver").chain(args.iter().copied()))
        .unwrap();
    let mut cli = Cli::from_arg_matches(&matches).unwrap();
    let sub = matches.subcommand().unwrap().1;
    let env: HashMap<String, String> = alias_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |k: &str| env.get(k).cloned();
    match &mut cli.command {
        Command::Run(a) => {
            apply_aliases(&mut a.pipeline, &mut a.output, sub, &lookup)?;
            Ok(a.clone())
        }
        _ => unreachable!(),
    }
}

#[test]
fn defaults_are_documented_values() {
    let a = parse(&["run"], &[]).unwrap();
    assert_eq!(a.listen, "0.0.0.0:4789".parse().unwrap());
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
        assert_eq!(&a.check().unwrap_err().name, name, "{args:?}");
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
    let argv = apply_config_file(argv, &env).unwrap();
    let matches = Cli::command().try_get_matches_from(argv).unwrap();
    let mut cli = Cli::from_arg_matches(&matches).unwrap();
    let sub = matches.subcommand().unwrap().1;
    let Command::Run(a) = &mut cli.command else {
        unreachable!()
    };
    apply_aliases(&mut a.pipeline, &mut a.output, sub, &env).unwrap();
    assert_eq!(a.output.kafka_brokers.as_deref(), Some("file:9092"));
    assert_eq!(a.pipeline.max_flows, 7);
}
