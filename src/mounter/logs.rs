//! The mount processes' logs, followed by the node plugin: every line is written again on
//! the plugin's own output (so `kubectl logs` of the node plugin shows it) with the volume
//! and its pod; errors also become events on the pod; each file stays bounded on the host.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::state::{Record, StateDir};
use super::{EventSink, MountEvent};

/// A mount's log file is emptied once it grows past this (its lines were passed on).
const MAX_LOG: u64 = 8 << 20;
/// At most one event per volume in this interval.
const EVENT_INTERVAL: Duration = Duration::from_secs(60);

/// Follow the logs of every recorded mount, from now on, in a thread of its own.
pub fn follow(records: StateDir, events: Option<EventSink>) {
    let spawned = std::thread::Builder::new()
        .name("pail-mount-logs".into())
        .spawn(move || {
            let mut f = Follower {
                records,
                events,
                offsets: HashMap::new(),
                last_event: HashMap::new(),
            };
            // Lines written before this plugin started were passed on by its predecessor.
            f.poll(true);
            loop {
                std::thread::sleep(Duration::from_millis(500));
                f.poll(false);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot follow the mount processes' logs");
    }
}

struct Follower {
    records: StateDir,
    events: Option<EventSink>,
    offsets: HashMap<PathBuf, u64>,
    last_event: HashMap<String, Instant>,
}

impl Follower {
    fn poll(&mut self, skip: bool) {
        let records = self.records.all();
        self.offsets.retain(|p, _| {
            records
                .iter()
                .any(|r| self.records.log_path(&r.target) == *p)
        });
        for r in records {
            let path = self.records.log_path(&r.target);
            let Ok(mut file) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let offset = match self.offsets.get(&path) {
                Some(o) if *o <= len => *o,
                Some(_) => 0, // emptied meanwhile
                None if skip => len,
                None => 0,
            };
            let mut text = Vec::new();
            if file.seek(SeekFrom::Start(offset)).is_err()
                || file.by_ref().take(1 << 20).read_to_end(&mut text).is_err()
            {
                continue;
            }
            // Whole lines only; a partial last one waits for the next poll.
            let used = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for line in text[..used].split(|b| *b == b'\n') {
                if !line.is_empty() {
                    self.pass_on(&r, line);
                }
            }
            let mut next = offset + used as u64;
            if next >= MAX_LOG && next == len {
                // The process appends (O_APPEND): emptying the file is safe.
                if file.set_len(0).is_ok() {
                    next = 0;
                }
            }
            self.offsets.insert(path, next);
        }
    }

    /// Write one JSON line of a mount process on our output, with its volume and pod.
    fn pass_on(&mut self, r: &Record, line: &[u8]) {
        let v: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(_) => serde_json::Value::String(String::from_utf8_lossy(line).into_owned()),
        };
        let level = v["level"].as_str().unwrap_or("INFO").to_string();
        let fields = v["fields"].as_object();
        let message = fields
            .and_then(|f| f.get("message"))
            .and_then(|m| m.as_str())
            .or(v.as_str())
            .unwrap_or("")
            .to_string();
        let rest: String = fields
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "message")
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!(" {k}={s:?}"),
                None => format!(" {k}={v}"),
            })
            .collect();
        let (ns, pod) = r
            .pod
            .as_ref()
            .map_or(("", ""), |p| (p.namespace.as_str(), p.name.as_str()));
        let volume_id = r.volume_id.as_str();
        match level.as_str() {
            "ERROR" => {
                tracing::error!(target: "pail::mount", volume_id, namespace = ns, pod, "{message}{rest}")
            }
            "WARN" => {
                tracing::warn!(target: "pail::mount", volume_id, namespace = ns, pod, "{message}{rest}")
            }
            "DEBUG" | "TRACE" => {
                tracing::debug!(target: "pail::mount", volume_id, namespace = ns, pod, "{message}{rest}")
            }
            _ => {
                tracing::info!(target: "pail::mount", volume_id, namespace = ns, pod, "{message}{rest}")
            }
        }
        let worth_an_event =
            level == "ERROR" || (level == "WARN" && message.contains("credentials"));
        if let (true, Some(sink), Some(p)) = (worth_an_event, &self.events, &r.pod) {
            let now = Instant::now();
            let recent = self
                .last_event
                .get(volume_id)
                .is_some_and(|t| now.duration_since(*t) < EVENT_INTERVAL);
            if !recent {
                self.last_event.insert(volume_id.to_string(), now);
                sink(MountEvent {
                    volume_id: volume_id.to_string(),
                    pod: p.clone(),
                    reason: if message.contains("credentials") {
                        "CredentialsRefreshFailed"
                    } else {
                        "MountError"
                    },
                    message: format!("{message}{rest}"),
                    warning: true,
                });
            }
        }
    }
}
