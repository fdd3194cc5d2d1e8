//! `ringpost`: the mail transfer agent daemon.
use clap::Parser;
use ringpost_engine::config::{Config, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

/// ringpost: durable, thread-per-core SMTP relay.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Without it the embedded default is used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check a configuration file and exit: prints the offending key and line, exits non-zero.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Read a password on standard input and print its Argon2 hash for `[auth] users`.
    #[arg(long)]
    hash_password: bool,
}

fn main() -> ExitCode {
    // Warnings and errors are shown unless RUST_LOG says otherwise: spool corruption, failed
    // commits and dropped segments must never go unseen.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args = Args::parse();
    if args.hash_password {
        let mut pw = String::new();
        if std::io::stdin().read_line(&mut pw).is_err() || pw.trim_end_matches(['\r', '\n']).is_empty() {
            eprintln!("ringpost: give the password on standard input");
            return ExitCode::from(2);
        }
        println!("{}", ringpost_engine::smtp::auth::hash_password(pw.trim_end_matches(['\r', '\n'])));
        return ExitCode::SUCCESS;
    }
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    if let Some(path) = args.check_config {
        let checked = Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|c| ringpost_engine::dkim::Signers::load(&c.dkim).map(|_| c).map_err(|e| e.to_string()));
        return match checked {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::from(2)
            }
        };
    }
    let config = match &args.config {
        Some(p) => Config::load(p),
        None => Config::parse(DEFAULT_CONFIG),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringpost: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match ringpost_engine::runtime::run(config, args.config.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringpost: {e}");
            ExitCode::FAILURE
        }
    }
}
