//! An in-memory, fault-injecting [`Storage`] for tests.
//!
//! Crash model (an ext4 `data=ordered`-like file system): namespace
//! operations (create, rename, remove, mkdir, symlink, set-meta) survive a
//! power-off in the order they were made; a file's *data* survives only up
//! to its last [`Storage::sync_file`] (an unsynced file comes back with its
//! last synced content, or empty). So a writer that renames a file into
//! place without `fsync` first sees it empty after a crash, as on a real
//! disk.
//!
//! Every mutating call is a numbered step. [`MemStore::fail_at`] makes step
//! `n` fail, either with an error the caller can handle ([`Fault::Error`])
//! or by losing power ([`Fault::PowerOff`]: that step and everything after
//! it fail until [`MemStore::reboot`]).

use crate::error::StoreError;
use crate::exclude::Exclude;
use crate::path::{RelPath, STATE_DIR};
use crate::store::{Stat, StatKind, Storage, Walk, WalkEntry};
use std::collections::BTreeMap;

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The step returns [`StoreError::Injected`]; later steps work.
    Error,
    /// The machine loses power at this step; it and all later steps return
    /// [`StoreError::PowerOff`] until [`MemStore::reboot`].
    PowerOff,
}

/// One node of the in-memory tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file.
    File {
        /// Current content.
        data: Vec<u8>,
        /// Content as of the last sync (`None`: never synced).
        synced: Option<Vec<u8>>,
        /// Permission bits.
        mode: u32,
        /// mtime, ns.
        mtime_ns: i64,
        /// ctime, ns.
        ctime_ns: i64,
        /// Inode number.
        ino: u64,
    },
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
        /// mtime, ns.
        mtime_ns: i64,
    },
    /// A symlink.
    Symlink {
        /// Target.
        target: Vec<u8>,
        /// The link's own mtime, ns (`lstat`): set when it is made, like a
        /// real file system's; never replicated.
        mtime_ns: i64,
    },
}

/// A node as [`MemStore::view`] compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Content, mode, mtime.
    File(Vec<u8>, u32, i64),
    /// Mode, mtime.
    Dir(u32, i64),
    /// Target (a symlink's mtime is not replicated).
    Symlink(Vec<u8>),
}

/// The in-memory store.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    nodes: BTreeMap<String, Node>,
    clock: i64,
    next_ino: u64,
    steps: u64,
    fault: Option<(u64, Fault)>,
    off: bool,
}

impl MemStore {
    /// An empty tree.
    #[must_use]
    pub fn new() -> Self {
        Self {
            clock: 1_000_000_000,
            next_ino: 1,
            ..Self::default()
        }
    }

    /// Mutating steps done so far.
    #[must_use]
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Injects `fault` at mutating step number `step` (counting from the
    /// current [`MemStore::steps`] + 1).
    pub fn fail_at(&mut self, step: u64, fault: Fault) {
        self.fault = Some((step, fault));
    }

    /// Clears any pending fault.
    pub fn clear_fault(&mut self) {
        self.fault = None;
    }

    /// True after a power-off.
    #[must_use]
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// Power back on: unsynced file data is lost (see the crash model).
    pub fn reboot(&mut self) {
        self.off = false;
        self.fault = None;
        for n in self.nodes.values_mut() {
            if let Node::File { data, synced, .. } = n {
                *data = synced.clone().unwrap_or_default();
            }
        }
    }

    /// Marks everything durable (after a test built its initial tree).
    pub fn sync_all(&mut self) {
        for n in self.nodes.values_mut() {
            if let Node::File { data, synced, .. } = n {
                *synced = Some(data.clone());
            }
        }
    }

    /// The nodes outside the state folder (for comparing trees).
    #[must_use]
    pub fn tree(&self) -> BTreeMap<String, Node> {
        self.nodes
            .iter()
            .filter(|(k, _)| !is_state(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// What replication must reproduce (content, modes, mtimes, link
    /// targets) of the tree outside the state folder; two trees that
    /// compare equal here are replicas of each other.
    #[must_use]
    pub fn view(&self) -> BTreeMap<String, View> {
        self.nodes
            .iter()
            .filter(|(k, _)| !is_state(k))
            .map(|(k, n)| {
                let v = match n {
                    Node::File {
                        data,
                        mode,
                        mtime_ns,
                        ..
                    } => View::File(data.clone(), *mode, *mtime_ns),
                    Node::Dir { mode, mtime_ns } => View::Dir(*mode, *mtime_ns),
                    Node::Symlink { target, .. } => View::Symlink(target.clone()),
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// All nodes, state folder included.
    #[must_use]
    pub fn nodes(&self) -> &BTreeMap<String, Node> {
        &self.nodes
    }

    /// Test helper: writes a whole file (creating parents), no fault
    /// checks, not counted as a step.
    pub fn put_file(&mut self, path: &str, data: &[u8], mode: u32, mtime_ns: i64) {
        self.mkdirs(path);
        self.clock += 1;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            path.to_owned(),
            Node::File {
                data: data.to_vec(),
                synced: None,
                mode,
                mtime_ns,
                ctime_ns: self.clock,
                ino,
            },
        );
        self.touch_parent(path);
    }

    /// Test helper: a directory (creating parents).
    pub fn put_dir(&mut self, path: &str, mode: u32) {
        self.mkdirs(path);
        self.clock += 1;
        self.nodes.entry(path.to_owned()).or_insert(Node::Dir {
            mode,
            mtime_ns: self.clock,
        });
        self.touch_parent(path);
    }

    /// Test helper: a symlink (creating parents), with the current
    /// clock as its mtime.
    pub fn put_symlink(&mut self, path: &str, target: &[u8]) {
        self.mkdirs(path);
        self.clock += 1;
        self.nodes.insert(
            path.to_owned(),
            Node::Symlink {
                target: target.to_vec(),
                mtime_ns: self.clock,
            },
        );
        self.touch_parent(path);
    }

    /// Test helper: removes a path and everything below it.
    pub fn remove_tree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.nodes
            .retain(|k, _| k != path && !k.starts_with(&prefix));
        self.touch_parent(path);
    }

    /// Test helper: sets the mode bits (like `chmod`).
    pub fn chmod(&mut self, path: &str, new_mode: u32) {
        self.clock += 1;
        let now = self.clock;
        match self.nodes.get_mut(path) {
            Some(Node::File { mode, ctime_ns, .. }) => {
                *mode = new_mode;
                *ctime_ns = now;
            }
            Some(Node::Dir { mode, .. }) => *mode = new_mode,
            _ => {}
        }
    }

    /// Test helper: renames a path (and its subtree).
    pub fn move_tree(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moved: Vec<_> = self
            .nodes
            .keys()
            .filter(|k| *k == from || k.starts_with(&prefix))
            .cloned()
            .collect();
        self.mkdirs(to);
        for k in moved {
            if let Some(n) = self.nodes.remove(&k) {
                let nk = format!("{to}{}", &k[from.len()..]);
                self.nodes.insert(nk, n);
            }
        }
        self.touch_parent(from);
        self.touch_parent(to);
    }

    fn mkdirs(&mut self, path: &str) {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let anc = &path[..end + i];
            self.nodes.entry(anc.to_owned()).or_insert(Node::Dir {
                mode: 0o755,
                mtime_ns: self.clock,
            });
            end += i + 1;
        }
    }

    fn touch_parent(&mut self, path: &str) {
        self.clock += 1;
        let now = self.clock;
        if let Some(i) = path.rfind('/')
            && let Some(Node::Dir { mtime_ns, .. }) = self.nodes.get_mut(&path[..i])
        {
            *mtime_ns = now;
        }
    }

    fn step(&mut self) -> Result<(), StoreError> {
        if self.off {
            return Err(StoreError::PowerOff);
        }
        self.steps += 1;
        self.clock += 1;
        if let Some((at, fault)) = self.fault
            && at == self.steps
        {
            self.fault = None;
            return Err(match fault {
                Fault::Error => StoreError::Injected { step: at },
                Fault::PowerOff => {
                    self.off = true;
                    StoreError::PowerOff
                }
            });
        }
        Ok(())
    }

    /// Every ancestor must be a directory (never a symlink).
    fn check_parents(&self, path: &str) -> Result<(), StoreError> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            match self.nodes.get(&path[..end + i]) {
                Some(Node::Dir { .. }) => {}
                Some(Node::Symlink { .. }) => return Err(StoreError::SymlinkInPath),
                Some(Node::File { .. }) => return Err(StoreError::NotDir),
                None => return Err(StoreError::NotFound),
            }
            end += i + 1;
        }
        Ok(())
    }

    fn has_children(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.nodes
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }
}

fn is_state(k: &str) -> bool {
    k == STATE_DIR || k.starts_with(".sync-delta/")
}

fn stat_of(n: &Node) -> Stat {
    match n {
        Node::File {
            data,
            mode,
            mtime_ns,
            ctime_ns,
            ino,
            ..
        } => Stat {
            kind: StatKind::File,
            size: data.len() as u64,
            mode: *mode,
            mtime_ns: *mtime_ns,
            ctime_ns: *ctime_ns,
            ino: *ino,
        },
        Node::Dir { mode, mtime_ns } => Stat {
            kind: StatKind::Dir,
            size: 0,
            mode: *mode,
            mtime_ns: *mtime_ns,
            ctime_ns: *mtime_ns,
            ino: 0,
        },
        Node::Symlink { mtime_ns, .. } => Stat {
            kind: StatKind::Symlink,
            size: 0,
            mode: 0o777,
            mtime_ns: *mtime_ns,
            ctime_ns: *mtime_ns,
            ino: 0,
        },
    }
}

impl Storage for MemStore {
    fn walk(&mut self, exclude: &Exclude) -> Result<Walk, StoreError> {
        if self.off {
            return Err(StoreError::PowerOff);
        }
        let mut w = Walk::default();
        for (k, n) in &self.nodes {
            if is_state(k) || exclude.is_excluded(k) {
                continue;
            }
            let Ok(path) = RelPath::new(k) else {
                w.skipped += 1;
                continue;
            };
            w.entries.push(WalkEntry {
                path,
                stat: stat_of(n),
                target: match n {
                    Node::Symlink { target, .. } => Some(target.clone()),
                    _ => None,
                },
            });
        }
        Ok(w)
    }

    fn stat(&mut self, path: &str) -> Result<Stat, StoreError> {
        if self.off {
            return Err(StoreError::PowerOff);
        }
        if path.is_empty() {
            return Ok(stat_of(&Node::Dir {
                mode: 0o755,
                mtime_ns: 0,
            }));
        }
        self.nodes
            .get(path)
            .map(stat_of)
            .ok_or(StoreError::NotFound)
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        if self.off {
            return Err(StoreError::PowerOff);
        }
        self.check_parents(path)?;
        match self.nodes.get(path) {
            Some(Node::File { data, .. }) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                Ok(n)
            }
            Some(Node::Dir { .. }) => Err(StoreError::IsDir),
            Some(Node::Symlink { .. }) => Err(StoreError::SymlinkInPath),
            None => Err(StoreError::NotFound),
        }
    }

    fn read_link(&mut self, path: &str) -> Result<Vec<u8>, StoreError> {
        match self.nodes.get(path) {
            Some(Node::Symlink { target, .. }) => Ok(target.clone()),
            Some(_) => Err(StoreError::Io {
                kind: std::io::ErrorKind::InvalidInput,
            }),
            None => Err(StoreError::NotFound),
        }
    }

    fn create(&mut self, path: &str) -> Result<(), StoreError> {
        self.step()?;
        self.check_parents(path)?;
        let now = self.clock;
        match self.nodes.get_mut(path) {
            Some(Node::Dir { .. }) => return Err(StoreError::IsDir),
            Some(Node::File {
                data,
                mtime_ns,
                ctime_ns,
                ..
            }) => {
                data.clear();
                *mtime_ns = now;
                *ctime_ns = now;
                return Ok(());
            }
            _ => {}
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            path.to_owned(),
            Node::File {
                data: Vec::new(),
                synced: None,
                mode: 0o600,
                mtime_ns: now,
                ctime_ns: now,
                ino,
            },
        );
        self.touch_parent(path);
        Ok(())
    }

    fn write_at(&mut self, path: &str, offset: u64, buf: &[u8]) -> Result<(), StoreError> {
        self.step()?;
        self.check_parents(path)?;
        let now = self.clock;
        match self.nodes.get_mut(path) {
            Some(Node::File {
                data,
                mtime_ns,
                ctime_ns,
                ..
            }) => {
                let (off, end) = usize::try_from(offset)
                    .ok()
                    .and_then(|o| Some((o, o.checked_add(buf.len())?)))
                    .filter(|(_, e)| *e <= 1 << 32)
                    .ok_or(StoreError::Io {
                        kind: std::io::ErrorKind::InvalidInput,
                    })?;
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[off..end].copy_from_slice(buf);
                *mtime_ns = now;
                *ctime_ns = now;
                Ok(())
            }
            Some(Node::Dir { .. }) => Err(StoreError::IsDir),
            Some(Node::Symlink { .. }) => Err(StoreError::SymlinkInPath),
            None => Err(StoreError::NotFound),
        }
    }

    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError> {
        self.step()?;
        self.check_parents(path)?;
        let now = self.clock;
        match self.nodes.get_mut(path) {
            Some(Node::File {
                data,
                mtime_ns,
                ctime_ns,
                ..
            }) => {
                // An in-memory file past 4 GiB is a test's mistake or a
                // hostile record, not something to allocate.
                let len =
                    usize::try_from(len)
                        .ok()
                        .filter(|l| *l <= 1 << 32)
                        .ok_or(StoreError::Io {
                            kind: std::io::ErrorKind::InvalidInput,
                        })?;
                data.resize(len, 0);
                *mtime_ns = now;
                *ctime_ns = now;
                Ok(())
            }
            Some(Node::Dir { .. }) => Err(StoreError::IsDir),
            Some(Node::Symlink { .. }) => Err(StoreError::SymlinkInPath),
            None => Err(StoreError::NotFound),
        }
    }

    fn sync_file(&mut self, path: &str) -> Result<(), StoreError> {
        self.step()?;
        if path.is_empty() {
            return Ok(());
        }
        match self.nodes.get_mut(path) {
            Some(Node::File { data, synced, .. }) => {
                *synced = Some(data.clone());
                Ok(())
            }
            Some(Node::Dir { .. }) => Ok(()),
            Some(Node::Symlink { .. }) => Err(StoreError::SymlinkInPath),
            None => Err(StoreError::NotFound),
        }
    }

    fn sync_dir(&mut self, path: &str) -> Result<(), StoreError> {
        self.step()?;
        if path.is_empty() {
            return Ok(());
        }
        match self.nodes.get(path) {
            Some(Node::Dir { .. }) => Ok(()),
            Some(_) => Err(StoreError::NotDir),
            None => Err(StoreError::NotFound),
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        self.step()?;
        self.check_parents(from)?;
        self.check_parents(to)?;
        let src = self.nodes.get(from).ok_or(StoreError::NotFound)?;
        let src_dir = matches!(src, Node::Dir { .. });
        match self.nodes.get(to) {
            Some(Node::Dir { .. }) if !src_dir => return Err(StoreError::IsDir),
            Some(Node::Dir { .. }) if self.has_children(to) => return Err(StoreError::NotEmpty),
            Some(Node::File { .. } | Node::Symlink { .. }) if src_dir => {
                return Err(StoreError::NotDir);
            }
            _ => {}
        }
        if from == to {
            return Ok(());
        }
        self.move_tree(from, to);
        Ok(())
    }

    fn remove_file(&mut self, path: &str) -> Result<(), StoreError> {
        self.step()?;
        self.check_parents(path)?;
        match self.nodes.get(path) {
            Some(Node::Dir { .. }) => Err(StoreError::IsDir),
            Some(_) => {
                self.nodes.remove(path);
                self.touch_parent(path);
                Ok(())
            }
            None => Err(StoreError::NotFound),
        }
    }

    fn remove_dir(&mut self, path: &str) -> Result<(), StoreError> {
        self.step()?;
        self.check_parents(path)?;
        match self.nodes.get(path) {
            Some(Node::Dir { .. }) if self.has_children(path) => Err(StoreError::NotEmpty),
            Some(Node::Dir { .. }) => {
                self.nodes.remove(path);
                self.touch_parent(path);
                Ok(())
            }
            Some(_) => Err(StoreError::NotDir),
            None => Err(StoreError::NotFound),
        }
    }

    fn create_dir(&mut self, path: &str, mode: u32) -> Result<(), StoreError> {
        self.step()?;
        self.check_parents(path)?;
        if self.nodes.contains_key(path) {
            return Err(StoreError::AlreadyExists);
        }
        let now = self.clock;
        self.nodes.insert(
            path.to_owned(),
            Node::Dir {
                mode,
                mtime_ns: now,
            },
        );
        self.touch_parent(path);
        Ok(())
    }

    fn symlink(&mut self, target: &[u8], path: &str) -> Result<(), StoreError> {
        self.step()?;
        self.check_parents(path)?;
        if self.nodes.contains_key(path) {
            return Err(StoreError::AlreadyExists);
        }
        let now = self.clock;
        self.nodes.insert(
            path.to_owned(),
            Node::Symlink {
                target: target.to_vec(),
                mtime_ns: now,
            },
        );
        self.touch_parent(path);
        Ok(())
    }

    fn set_meta(&mut self, path: &str, new_mode: u32, mtime: i64) -> Result<(), StoreError> {
        self.step()?;
        self.check_parents(path)?;
        let now = self.clock;
        match self.nodes.get_mut(path) {
            Some(Node::File {
                mode,
                mtime_ns,
                ctime_ns,
                ..
            }) => {
                *mode = new_mode;
                *mtime_ns = mtime;
                *ctime_ns = now;
                Ok(())
            }
            Some(Node::Dir { mode, mtime_ns }) => {
                *mode = new_mode;
                *mtime_ns = mtime;
                Ok(())
            }
            Some(Node::Symlink { .. }) => Ok(()),
            None => Err(StoreError::NotFound),
        }
    }

    fn list_dir(&mut self, path: &str) -> Result<Vec<String>, StoreError> {
        if self.off {
            return Err(StoreError::PowerOff);
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        Ok(self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(k, _)| k[prefix.len()..].to_owned())
            .collect())
    }
}
