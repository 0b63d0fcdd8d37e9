//! The `keyguard` binary: parses the command line, sets up logging and reports errors at the
//! edge.

use clap::Parser;
use keyguard::cli::{Cli, LogFormat};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format() {
        LogFormat::Json => builder.with_writer(std::io::stderr).json().init(),
        // Escaped: no caller-supplied newline or ESC reaches the log as itself (and so no
        // colours either, whose ESC sequences would be escaped too).
        LogFormat::Text => builder
            .with_writer(keyguard::log_escape::EscapedStderr)
            .with_ansi(false)
            .init(),
    }
    match cli.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyguard: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
