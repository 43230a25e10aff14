//! Unit tests of the node cache's plugin side.
use super::*;
use std::io::{Seek, Write};

fn peer(group: &str, uid: u32) -> Peer {
    Peer {
        namespace: "ns".into(),
        group: group.into(),
        uid,
        target: PathBuf::from("/mnt"),
    }
}

fn sums(data: &[u8]) -> Vec<u32> {
    data.chunks(BLOCK as usize).map(crc).collect()
}

/// A file holding `data`, as a mount offers it.
fn offered(data: &[u8]) -> OwnedFd {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(data).unwrap();
    f.rewind().unwrap();
    f.into()
}

fn md5_etag(data: &[u8]) -> String {
    format!("\"{}\"", hex(&md5::Md5::digest(data)))
}

fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_all(f: &std::fs::File) -> Vec<u8> {
    let mut out = vec![0u8; f.metadata().unwrap().len() as usize];
    f.read_exact_at(&mut out, 0).unwrap();
    out
}

/// The copy a lookup gave, if it gave one.
fn copy(got: Option<Got>) -> Option<(std::fs::File, Vec<u32>, bool)> {
    match got? {
        Got::Copy(f, s, verified) => Some((f, s, verified)),
        Got::Prove(_) => None,
    }
}

fn challenge(got: Option<Got>) -> Challenge {
    match got {
        Some(Got::Prove(c)) => c,
        other => panic!("no challenge: {other:?}"),
    }
}

fn cache(dir: &Path, max: u64) -> Arc<NodeCache> {
    // Offers come from temporary files: no device bound in these tests.
    let c = NodeCache::open(dir, max, Path::new("/nonexistent")).unwrap();
    assert!(c.offer_dev.is_none());
    c
}

#[test]
fn a_copy_is_served_to_its_identity_and_to_another_only_when_it_matches_the_md5_etag() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir.path().join("c"), 64 << 20);
    let data = body(3 * BLOCK as usize + 5, 1);
    let a = peer("a", 0);
    // An opaque ETag (multipart): kept for its own identity only.
    assert!(c.offer(
        &a,
        "k".into(),
        "\"x-2\"".into(),
        data.len() as u64,
        sums(&data),
        offered(&data)
    ));
    c.settle();
    let (f, s, verified) = copy(c.get(&a, "k", "\"x-2\"", data.len() as u64, None)).unwrap();
    assert_eq!(
        (read_all(&f), s, verified),
        (data.clone(), sums(&data), true)
    );
    assert!(
        c.get(&peer("b", 0), "k", "\"x-2\"", data.len() as u64, None)
            .is_none()
    );
    assert!(
        c.get(&a, "k", "\"other\"", data.len() as u64, None)
            .is_none(),
        "another version"
    );
    // A plain MD5 ETag that matches: another identity gets it once it proves it can read
    // the object (the bytes of a random range, with the plugin's nonce).
    let etag = md5_etag(&data);
    assert!(c.offer(
        &a,
        "m".into(),
        etag.clone(),
        data.len() as u64,
        sums(&data),
        offered(&data)
    ));
    c.settle();
    let b = peer("b", 7);
    let n = data.len() as u64;
    let ch = challenge(c.get(&b, "m", &etag, n, None));
    assert!(ch.len == CHALLENGE && ch.offset + ch.len <= n);
    let range = ch.offset as usize..(ch.offset + ch.len) as usize;
    // Wrong bytes: nothing, and the challenge is spent.
    let mut wrong = data[range.clone()].to_vec();
    wrong[0] ^= 1;
    let guess = super::super::proof(&ch.nonce, &wrong);
    assert!(c.get(&b, "m", &etag, n, Some(&guess)).is_none());
    let right = super::super::proof(&ch.nonce, &data[range.clone()]);
    assert!(
        copy(c.get(&b, "m", &etag, n, Some(&right))).is_none(),
        "a spent challenge is not answered twice"
    );
    // A fresh challenge, answered right: the copy.
    let ch = challenge(c.get(&b, "m", &etag, n, None));
    let range = ch.offset as usize..(ch.offset + ch.len) as usize;
    let right = super::super::proof(&ch.nonce, &data[range]);
    // Another uid cannot use b's challenge.
    assert!(copy(c.get(&peer("b", 8), "m", &etag, n, Some(&right))).is_none());
    let ch = challenge(c.get(&b, "m", &etag, n, None));
    let range = ch.offset as usize..(ch.offset + ch.len) as usize;
    let right = super::super::proof(&ch.nonce, &data[range]);
    let (f, _, _) = copy(c.get(&b, "m", &etag, n, Some(&right))).unwrap();
    assert_eq!(read_all(&f), data);
    // Challenges land on random ranges.
    let offsets: std::collections::HashSet<u64> = (0..8)
        .map(|_| challenge(c.get(&b, "m", &etag, n, None)).offset)
        .collect();
    assert!(offsets.len() > 1);
    // Bytes that do not match the ETag they claim stay with their own identity.
    let lie = md5_etag(b"something else");
    assert!(c.offer(
        &a,
        "l".into(),
        lie.clone(),
        data.len() as u64,
        sums(&data),
        offered(&data)
    ));
    c.settle();
    assert!(copy(c.get(&a, "l", &lie, data.len() as u64, None)).is_some());
    assert!(
        c.get(&peer("b", 0), "l", &lie, data.len() as u64, None)
            .is_none()
    );
}

#[test]
fn a_copy_damaged_on_disk_is_dropped_when_read_back_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let c = cache(&path, 64 << 20);
    let data = body(2 * BLOCK as usize + 3, 4);
    let a = peer("a", 0);
    let n = data.len() as u64;
    assert!(c.offer(&a, "k".into(), "e".into(), n, sums(&data), offered(&data)));
    c.settle();
    let id = NodeCache::id("ns", "k", "e", n);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path.join(&id))
        .unwrap()
        .write_at(b"?", BLOCK + 1)
        .unwrap();
    assert!(
        c.get(&a, "k", "e", n, None).is_none(),
        "failed when read back"
    );
    assert!(c.is_empty() && !path.join(&id).exists());
}

#[test]
fn an_offer_that_fails_its_checksums_or_is_not_the_mounts_own_plain_file_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir.path().join("c"), 64 << 20);
    let data = body(2 * BLOCK as usize, 2);
    let a = peer("a", 0);
    let mut bad = sums(&data);
    bad[1] ^= 1;
    assert!(c.offer(
        &a,
        "k".into(),
        "e".into(),
        data.len() as u64,
        bad,
        offered(&data)
    ));
    c.settle();
    assert!(
        c.get(&a, "k", "e", data.len() as u64, None).is_none(),
        "a block failed its sum"
    );
    assert!(
        !c.offer(
            &peer("a", 4242),
            "k".into(),
            "e".into(),
            data.len() as u64,
            sums(&data),
            offered(&data)
        ),
        "a file owned by another user"
    );
    let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(
        !c.offer(
            &a,
            "k".into(),
            "e".into(),
            data.len() as u64,
            sums(&data),
            r.into()
        ),
        "not a regular file"
    );
    assert!(
        !c.offer(
            &a,
            "k".into(),
            "e".into(),
            data.len() as u64 + 1,
            sums(&data),
            offered(&data)
        ),
        "shorter than claimed"
    );
    assert!(c.is_empty());
}

#[test]
fn copies_stay_within_the_size_are_evicted_oldest_first_and_outlive_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let c = cache(&path, 5 * BLOCK);
    let a = peer("a", 0);
    for i in 0..4u8 {
        let data = body(2 * BLOCK as usize, i);
        assert!(c.offer(
            &a,
            format!("k{i}"),
            "e".into(),
            data.len() as u64,
            sums(&data),
            offered(&data)
        ));
        c.settle();
        assert!(c.used() <= 5 * BLOCK);
        // k0 stays in use.
        let _ = c.get(&a, "k0", "e", 2 * BLOCK, None);
    }
    assert!(
        c.get(&a, "k0", "e", 2 * BLOCK, None).is_some(),
        "in use, kept"
    );
    assert!(
        c.get(&a, "k1", "e", 2 * BLOCK, None).is_none(),
        "the least recently used went"
    );
    assert!(c.get(&a, "k3", "e", 2 * BLOCK, None).is_some());
    drop(c);
    std::fs::write(path.join("stray.tmp"), b"x").unwrap();
    let again = cache(&path, 5 * BLOCK);
    let (f, _, _) = copy(again.get(&a, "k3", "e", 2 * BLOCK, None)).expect("kept across a restart");
    assert_eq!(read_all(&f), body(2 * BLOCK as usize, 3));
    assert!(!path.join("stray.tmp").exists(), "leftovers are removed");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "root only");
}

#[test]
fn mounts_reach_it_on_its_socket_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir.path().join("c"), 64 << 20);
    let socket = dir.path().join("cache.sock");
    let allowed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gate = allowed.clone();
    c.serve(
        &socket,
        move |uid| {
            gate.load(std::sync::atomic::Ordering::SeqCst)
                .then(|| peer("a", uid))
        },
        Arc::new(|_: &Path| None),
    )
    .unwrap();
    let data = body(BLOCK as usize + 10, 9);
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&data).unwrap();
    let client = super::super::Client::new(socket.clone());
    assert!(client.get("k", "e", data.len() as u64, None).is_none());
    assert!(client.offer("k", "e", data.len() as u64, &f, &sums(&data)));
    c.settle();
    let Some(super::super::Lookup::Copy(copy)) = client.get("k", "e", data.len() as u64, None)
    else {
        panic!("no copy");
    };
    assert_eq!(read_all(&copy.file), data);
    assert!(copy.verified, "read back and checked by the plugin");
    // The copy is read-only to the mount.
    assert!(copy.file.write_at(b"x", 0).is_err());
    // A user the plugin knows no mount of is not served.
    allowed.store(false, std::sync::atomic::Ordering::SeqCst);
    let stranger = super::super::Client::new(socket);
    assert!(stranger.get("k", "e", data.len() as u64, None).is_none());
}

#[test]
fn a_burst_of_offers_from_a_pod_reading_a_data_set_of_small_files_is_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir.path().join("c"), 1 << 30);
    let a = peer("a", 0);
    let n = queue_len().min(600);
    // Made first, so that the offers come faster than one copy is made.
    let files: Vec<(Vec<u8>, OwnedFd)> = (0..n)
        .map(|i| {
            let d = body(4096, i as u8);
            let f = offered(&d);
            (d, f)
        })
        .collect();
    for (i, (d, f)) in files.into_iter().enumerate() {
        assert!(
            c.offer(&a, format!("k{i}"), "e".into(), 4096, sums(&d), f),
            "offer {i} was dropped"
        );
    }
    c.settle();
    for i in 0..n {
        let (f, _, _) = copy(c.get(&a, &format!("k{i}"), "e", 4096, None)).expect("kept");
        assert_eq!(read_all(&f), body(4096, i as u8));
    }
}

#[test]
fn offers_waiting_are_bounded_by_their_bytes_but_one_is_always_taken() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir.path().join("c"), u64::MAX);
    let a = peer("a", 0);
    // Pretend a large offer waits: the next one past the bound is refused.
    {
        let mut p = lock(&c.pending);
        p.sizes.insert("waiting".into(), QUEUE_BYTES - 10);
        p.bytes = QUEUE_BYTES - 10;
    }
    let d = body(4096, 1);
    assert!(!c.offer(&a, "k".into(), "e".into(), 4096, sums(&d), offered(&d)));
    lock(&c.pending).remove("waiting");
    assert!(c.offer(&a, "k".into(), "e".into(), 4096, sums(&d), offered(&d)));
    c.settle();
    assert!(copy(c.get(&a, "k", "e", 4096, None)).is_some());
}
