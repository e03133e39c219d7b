use std::process::ExitCode;

use clap::Parser;

// glibc's malloc spent about a fifth of the server's user time on the tile
// path (perf, 21,845 random tiles); mimalloc's thread-local free lists do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tessera::config::{Cli, Command, Config, ConfigArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ConfigArgs::default())) {
        Command::Check(args) => match tessera::server::check(&args) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tessera: configuration refused: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Token(args) => match tessera::server::token(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tessera: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve(args) => run(&args, |config| {
            // Before any thread exists: this unsets LISTEN_PID and LISTEN_FDS.
            let inherited = tessera::systemd::inherited_listener()?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(tessera::server::serve(config, inherited))
        }),
        Command::Doctor(args) => run(&args, |config| {
            print!("{}", tessera::server::doctor(&config)?);
            Ok(())
        }),
        Command::Index(args) => run(&args, |config| {
            let summary = tessera::server::index(&config)?;
            println!("{summary}");
            Ok(())
        }),
    }
}

fn run(args: &ConfigArgs, body: impl FnOnce(Config) -> anyhow::Result<()>) -> ExitCode {
    tessera::logging::init();
    let config = match Config::load(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tessera: configuration refused: {e}");
            return ExitCode::from(2);
        }
    };
    match body(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tessera: {e:#}");
            ExitCode::FAILURE
        }
    }
}
