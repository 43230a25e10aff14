//! Parsing option values (sizes, modes, durations) and a volume's `mountOptions` text
//! (`"uid=1000 read-only"`, `"--uid 1000,--read-only"`, PV `mountOptions` entries) into
//! [`VolumeOptions`], with clap doing the work so that a flag is defined once.

use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use super::VolumeOptions;

/// Parse an octal mode such as `0644`.
pub fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0644"))
}

/// Parse `uid:gid`.
pub fn parse_ids(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not uid:gid"))?;
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{s:?} is not uid:gid"))
    };
    Ok((num(u)?, num(g)?))
}

/// A KMS key id or ARN: `[A-Za-z0-9:/_.-]`, at most 256 characters.
pub fn parse_word(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 256
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":/_.-+=,@".contains(c))
    {
        return Err(format!(
            "{s:?} is not a key id, ARN, audience or account name (letters, digits, :/_.-+=,@)"
        ));
    }
    Ok(s.to_string())
}

/// A storage class name: `[A-Z_]`, at most 64 characters.
pub fn parse_storage_class(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return Err(format!("{s:?} is not a storage class such as STANDARD_IA"));
    }
    Ok(s.to_string())
}

/// Parse a metadata TTL: seconds, `minimal` (0) or `indefinite`.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    match s {
        "minimal" => Ok(Duration::ZERO),
        "indefinite" => Ok(Duration::from_secs(100 * 365 * 24 * 3600)),
        _ => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 1e10)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                format!("{s:?} is not a number of seconds, \"minimal\" or \"indefinite\"")
            }),
    }
}

/// Parse a size such as `8M`, `64Mi`, `64MiB`, `1G` or `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 8M"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1 << 10,
        "m" | "mb" | "mi" | "mib" => 1 << 20,
        "g" | "gb" | "gi" | "gib" => 1 << 30,
        "t" | "tb" | "ti" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// [`parse_size`], or `0`/`off` for a feature a size turns on.
pub fn parse_size_or_off(s: &str) -> Result<u64, String> {
    match s.trim() {
        "0" | "off" => Ok(0),
        _ => parse_size(s),
    }
}

/// The node's memory (`MemTotal` of /proc/meminfo, which no container namespaces), or
/// `None` when it cannot be read.
pub fn node_memory() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?
        .checked_mul(1024)
}

/// `--direct-first-read`: [`parse_size_or_off`], or `auto`: half the node's memory (off
/// when that cannot be read). A file that large rarely stays cached beside what the node's
/// pods hold, and a sequential re-read of a file larger than the memory left gets nothing
/// from the page cache (the read evicts its own start before the next reaches it), so its
/// first read skips the cache and the copies into it.
pub fn parse_direct_first_read(s: &str) -> Result<u64, String> {
    match s.trim() {
        "auto" => Ok(node_memory().map_or(0, |m| m / 2)),
        _ => parse_size_or_off(s),
    }
}

/// `VolumeOptions` alone, as a command line without a program name.
#[derive(Parser)]
#[command(
    no_binary_name = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
struct VolumeLine {
    #[command(flatten)]
    opts: VolumeOptions,
}

/// The long names of the options a volume may set.
pub fn volume_option_names() -> Vec<String> {
    VolumeLine::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// Most characters of one `mountOptions` token.
const MAX_TOKEN: usize = 128;
/// Most tokens in all of a volume's `mountOptions`.
const MAX_TOKENS: usize = 64;

impl VolumeOptions {
    /// Parse `--flag[=value]` arguments (and check the options together).
    pub fn parse_from<I, T>(args: I) -> Result<VolumeOptions, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = VolumeLine::command()
            .try_get_matches_from(args)
            .map_err(|e| clap_message(&e))?;
        let line = VolumeLine::from_arg_matches(&matches).map_err(|e| clap_message(&e))?;
        Ok(line.opts)
    }

    /// Parse a volume's mount options: items split at commas and blanks into tokens, each a
    /// `name`, `name=value` or `--name[=value]`, or the value of the name before it.
    pub fn from_mount_options<'a>(
        items: impl IntoIterator<Item = &'a str>,
    ) -> Result<VolumeOptions, String> {
        let names = volume_option_names();
        let mut args = Vec::new();
        for item in items {
            for token in item
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
            {
                if args.len() == MAX_TOKENS {
                    return Err(format!("at most {MAX_TOKENS} options"));
                }
                if token.len() > MAX_TOKEN
                    || !token
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._=-".contains(c))
                {
                    return Err(format!(
                        "bad option {:?}: options are words of [A-Za-z0-9._-], name=value",
                        token.chars().take(MAX_TOKEN).collect::<String>()
                    ));
                }
                let bare = token.trim_start_matches('-');
                let name = bare.split_once('=').map_or(bare, |(n, _)| n);
                if names.iter().any(|n| n == name) {
                    args.push(format!("--{bare}"));
                } else if token.starts_with('-') || token.contains('=') || args.is_empty() {
                    return Err(format!(
                        "{name:?} is not an option a volume may set (allowed: {})",
                        names.join(", ")
                    ));
                } else {
                    // The value of the option before it ("uid 1000").
                    args.push(token.to_string());
                }
            }
        }
        let opts = VolumeOptions::parse_from(args)?;
        opts.validate()?;
        Ok(opts)
    }
}

/// clap's message on one line, without its "error: " prefix and usage hints.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").trim().to_string()
}
