//! The `pail` binary: `pail mount` (a bucket as a file system) and `pail csi` (the CSI driver).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pail: {e:#}");
            ExitCode::FAILURE
        }
    }
}
