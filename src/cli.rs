//! Command-line parsing and the composition root: wires store → fs → fuse for `mount`, and
//! mounter, store and the CSI services for `csi`.

mod csi;
mod daemon;
mod harden;
mod keeper;
mod logging;
mod mount;
mod seccomp;

use clap::{Parser, Subcommand};

use pail::options::MountArgs;

/// Mount object-storage buckets as file systems.
#[derive(Debug, Parser)]
#[command(name = "pail", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a bucket (s3://, gs://, file://, memory://) at a directory.
    Mount(Box<MountArgs>),
    /// Run the CSI driver (node plugin and/or controller) on a unix socket.
    Csi(Box<csi::CsiArgs>),
    /// A mount process of the CSI driver: serves the mount its spec describes.
    #[command(hide = true)]
    MountWorker {
        /// The descriptor the spec is read from.
        #[arg(long, default_value_t = pail::options::SPEC_FD)]
        spec_fd: i32,
    },
    /// Holds a mount's FUSE connection (descriptor 4) for its node plugin.
    #[command(hide = true)]
    KeepConnection {
        /// The mount's user.
        #[arg(long)]
        uid: u32,
        /// The mount's group.
        #[arg(long)]
        gid: u32,
    },
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount(args) => mount::run(*args),
        Command::Csi(args) => csi::run(*args),
        Command::MountWorker { spec_fd } => mount::run_worker(spec_fd),
        Command::KeepConnection { uid, gid } => keeper::run(uid, gid),
    }
}
