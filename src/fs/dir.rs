//! Directory handles: a listing taken when the handle is first read (or rewound), so that
//! offsets stay stable while the directory changes underneath.

use super::Attr;

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// File name.
    pub name: String,
    /// Its attributes.
    pub attr: Attr,
    /// The offset that continues the listing after this entry.
    pub offset: u64,
}

/// The entries of one open directory.
#[derive(Debug, Default)]
pub struct DirSnapshot {
    entries: Option<Vec<DirEntry>>,
}

impl DirSnapshot {
    /// A snapshot of `entries` (offsets already set, "." and ".." first).
    pub fn new(entries: Vec<DirEntry>) -> Self {
        DirSnapshot {
            entries: Some(entries),
        }
    }

    /// Whether the listing was taken.
    pub fn is_loaded(&self) -> bool {
        self.entries.is_some()
    }

    /// At most `max` entries after `offset`.
    pub fn after(&self, offset: u64, max: usize) -> Vec<DirEntry> {
        match &self.entries {
            Some(e) => e.iter().skip(offset as usize).take(max).cloned().collect(),
            None => Vec::new(),
        }
    }

    /// Inode numbers of the entries (not "." and "..").
    pub fn inos(&self) -> Vec<u64> {
        self.entries
            .iter()
            .flatten()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| e.attr.ino)
            .collect()
    }
}
