//! The README's configuration section documents every flag and its environment variable.

use clap::CommandFactory;
use mirror_receiver::config::Cli;

#[test]
fn readme_documents_every_flag_and_env_var() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let cmd = Cli::command();
    let mut checked = 0;
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else {
                continue;
            };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let flag = format!("`--{long}`");
            assert!(readme.contains(&flag), "README lacks {flag}");
            if let Some(env) = arg.get_env() {
                let env = format!("`{}`", env.to_string_lossy());
                assert!(readme.contains(&env), "README lacks {env} of {flag}");
            }
            checked += 1;
        }
    }
    assert!(checked > 20);
    for cmd in [
        "cargo run --release -- replay samples/sample.vxlan.pcap",
        "cargo test",
    ] {
        assert!(readme.contains(cmd), "README lacks the command {cmd}");
    }
}
