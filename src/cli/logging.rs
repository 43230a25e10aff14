//! Logging set-up: text or JSON lines on stderr (or a file), level from `--debug`/`RUST_LOG`.

use std::path::Path;

use pail::options::LogFormat;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber.
pub fn init(format: LogFormat, debug: bool, file: Option<&Path>) -> anyhow::Result<()> {
    // fuser warns about calls the kernel merely probes (xattrs, ioctl) and about unmounting
    // a mount that is already gone: noise for users, shown with --debug.
    let default = if debug {
        "pail=debug,info"
    } else {
        "pail=info,fuser=error,warn"
    };
    let filter = EnvFilter::try_from_env("PAIL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("log file {}: {e}", path.display()))?;
            Box::new(move || Box::new(f.try_clone().expect("clone log file")))
        }
        None => Box::new(|| Box::new(std::io::stderr())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("logging: {e}"))
}
