use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ExitCode::from(tidegate::cli::main(tidegate::cli::Cli::parse()))
}
