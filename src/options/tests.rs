//! Unit tests of the mount options: parsing, checks, credential flags and help.

use std::time::Duration;

use clap::Parser;

use super::*;

#[derive(Parser)]
#[command(no_binary_name = true)]
struct Line {
    #[command(flatten)]
    args: MountArgs,
}

fn parse_mount(args: &[String]) -> MountArgs {
    Line::try_parse_from(args).unwrap().args
}

#[test]
fn sizes_modes_and_ttls_take_their_units() {
    assert_eq!(parse_size("8M").unwrap(), 8 << 20);
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("8X").unwrap_err().contains("8X"));
    assert!(parse_size("0").is_err());
    assert!(parse_size("99999999999999T").is_err());
    assert_eq!(parse_size_or_off("off").unwrap(), 0);
    assert_eq!(parse_size_or_off("0").unwrap(), 0);
    assert_eq!(parse_size_or_off("64M").unwrap(), 64 << 20);
    assert!(parse_size_or_off("-1").unwrap_err().contains("-1"));
    assert_eq!(parse_mode("0644").unwrap(), 0o644);
    assert_eq!(parse_mode("755").unwrap(), 0o755);
    assert!(parse_mode("0999").is_err());
    assert_eq!(parse_ttl("minimal").unwrap(), Duration::ZERO);
    assert_eq!(parse_ttl("2.5").unwrap(), Duration::from_millis(2500));
    assert!(parse_ttl("-1").is_err());
    assert!(parse_ttl("NaN").is_err());
}

#[test]
fn mount_options_accept_every_spelling_and_name_what_they_refuse() {
    let o = VolumeOptions::from_mount_options([
        "uid=1000 --metadata-ttl 5,read-only",
        "--part-size=16M",
        "max-threads 4",
    ])
    .unwrap();
    assert_eq!(o.uid, Some(1000));
    assert_eq!(o.metadata_ttl, Duration::from_secs(5));
    assert!(o.read_only);
    assert_eq!(o.part_size, 16 << 20);
    assert_eq!(o.max_threads, 4);
    let d = VolumeOptions::from_mount_options(["direct-first-read=64M"]).unwrap();
    assert_eq!(d.direct_first_read, 64 << 20);
    for off in ["direct-first-read=off", "direct-first-read=0"] {
        let d = VolumeOptions::from_mount_options([off]).unwrap();
        assert_eq!(d.direct_first_read, 0, "{off}: the page cache always");
    }
    let auto = VolumeOptions::from_mount_options(["direct-first-read=auto"]).unwrap();
    assert_eq!(
        auto.direct_first_read,
        VolumeOptions::default().direct_first_read
    );
    let k = VolumeOptions::from_mount_options(["read-ahead=0"]).unwrap();
    assert_eq!(k.read_ahead, 0, "documented: the kernel's own read-ahead");
    for (bad, named) in [
        ("part-size=1K", "part-size"),
        ("cache-dir=/etc", "cache-dir"),
        ("allow-root", "allow-root"),
        ("uid=1;rm", "uid=1;rm"),
        ("upload-concurrency=0", "upload-concurrency"),
        ("max-prefetch=5M", "max-prefetch"),
        ("memory-limit=9M", "memory-limit"),
        ("fuse-fd=3", "fuse-fd"),
        ("endpoint-url=http", "endpoint-url"),
        ("uid", "uid"),
        ("read-only=yes", "read-only"),
        ("direct-first-read=64Q", "64Q"),
        ("direct-first-read=99999999999T", "direct-first-read"),
        ("direct-first-read=automatic", "automatic"),
        ("direct-first-read=auto\n64M", "64M"),
    ] {
        let e = VolumeOptions::from_mount_options([bad]).unwrap_err();
        assert!(e.contains(named), "{bad}: {e}");
    }
    let many = vec!["debug"; 65];
    assert!(VolumeOptions::from_mount_options(many).is_err());
}

#[test]
fn credential_flags_name_one_source_at_most() {
    let parse = |args: &[&str]| {
        let mut all = vec!["s3://b/".to_string(), "/mnt".to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let a = parse_mount(&all);
        a.credentials.auth(&a.store)
    };
    assert_eq!(parse(&[]).unwrap(), Auth::Chain);
    assert_eq!(parse(&["--no-sign-request"]).unwrap(), Auth::Anonymous);
    assert_eq!(
        parse(&["--profile", "work"]).unwrap(),
        Auth::Profile {
            name: "work".into()
        }
    );
    assert_eq!(
        parse(&["--service-account-file", "/k.json"]).unwrap(),
        Auth::GcsKeyFile {
            path: "/k.json".into()
        }
    );
    assert_eq!(
        parse(&[
            "--web-identity-token-file",
            "/t",
            "--role-arn",
            "arn:aws:iam::1:role/r"
        ])
        .unwrap(),
        Auth::Token { file: "/t".into() }
    );
    for bad in [
        &["--no-sign-request", "--profile", "p"][..],
        &["--web-identity-token-file", "/t"],
        &["--role-arn", "arn:aws:iam::1:role/r"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn internal_fields_are_not_flags_and_help_is_grouped() {
    use clap::CommandFactory;
    let mut cmd = Line::command();
    let help = cmd.render_long_help().to_string();
    for internal in [
        "--fuse-fd",
        "--resume",
        "--run-as",
        "--metrics-file",
        "--memory-capacity",
        "--journal",
    ] {
        assert!(!help.contains(internal), "{internal} in the help");
    }
    for heading in [
        "Store:",
        "Credentials:",
        "Permissions:",
        "Caching and performance:",
        "Logging:",
    ] {
        assert!(help.contains(heading), "no {heading} heading in:\n{help}");
    }
    assert!(Line::try_parse_from(["s3://b/", "/m", "--fuse-fd", "4"]).is_err());
}

#[test]
fn the_memory_limit_holds_the_process_and_its_threads() {
    let v = VolumeOptions::from_mount_options(["memory-limit=64M"]).unwrap();
    assert_eq!(v.buffer_budget(), (64 << 20) - v.overhead());
    assert!(v.buffer_budget() >= 2 * v.part_size);
    let e = VolumeOptions::from_mount_options(["memory-limit=32M max-threads=8"]).unwrap_err();
    assert!(
        e.contains("memory-limit") && e.contains("FUSE threads"),
        "{e}"
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    let v = VolumeOptions::default();
    assert_eq!(v.part_size, 8 << 20);
    assert_eq!(v.max_prefetch, 32 << 20);
    assert_eq!(v.memory_limit, 1 << 30);
    assert_eq!(v.metadata_ttl, Duration::from_secs(1));
    let half = super::node_memory().expect("/proc/meminfo names MemTotal") / 2;
    assert!(half > 0);
    assert_eq!(
        v.direct_first_read, half,
        "by default a file of half the node's memory or more skips the page cache on its first read"
    );
    assert_eq!((v.file_mode, v.dir_mode), (0o644, 0o755));
    assert!(v.validate().is_ok());
}
