//! Unit tests of the mount options: parsing, checks, and the round trip to arguments.

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
    ] {
        let e = VolumeOptions::from_mount_options([bad]).unwrap_err();
        assert!(e.contains(named), "{bad}: {e}");
    }
    let many = vec!["debug"; 65];
    assert!(VolumeOptions::from_mount_options(many).is_err());
}

#[test]
fn options_round_trip_through_their_arguments() {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..500 {
        let mut a = MountArgs::new("s3://bucket/p/", "/mnt/x");
        let v = &mut a.volume;
        v.read_only = next() % 2 == 0;
        v.allow_other = next() % 2 == 0;
        v.debug = next() % 2 == 0;
        v.persist_metadata = next() % 2 == 0;
        v.uid = (next() % 2 == 0).then(|| next() as u32);
        v.gid = (next() % 2 == 0).then(|| next() as u32);
        v.file_mode = (next() % 0o7777) as u16;
        v.dir_mode = (next() % 0o7777) as u16;
        v.metadata_ttl = Duration::from_millis(next() % 100_000);
        v.part_size = (5 << 20) + next() % (1 << 30);
        v.max_prefetch = v.part_size + next() % (1 << 30);
        v.upload_concurrency = 1 + (next() % 64) as u16;
        v.max_threads = 1 + (next() % 64) as u16;
        v.request_timeout = 1 + next() % 3600;
        v.max_retries = (next() % 101) as u16;
        v.max_cache_size = 1 + next() % (1 << 40);
        v.memory_limit = 2 * v.part_size + next() % (1 << 30);
        v.rename_dir_limit = (next() % 100_000) as usize;
        a.store.region = (next() % 2 == 0).then(|| "eu-west-1".into());
        a.store.endpoint_url = (next() % 2 == 0).then(|| "http://127.0.0.1:9000".into());
        a.store.force_path_style = next() % 2 == 0;
        a.store.requester_pays = next() % 2 == 0;
        a.cache_dir = (next() % 2 == 0).then(|| "/var/cache/x".into());
        a.fuse_fd = (next() % 2 == 0).then_some(4);
        a.run_as = (next() % 2 == 0).then_some((65534, 65534));
        a.memory_capacity = (next() % 2 == 0).then_some(64 << 20);
        a.log_format = if next() % 2 == 0 {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        assert!(a.volume.validate().is_ok());
        assert_eq!(parse_mount(&a.to_args()), a);
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let v = VolumeOptions::default();
    assert_eq!(v.part_size, 8 << 20);
    assert_eq!(v.max_prefetch, 32 << 20);
    assert_eq!(v.memory_limit, 1 << 30);
    assert_eq!(v.metadata_ttl, Duration::from_secs(1));
    assert_eq!((v.file_mode, v.dir_mode), (0o644, 0o755));
    assert!(v.validate().is_ok());
}
