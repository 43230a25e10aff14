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
/// Longest line passed on (the rest is cut); a longer run without a newline is passed on
/// in pieces of this size, so a process that never ends its line cannot stall the follower.
const MAX_LINE: usize = 64 << 10;
/// Longest message an event carries.
const MAX_EVENT: usize = 200;
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
            // Whole lines only; a partial last one waits for the next poll, unless it is
            // already longer than any line may be.
            let used = match text.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None if text.len() >= MAX_LINE => text.len(),
                None => 0,
            };
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

    /// Write one JSON line of a mount process on our output, with its volume and pod. The
    /// process is not trusted: what it wrote is cut to size and its control characters are
    /// escaped, so it can neither forge lines of ours nor flood an event.
    fn pass_on(&mut self, r: &Record, line: &[u8]) {
        let line = &line[..line.len().min(MAX_LINE)];
        let v: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(_) => serde_json::Value::String(String::from_utf8_lossy(line).into_owned()),
        };
        let level = v["level"].as_str().unwrap_or("INFO").to_string();
        let fields = v["fields"].as_object();
        let message = clean(
            fields
                .and_then(|f| f.get("message"))
                .and_then(|m| m.as_str())
                .or(v.as_str())
                .unwrap_or(""),
        );
        let rest: String = fields
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "message")
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!(" {}={s:?}", clean(k)),
                None => format!(" {}={}", clean(k), clean(&v.to_string())),
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
                    // The message alone (what pail's code says happened), never its fields:
                    // an error field can quote a store's response body.
                    message: format!(
                        "{} (volume {volume_id}; details in the node plugin's log)",
                        message.chars().take(MAX_EVENT).collect::<String>()
                    ),
                    warning: true,
                });
            }
        }
    }
}

/// `s` with its control characters escaped (a newline becomes `\\n`).
fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_hostile_log_is_cut_escaped_and_never_stalls_the_follower() {
        let dir = tempfile::tempdir().unwrap();
        let records = StateDir::new(dir.path()).unwrap();
        let target = dir.path().join("pods/u/volumes/v/mount");
        records
            .save(&Record {
                volume_id: "v".into(),
                target: target.clone(),
                source: "s3://b/".into(),
                pid: 1,
                start_time: 0,
                exe: None,
                uid: 900_000_000,
                gid: 900_000_000,
                read_only: false,
                cache_size: 0,
                memory: 0,
                pod: Some(super::super::PodRef {
                    namespace: "ns".into(),
                    name: "p".into(),
                    uid: "u".into(),
                }),
                keeper: None,
                connection: None,
            })
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let events = events.clone();
            Arc::new(move |e| events.lock().unwrap().push(e))
        };
        let mut f = Follower {
            records: records.clone(),
            events: Some(sink),
            offsets: HashMap::new(),
            last_event: HashMap::new(),
        };
        let log = records.log_path(&target);
        // A forged newline inside a message, a huge error, and 2 MiB without any newline.
        let forged = r#"{"level":"ERROR","fields":{"message":"x\nFAKE plugin line","error":"<Error>secret body</Error>"}}"#;
        let huge = format!(
            r#"{{"level":"ERROR","fields":{{"message":"{}"}}}}"#,
            "e".repeat(200_000)
        );
        std::fs::write(&log, format!("{forged}\n{huge}\n{}", "z".repeat(2 << 20))).unwrap();
        for _ in 0..4 {
            f.poll(false);
        }
        assert_eq!(
            f.offsets[&log],
            std::fs::metadata(&log).unwrap().len(),
            "the follower reached the end"
        );
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 1, "one event a minute per volume");
        assert_eq!(
            events[0].message, "x\\nFAKE plugin line (volume v; details in the node plugin's log)",
            "the message alone, never a field that may quote a response body"
        );
        assert_eq!(clean("a\u{1b}[31mb"), "a\\u{1b}[31mb");
    }
}
