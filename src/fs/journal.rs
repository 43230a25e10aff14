//! What a successor mount process needs to serve the same kernel connection: the FUSE INIT
//! parameters, the kernel's node ids (inode → parent, name, kind: keys follow from them) and
//! its open file handles (handle → inode, kind). Kept in an append-only file of checksummed
//! records, each written before the reply that gives the kernel the id it names (a write(2),
//! which outlives a killed process); rewritten whole when it grows past four times the live
//! state. A torn last record (length or CRC-32C wrong) is detected and dropped on load.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Kind of an inode or handle in the journal.
pub const FILE: u8 = b'f';
/// A directory.
pub const DIR: u8 = b'd';
/// A symbolic link.
pub const LINK: u8 = b'l';
/// A handle open for reading.
pub const READ: u8 = b'r';
/// A handle open for writing.
pub const WRITE: u8 = b'w';

/// What the kernel offered in INIT (the successor replays it to its own FUSE session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitParams {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// Capability flags the kernel offered (both words).
    pub flags: u64,
    /// The kernel's largest read-ahead.
    pub max_readahead: u32,
}

/// One change of the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The INIT parameters.
    Init(InitParams),
    /// A new inode.
    Node {
        /// Its number.
        ino: u64,
        /// Its parent.
        parent: u64,
        /// [`FILE`], [`DIR`] or [`LINK`].
        kind: u8,
        /// Its name in the parent.
        name: String,
    },
    /// An inode freed.
    Drop {
        /// Its number.
        ino: u64,
    },
    /// An inode renamed.
    Move {
        /// Its number.
        ino: u64,
        /// The new parent.
        parent: u64,
        /// The new name.
        name: String,
    },
    /// A handle opened.
    Open {
        /// The handle.
        fh: u64,
        /// Its inode.
        ino: u64,
        /// [`READ`], [`WRITE`] or [`DIR`].
        kind: u8,
    },
    /// A handle released.
    Close {
        /// The handle.
        fh: u64,
    },
}

fn crc(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
}

impl Record {
    /// Append this record, framed (length, CRC-32C, payload), to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut p = Vec::with_capacity(32);
        match self {
            Record::Init(i) => {
                p.push(b'I');
                p.extend_from_slice(&i.major.to_le_bytes());
                p.extend_from_slice(&i.minor.to_le_bytes());
                put_u64(&mut p, i.flags);
                p.extend_from_slice(&i.max_readahead.to_le_bytes());
            }
            Record::Node {
                ino,
                parent,
                kind,
                name,
            } => {
                p.push(b'N');
                put_u64(&mut p, *ino);
                put_u64(&mut p, *parent);
                p.push(*kind);
                put_str(&mut p, name);
            }
            Record::Drop { ino } => {
                p.push(b'D');
                put_u64(&mut p, *ino);
            }
            Record::Move { ino, parent, name } => {
                p.push(b'M');
                put_u64(&mut p, *ino);
                put_u64(&mut p, *parent);
                put_str(&mut p, name);
            }
            Record::Open { fh, ino, kind } => {
                p.push(b'O');
                put_u64(&mut p, *fh);
                put_u64(&mut p, *ino);
                p.push(*kind);
            }
            Record::Close { fh } => {
                p.push(b'C');
                put_u64(&mut p, *fh);
            }
        }
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc(&p).to_le_bytes());
        out.extend_from_slice(&p);
    }

    fn decode(p: &[u8]) -> Option<Record> {
        let mut r = Reader(p);
        let rec = match r.u8()? {
            b'I' => Record::Init(InitParams {
                major: r.u32()?,
                minor: r.u32()?,
                flags: r.u64()?,
                max_readahead: r.u32()?,
            }),
            b'N' => Record::Node {
                ino: r.u64()?,
                parent: r.u64()?,
                kind: r.u8()?,
                name: r.string()?,
            },
            b'D' => Record::Drop { ino: r.u64()? },
            b'M' => Record::Move {
                ino: r.u64()?,
                parent: r.u64()?,
                name: r.string()?,
            },
            b'O' => Record::Open {
                fh: r.u64()?,
                ino: r.u64()?,
                kind: r.u8()?,
            },
            b'C' => Record::Close { fh: r.u64()? },
            _ => return None,
        };
        r.0.is_empty().then_some(rec)
    }
}

/// The tables as a journal describes them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tables {
    /// INIT parameters, once recorded.
    pub init: Option<InitParams>,
    /// Inode → (parent, kind, name).
    pub nodes: HashMap<u64, (u64, u8, String)>,
    /// Handle → (inode, kind).
    pub handles: HashMap<u64, (u64, u8)>,
}

impl Tables {
    fn apply(&mut self, rec: Record) {
        match rec {
            Record::Init(i) => self.init = Some(i),
            Record::Node {
                ino,
                parent,
                kind,
                name,
            } => {
                self.nodes.insert(ino, (parent, kind, name));
            }
            Record::Drop { ino } => {
                self.nodes.remove(&ino);
            }
            Record::Move { ino, parent, name } => {
                if let Some(n) = self.nodes.get_mut(&ino) {
                    n.0 = parent;
                    n.2 = name;
                }
            }
            Record::Open { fh, ino, kind } => {
                self.handles.insert(fh, (ino, kind));
            }
            Record::Close { fh } => {
                self.handles.remove(&fh);
            }
        }
    }

    fn records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = self.init.iter().map(|i| Record::Init(*i)).collect();
        let mut nodes: Vec<_> = self.nodes.iter().collect();
        nodes.sort_by_key(|(ino, _)| **ino);
        for (ino, (parent, kind, name)) in nodes {
            out.push(Record::Node {
                ino: *ino,
                parent: *parent,
                kind: *kind,
                name: name.clone(),
            });
        }
        let mut handles: Vec<_> = self.handles.iter().collect();
        handles.sort_by_key(|(fh, _)| **fh);
        for (fh, (ino, kind)) in handles {
            out.push(Record::Open {
                fh: *fh,
                ino: *ino,
                kind: *kind,
            });
        }
        out
    }
}

/// Parse `bytes`: the tables, and how many bytes of whole records there are (after them,
/// a torn or damaged tail).
pub fn parse(bytes: &[u8]) -> (Tables, usize) {
    let mut t = Tables::default();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let sum = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc(payload) != sum {
            break;
        }
        let Some(rec) = Record::decode(payload) else {
            break;
        };
        t.apply(rec);
        at += 8 + len;
    }
    (t, at)
}

/// The journal file of a mount.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// The live tables (to rewrite the file when it grows).
    tables: Tables,
    records: usize,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// A new, empty journal at `path` (replacing any).
    pub fn create(path: &Path) -> io::Result<Journal> {
        Self::write_whole(path, &Tables::default())
    }

    /// The journal at `path` and its tables; a torn tail is dropped, and the file is
    /// rewritten compact.
    pub fn open(path: &Path) -> io::Result<(Journal, Tables)> {
        let bytes = std::fs::read(path)?;
        let (tables, whole) = parse(&bytes);
        if whole < bytes.len() {
            tracing::warn!(path = %path.display(), dropped = bytes.len() - whole, "the journal's last record was torn; dropped");
        }
        let j = Self::write_whole(path, &tables)?;
        Ok((j, tables))
    }

    fn write_whole(path: &Path, tables: &Tables) -> io::Result<Journal> {
        let records = tables.records();
        let mut buf = Vec::new();
        for r in &records {
            r.encode(&mut buf);
        }
        let tmp = path.with_extension("tmp");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&buf)?;
        }
        std::fs::rename(&tmp, path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            tables: tables.clone(),
            records: records.len(),
        })
    }

    /// Append `recs` in one write; rewrite the file when it holds four times the live state.
    pub fn append(&mut self, recs: Vec<Record>) -> io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in &recs {
            r.encode(&mut buf);
        }
        self.file.write_all(&buf)?;
        self.records += recs.len();
        for r in recs {
            self.tables.apply(r);
        }
        let live = 1 + self.tables.nodes.len() + self.tables.handles.len();
        if self.records > 4 * live + 10_000 {
            *self = Self::write_whole(&self.path, &self.tables)?;
        }
        Ok(())
    }

    /// The INIT parameters recorded.
    pub fn init(&self) -> Option<InitParams> {
        self.tables.init
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ino: u64, parent: u64, name: &str) -> Record {
        Record::Node {
            ino,
            parent,
            kind: FILE,
            name: name.into(),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_or_damaged_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::create(&path).unwrap();
        let init = InitParams {
            major: 7,
            minor: 41,
            flags: 1 << 37 | 5,
            max_readahead: 131072,
        };
        j.append(vec![
            Record::Init(init),
            node(2, 1, "a"),
            node(3, 1, "name with\nodd \u{1} bytes"),
            Record::Move {
                ino: 2,
                parent: 3,
                name: "b".into(),
            },
            Record::Open {
                fh: 9,
                ino: 2,
                kind: READ,
            },
            Record::Open {
                fh: 10,
                ino: 3,
                kind: WRITE,
            },
            Record::Close { fh: 10 },
            node(4, 1, "gone"),
            Record::Drop { ino: 4 },
        ])
        .unwrap();
        let (t, _) = parse(&std::fs::read(&path).unwrap());
        assert_eq!(t.init, Some(init));
        assert_eq!(t.nodes.get(&2), Some(&(3, FILE, "b".to_string())));
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.handles, HashMap::from([(9, (2, READ))]));
        // A write torn half-way (the process died in it): the last record is dropped.
        let mut tail = Vec::new();
        node(5, 1, "torn").encode(&mut tail);
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&tail[..tail.len() - 3]);
        std::fs::write(&path, &bytes).unwrap();
        let (j, t2) = Journal::open(&path).unwrap();
        assert_eq!(t2, t);
        assert_eq!(j.init(), Some(init));
        assert!(
            std::fs::read(&path).unwrap().len() <= whole,
            "rewritten compact"
        );
        // A flipped byte in the middle: everything from there on is distrusted.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        let (t3, at) = parse(&bytes);
        assert!(at < n);
        assert!(t3.handles.is_empty() || t3.handles != t.handles || t3.nodes.len() < 2);
    }

    #[test]
    fn the_file_is_rewritten_when_it_outgrows_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::create(&path).unwrap();
        for i in 0..20_000u64 {
            j.append(vec![
                Record::Open {
                    fh: i,
                    ino: 1,
                    kind: READ,
                },
                Record::Close { fh: i },
            ])
            .unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 20_000 * 2 * 20, "{len} bytes: never compacted");
        let (t, _) = parse(&std::fs::read(&path).unwrap());
        assert!(t.handles.is_empty());
    }
}
