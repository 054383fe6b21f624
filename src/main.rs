use clap::{CommandFactory, FromArgMatches};
use mirror_receiver::config::{self, Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let argv = match config::apply_config_file(std::env::args_os().collect(), &env) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mirror-receiver: {e}");
            return ExitCode::from(2);
        }
    };
    let matches = Cli::command().get_matches_from(argv);
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if matches!(
        matches.value_source("log_level"),
        Some(clap::parser::ValueSource::DefaultValue)
    ) && let Some(level) = config::alias(&env, "AKTO_LOG_LEVEL")
    {
        cli.log_level = level;
    }
    let filter = match config::log_filter(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mirror-receiver: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().flatten_event(true).init(),
    }

    let sub = matches.subcommand().map(|(_, m)| m);
    let result = match (&mut cli.command, sub) {
        (Command::Run(args), Some(m))
        | (Command::Validate(config::ValidateArgs { run: args, .. }), Some(m)) => {
            config::apply_aliases(&mut args.pipeline, &mut args.output, m, &env)
                .map_err(anyhow::Error::from)
        }
        (Command::Replay(args), Some(m)) => {
            config::apply_aliases(&mut args.pipeline, &mut args.output, m, &env)
                .map_err(anyhow::Error::from)
        }
        _ => Ok(()),
    };
    if let Err(e) = result {
        eprintln!("mirror-receiver: {e}");
        return ExitCode::from(2);
    }
    let result = match &cli.command {
        Command::Run(args) => mirror_receiver::app::run(args),
        Command::Replay(args) => mirror_receiver::app::replay(args).map(|_| ()),
        Command::Validate(args) => validate(args),
        Command::Send(args) => mirror_receiver::app::send(args).map(|n| {
            eprintln!("mirror-receiver: sent {n} datagrams");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirror-receiver: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(args: &config::ValidateArgs) -> anyhow::Result<()> {
    args.run.check()?;
    args.run.check_environment(args.offline)?;
    println!("configuration is valid");
    Ok(())
}
