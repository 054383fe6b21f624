use clap::Parser;
use mirror_receiver::config::{self, Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    // Flags, MIRROR_* variables, Akto aliases, the config file and defaults, layered once.
    let argv = match config::layered_argv(std::env::args_os().collect(), &env) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mirror-receiver: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
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

    let result = match &cli.command {
        Command::Run(args) => mirror_receiver::app::run(args, None),
        Command::Capture(args) => mirror_receiver::app::run(&args.run, Some(&args.live)),
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
    let live = args.live.interface.is_some().then_some(&args.live);
    let settings = args.run.check_with(live)?;
    args.run.check_environment(args.offline)?;
    if let Some(live) = &settings.live
        && !args.offline
    {
        mirror_receiver::ingest::live::interface_exists(&live.capture.interface)?;
    }
    println!("configuration is valid");
    Ok(())
}
