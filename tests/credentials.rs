//! Where a mount's S3 credentials come from, checked at the wire: container credentials
//! (ECS, EKS Pod Identity) from a local credentials endpoint sign the requests; with no
//! credentials and instance metadata off, the mount fails at once and says what to set.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::proxy::Proxy;
use common::*;

/// A container credentials endpoint on 127.0.0.1: answers with keys when the request
/// carries `token` as its Authorization, and records what it was sent.
fn credentials_endpoint(token: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/credentials", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line
                    .strip_prefix("authorization:")
                    .or(line.strip_prefix("Authorization:"))
                {
                    auth = v.trim().to_string();
                }
            }
            log.lock().unwrap().push(auth.clone());
            let (status, body) = if auth == token {
                (
                    "200 OK",
                    r#"{"AccessKeyId":"ASIACONTAINERKEY","SecretAccessKey":"s","Token":"t","Expiration":"2099-01-01T00:00:00Z"}"#,
                )
            } else {
                ("403 Forbidden", "{}")
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn container_credentials_from_a_local_endpoint_sign_the_requests() {
    let s3 = s3();
    let proxy = Proxy::start(&s3.endpoint);
    let (url, seen) = credentials_endpoint("pod-identity-token");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "pod-identity-token").unwrap();
    let env = vec![
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(), url),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".to_string(),
            token_file.display().to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
    ];
    let args = vec!["--endpoint-url".to_string(), proxy.endpoint.clone()];
    // The test server knows none of these keys: the mount is refused by the server, after
    // the requests were signed with what the endpoint gave.
    let e = try_mount(&s3.url(&unique("container")), &args, &env)
        .err()
        .expect("the server does not know the container's keys");
    assert!(e.contains("access denied"), "{e}");
    assert_eq!(seen.lock().unwrap().as_slice(), ["pod-identity-token"]);
    let signers = proxy.signers();
    assert!(!signers.is_empty());
    assert!(
        signers.iter().all(|s| s == "ASIACONTAINERKEY+token"),
        "{signers:?}"
    );
}

#[test]
fn without_credentials_and_with_metadata_off_the_mount_says_what_to_set() {
    let s3 = s3();
    let proxy = Proxy::start(&s3.endpoint);
    let env = vec![("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string())];
    let args = vec!["--endpoint-url".to_string(), proxy.endpoint.clone()];
    let e = try_mount(&s3.url(&unique("nocreds")), &args, &env)
        .err()
        .expect("no credentials");
    assert!(
        e.contains("no credentials found (tried:")
            && e.contains("AWS_ACCESS_KEY_ID")
            && e.contains("AWS_EC2_METADATA_DISABLED"),
        "{e}"
    );
    assert!(proxy.signers().is_empty(), "nothing was sent");
}
