//! Storage: the one place sync-delta touches files. Sessions take a
//! `&mut S: Storage` in the calls that need it and hold no file handles
//! between calls. [`FsStore`] is the real one; [`crate::mem::MemStore`]
//! the in-memory, fault-injecting one for tests.
//!
//! Paths are relative to the store's root, `/`-separated, `""` for the
//! root itself. Stores never follow a symlink in a path they write to.

use crate::chunk::ChunkParams;
use crate::delta::{SigChunk, SignatureBuilder};
use crate::error::StoreError;
use crate::exclude::Exclude;
pub(crate) use crate::files::{hash_one, read_all, write_atomic};
use crate::manifest::Hash;
use crate::path::{RelPath, STATE_DIR};
use crate::split::{Split, piece_hasher};

/// What a path is, as seen by `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink.
    Symlink,
    /// Anything else (fifo, socket, device): never replicated.
    Other,
}

/// `lstat` of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Its kind.
    pub kind: StatKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Status-change time, ns since the Unix epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

/// One entry of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkEntry {
    /// Its path.
    pub path: RelPath,
    /// Its stat.
    pub stat: Stat,
    /// The target, for a symlink.
    pub target: Option<Vec<u8>>,
}

/// A walk of a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// Entries, in any order.
    pub entries: Vec<WalkEntry>,
    /// Names skipped because they are not valid [`RelPath`]s (not UTF-8,
    /// too long) or not regular files, directories or symlinks.
    pub skipped: u64,
}

/// Where a walk in path order stands ([`Storage::walk_sorted`]): the
/// directories open along the way, each with what is left of it.
#[derive(Debug, Default)]
pub struct WalkCursor {
    started: bool,
    /// Per open directory, its entries and subdirectories not yet given,
    /// in path order.
    open: Vec<std::vec::IntoIter<Sorted>>,
    /// Directories read ahead of their turn (a threaded store reads the
    /// next subdirectories of a directory side by side), by path, with
    /// the names each skipped.
    ahead: Vec<(String, DirRead)>,
    /// Names skipped so far, as [`Walk::skipped`] counts them.
    pub skipped: u64,
}

/// A directory's items in path order and the names it skipped, or why it
/// could not be read.
type DirRead = Result<(std::vec::IntoIter<Sorted>, u64), StoreError>;

/// How far a threaded store looks among a directory's remaining items for
/// the next subdirectories to read side by side.
const AHEAD_LOOK: usize = 4096;

/// One item of a directory in a walk in path order: an entry, or a
/// subdirectory's contents (named with a trailing `/`: that is where they
/// sort among its siblings).
#[derive(Debug)]
enum Sorted {
    Entry(WalkEntry),
    Under(String),
}

impl Sorted {
    fn key(&self) -> &str {
        match self {
            Sorted::Entry(e) => e.path.as_str(),
            Sorted::Under(d) => d,
        }
    }
}

/// Entries [`FsStore`] gives a walk in path order at a time, at least.
const WALK_STEP: usize = 1024;

/// The result of hashing one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashed {
    /// BLAKE3 of what was read.
    pub hash: Hash,
    /// Bytes read.
    pub len: u64,
    /// Stat before reading.
    pub before: Stat,
    /// Stat after reading: differs from `before` when the file changed
    /// while it was read.
    pub after: Stat,
}

/// Piece size for reads and copies.
pub const IO_CHUNK: usize = 1 << 20;

/// File access for the sessions.
pub trait Storage {
    /// Lists the tree without following symlinks, skipping the state
    /// folder and excluded paths (not descending into excluded
    /// directories).
    ///
    /// # Errors
    /// A [`StoreError`] when the root cannot be read.
    fn walk(&mut self, exclude: &Exclude) -> Result<Walk, StoreError>;

    /// [`Storage::walk`] in path order, a part at a time: appends the next
    /// entries to `out` (nothing once the walk is done), `cursor` keeping
    /// where it stands (start with [`WalkCursor::default`]). The store may
    /// be used between the parts. By default the whole walk comes at once,
    /// sorted; [`FsStore`] reads a directory at a time, so a walk of a
    /// large tree is never whole in memory.
    ///
    /// # Errors
    /// As [`Storage::walk`].
    fn walk_sorted(
        &mut self,
        exclude: &Exclude,
        cursor: &mut WalkCursor,
        out: &mut Vec<WalkEntry>,
    ) -> Result<(), StoreError> {
        if std::mem::replace(&mut cursor.started, true) {
            return Ok(());
        }
        let mut w = self.walk(exclude)?;
        if !w.entries.is_sorted_by(|a, b| a.path <= b.path) {
            w.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        }
        cursor.skipped += w.skipped;
        out.append(&mut w.entries);
        Ok(())
    }

    /// `lstat`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] and the like.
    fn stat(&mut self, path: &str) -> Result<Stat, StoreError>;

    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError>;

    /// A symlink's target.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn read_link(&mut self, path: &str) -> Result<Vec<u8>, StoreError>;

    /// Creates an empty regular file, or truncates an existing one.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn create(&mut self, path: &str) -> Result<(), StoreError>;

    /// Writes at `offset` into an existing regular file (never through a
    /// symlink).
    ///
    /// # Errors
    /// A [`StoreError`].
    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), StoreError>;

    /// The signature of the regular file `path` of `size` bytes (never
    /// through a symlink), cut with `params`, read through `buf` (grown to
    /// [`IO_CHUNK`] if shorter); `None` when the file is not there as
    /// recorded (gone, not a regular file, not `size` bytes long).
    /// The default reads it with [`Storage::read_at`] and builds it on the
    /// calling thread ([`FsStore`] takes it, threads or not); a store may
    /// build it otherwise, the signature the same.
    ///
    /// # Errors
    /// A [`StoreError`] other than the file not being there as recorded.
    fn signature(
        &mut self,
        path: &str,
        size: u64,
        params: ChunkParams,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Vec<SigChunk>>, StoreError> {
        read_signature(self, path, size, params, buf)
    }

    /// Copies up to `len` bytes of `from` at `from_offset` into the
    /// existing regular file `to` at `to_offset` (never through a
    /// symlink); returns the bytes copied, fewer when `from` ends first.
    /// The default reads and writes through a buffer; a real store may let
    /// the kernel copy (a replica applying a patch copies its staged
    /// ranges into the live file this way).
    ///
    /// # Errors
    /// A [`StoreError`].
    fn copy_range(
        &mut self,
        from: &str,
        from_offset: u64,
        to: &str,
        to_offset: u64,
        len: u64,
    ) -> Result<u64, StoreError> {
        let mut buf = vec![0u8; usize::try_from(len).map_or(IO_CHUNK, |l| l.min(IO_CHUNK))];
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done).map_or(buf.len(), |w| w.min(buf.len()));
            let n = self.read_at(from, from_offset + done, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            self.write_at(to, to_offset + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(done)
    }

    /// Sets an existing regular file's length (never through a symlink):
    /// cut at `len`, or extended with zeros to it. A replica patching a
    /// file in place uses it when the new content is shorter.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError>;

    /// Makes a file's data durable (`fsync`); on a directory, its entries.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn sync_file(&mut self, path: &str) -> Result<(), StoreError>;

    /// Makes several files' data (or directories' entries) durable; a
    /// real store may overlap the flushes. The default syncs them one by
    /// one.
    ///
    /// # Errors
    /// The first [`StoreError`].
    fn sync_files(&mut self, paths: &[String]) -> Result<(), StoreError> {
        for p in paths {
            self.sync_file(p)?;
        }
        Ok(())
    }

    /// Makes a directory's entries durable (`fsync` of the directory).
    ///
    /// # Errors
    /// A [`StoreError`].
    fn sync_dir(&mut self, path: &str) -> Result<(), StoreError>;

    /// Atomically renames, replacing a non-directory at `to`.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError>;

    /// Removes a file or symlink ([`StoreError::IsDir`] for a directory).
    ///
    /// # Errors
    /// A [`StoreError`].
    fn remove_file(&mut self, path: &str) -> Result<(), StoreError>;

    /// Removes an empty directory.
    ///
    /// # Errors
    /// A [`StoreError`] ([`StoreError::NotEmpty`] when it is not).
    fn remove_dir(&mut self, path: &str) -> Result<(), StoreError>;

    /// Creates a directory.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] and the like.
    fn create_dir(&mut self, path: &str, mode: u32) -> Result<(), StoreError>;

    /// Creates a symlink at `path` pointing to `target`.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn symlink(&mut self, target: &[u8], path: &str) -> Result<(), StoreError>;

    /// Sets permission bits and mtime of a file or directory.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn set_meta(&mut self, path: &str, mode: u32, mtime_ns: i64) -> Result<(), StoreError>;

    /// Names in a directory.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn list_dir(&mut self, path: &str) -> Result<Vec<String>, StoreError>;

    /// Hashes files (a real store may do it in parallel). One result per
    /// path, in order.
    fn hash_files(&mut self, paths: &[RelPath]) -> Vec<Result<Hashed, StoreError>> {
        let mut buf = vec![0u8; IO_CHUNK];
        paths
            .iter()
            .map(|p| hash_one(self, p.as_str(), &mut buf))
            .collect()
    }
}

// ---------------------------------------------------------------------------

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The real store: `std::fs` under a root directory. Writes refuse any
/// symlink among the ancestors of their path.
///
/// # Threads
///
/// [`FsStore::new`] makes a single-threaded store: walks, hashes and
/// fsyncs run in the calling thread, one after another, and no thread is
/// ever spawned, so it fits a vendor's single-threaded loop. Threads are
/// opt-in, and they are scoped: spawned inside the call that uses them and
/// joined before it returns, never left running between calls.
///
/// - [`FsStore::with_threads`]`(n)`: a walk spreads the root's
///   subdirectories over up to `n` threads, and hashing a scan's files
///   over up to `n` threads (never more threads than directories or
///   files); a file of 32 MiB or more is hashed by all `n` together,
///   each taking whole subtrees of BLAKE3's hash tree. A signature
///   ([`Storage::signature`]) stays on the calling thread: its cut is one
///   chain, and its chunk hashes cost less than handing them to other
///   threads.
/// - [`FsStore::with_sync_threads`]`(n)`: a round's fsyncs (its staged
///   files and the directories it touched) overlap on up to `n` threads,
///   so the file system can commit them together.
/// - [`FsStore::parallel`]: both, with the machine's parallelism
///   (`std::thread::available_parallelism`) for walking and hashing and
///   [`PARALLEL_SYNC_THREADS`] for fsyncs.
///
/// This is the one place in the crate that does I/O. The engines spawn no
/// thread; the threads of a threaded store (and of the codec's opt-in
/// threaded functions it calls) live only inside the store's calls.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    threads: usize,
    sync_threads: usize,
}

/// The fsync threads of [`FsStore::parallel`]: fsync waits on the device,
/// not the CPU, so more than the machine's cores pay off.
pub const PARALLEL_SYNC_THREADS: usize = 32;

impl FsStore {
    /// A single-threaded store rooted at `root` (which must exist): no
    /// thread is spawned by any call.
    ///
    /// # Errors
    /// [`StoreError::NotDir`] when `root` is not a directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        if !fs::metadata(&root)?.is_dir() {
            return Err(StoreError::NotDir);
        }
        Ok(Self {
            root,
            threads: 1,
            sync_threads: 1,
        })
    }

    /// A store rooted at `root` that walks and hashes on up to the
    /// machine's parallelism and overlaps fsyncs on up to
    /// [`PARALLEL_SYNC_THREADS`] threads (see [Threads](FsStore#threads)).
    ///
    /// # Errors
    /// [`StoreError::NotDir`] when `root` is not a directory.
    pub fn parallel(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self::new(root)?
            .with_threads(threads)
            .with_sync_threads(PARALLEL_SYNC_THREADS))
    }

    /// Walks and hashes on up to `threads` scoped threads; 0 or 1 (the
    /// default) keeps them in the calling thread.
    #[must_use]
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Overlaps fsyncs on up to `threads` scoped threads; 0 or 1 (the
    /// default) syncs one file after another in the calling thread.
    #[must_use]
    pub fn with_sync_threads(mut self, threads: usize) -> Self {
        self.sync_threads = threads.max(1);
        self
    }

    /// The root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }

    /// Full path for a write: every ancestor must be a real directory.
    fn checked(&self, path: &str) -> Result<PathBuf, StoreError> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let anc = &path[..end + i];
            let m = fs::symlink_metadata(self.root.join(anc))?;
            if m.file_type().is_symlink() {
                return Err(StoreError::SymlinkInPath);
            }
            if !m.is_dir() {
                return Err(StoreError::NotDir);
            }
            end += i + 1;
        }
        Ok(self.full(path))
    }
}

impl FsStore {
    /// Opens an existing regular file for writing: a symlink at `path`
    /// itself is refused, not followed (checked before opening and on the
    /// handle after).
    fn open_regular(&self, path: &str) -> Result<fs::File, StoreError> {
        let p = self.checked(path)?;
        let before = fs::symlink_metadata(&p)?;
        if before.file_type().is_symlink() {
            return Err(StoreError::SymlinkInPath);
        }
        if before.is_dir() {
            return Err(StoreError::IsDir);
        }
        let f = fs::OpenOptions::new().write(true).open(&p)?;
        let m = f.metadata()?;
        if !m.is_file() || m.ino() != before.ino() || m.dev() != before.dev() {
            // Swapped for something else between the two looks.
            return Err(StoreError::SymlinkInPath);
        }
        Ok(f)
    }
}

impl FsStore {
    /// The items of directory `rel` in path order (its subdirectories'
    /// contents named, not read).
    fn sorted_dir(
        &self,
        rel: &str,
        exclude: &Exclude,
        skipped: &mut u64,
    ) -> Result<std::vec::IntoIter<Sorted>, StoreError> {
        let mut here = Walk::default();
        let mut subdirs = Vec::new();
        self.walk_dir(rel, exclude, &mut here, Some(&mut subdirs))?;
        *skipped += here.skipped;
        let mut items: Vec<Sorted> = here.entries.into_iter().map(Sorted::Entry).collect();
        items.extend(subdirs.into_iter().map(|mut d| {
            d.push('/');
            Sorted::Under(d)
        }));
        // A path never ends with `/`: the keys are distinct.
        items.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        Ok(items.into_iter())
    }

    /// [`FsStore::sorted_dir`] of each of `dirs`, the first on the calling
    /// thread and each other on a scoped thread of its own, with the names
    /// each skipped; in the order given.
    fn sorted_dirs(&self, dirs: &[String], exclude: &Exclude) -> Vec<DirRead> {
        let read = |d: &str| {
            let mut skipped = 0;
            self.sorted_dir(d, exclude, &mut skipped)
                .map(|items| (items, skipped))
        };
        let Some((first, rest)) = dirs.split_first() else {
            return Vec::new();
        };
        if rest.is_empty() {
            return vec![read(first)];
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = rest.iter().map(|d| s.spawn(move || read(d))).collect();
            let mut all = vec![read(first)];
            all.extend(handles.into_iter().map(joined));
            all
        })
    }
}

/// A scoped thread's result; one that panicked is an I/O error.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, Result<T, StoreError>>) -> Result<T, StoreError> {
    h.join().unwrap_or(Err(StoreError::Io {
        kind: std::io::ErrorKind::Other,
    }))
}

fn to_stat(m: &fs::Metadata) -> Stat {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        StatKind::Symlink
    } else if ft.is_dir() {
        StatKind::Dir
    } else if ft.is_file() {
        StatKind::File
    } else {
        StatKind::Other
    };
    Stat {
        kind,
        size: if kind == StatKind::File { m.len() } else { 0 },
        mode: m.mode() & 0o7777,
        mtime_ns: m
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec()),
        ctime_ns: m
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.ctime_nsec()),
        ino: m.ino(),
    }
}

fn ns_to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

impl FsStore {
    /// Walks `rel` (not descending into the directories it returns in
    /// `subdirs` when `subdirs` is given: the caller spreads those over
    /// threads).
    fn walk_dir(
        &self,
        rel: &str,
        exclude: &Exclude,
        out: &mut Walk,
        mut subdirs: Option<&mut Vec<String>>,
    ) -> Result<(), StoreError> {
        let dir = self.full(rel);
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                out.skipped += 1;
                continue;
            };
            if rel.is_empty() && name == STATE_DIR {
                continue;
            }
            let p = if rel.is_empty() {
                name.to_owned()
            } else {
                let mut p = String::with_capacity(rel.len() + 1 + name.len());
                p.push_str(rel);
                p.push('/');
                p.push_str(name);
                p
            };
            if exclude.matches(&p) {
                continue;
            }
            // fstatat relative to the open directory: no path walk.
            let m = match e.metadata() {
                Ok(m) => m,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err.into()),
            };
            let Ok(path) = RelPath::new(&p) else {
                out.skipped += 1;
                continue;
            };
            let stat = to_stat(&m);
            match stat.kind {
                StatKind::Other => out.skipped += 1,
                StatKind::Symlink => {
                    let target = fs::read_link(e.path())?;
                    out.entries.push(WalkEntry {
                        path,
                        stat,
                        target: Some(
                            std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()).to_vec(),
                        ),
                    });
                }
                StatKind::File => out.entries.push(WalkEntry {
                    path,
                    stat,
                    target: None,
                }),
                StatKind::Dir => {
                    out.entries.push(WalkEntry {
                        path,
                        stat,
                        target: None,
                    });
                    match subdirs.as_deref_mut() {
                        Some(v) => v.push(p),
                        None => self.walk_dir(&p, exclude, out, None)?,
                    }
                }
            }
        }
        Ok(())
    }
}

impl Storage for FsStore {
    fn walk_sorted(
        &mut self,
        exclude: &Exclude,
        cursor: &mut WalkCursor,
        out: &mut Vec<WalkEntry>,
    ) -> Result<(), StoreError> {
        if !std::mem::replace(&mut cursor.started, true) {
            let root = self.sorted_dir("", exclude, &mut cursor.skipped)?;
            cursor.open.push(root);
        }
        let goal = out.len() + WALK_STEP;
        while out.len() < goal {
            let Some(dir) = cursor.open.last_mut() else {
                break;
            };
            match dir.next() {
                None => {
                    cursor.open.pop();
                }
                Some(Sorted::Entry(e)) => out.push(e),
                Some(Sorted::Under(mut d)) => {
                    d.pop();
                    let read = match cursor.ahead.iter().position(|(p, _)| *p == d) {
                        Some(i) => cursor.ahead.swap_remove(i).1,
                        None => {
                            // With threads, the next subdirectories of the
                            // same directory are read beside this one.
                            let mut batch = vec![d];
                            if let Some(dir) = cursor.open.last() {
                                batch.extend(
                                    dir.as_slice()
                                        .iter()
                                        .take(AHEAD_LOOK)
                                        .filter_map(|s| match s {
                                            Sorted::Under(u) => Some(u[..u.len() - 1].to_string()),
                                            Sorted::Entry(_) => None,
                                        })
                                        .take(self.threads - 1),
                                );
                            }
                            let mut read = self.sorted_dirs(&batch, exclude).into_iter();
                            let first = read.next().unwrap_or(Err(StoreError::NotFound));
                            cursor.ahead.extend(batch.into_iter().skip(1).zip(read));
                            first
                        }
                    };
                    // Read later than its parent (a scan hashes between the
                    // parts): one removed or replaced meanwhile is left
                    // empty here, as the next walk finds it.
                    match read {
                        Ok((sub, skipped)) => {
                            cursor.skipped += skipped;
                            cursor.open.push(sub);
                        }
                        Err(StoreError::NotFound | StoreError::NotDir) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    fn walk(&mut self, exclude: &Exclude) -> Result<Walk, StoreError> {
        let mut out = Walk::default();
        let mut top = Vec::new();
        self.walk_dir("", exclude, &mut out, Some(&mut top))?;
        let threads = self.threads.min(top.len()).max(1);
        if threads == 1 {
            for d in &top {
                self.walk_dir(d, exclude, &mut out, None)?;
            }
            return Ok(out);
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let this = &*self;
        let parts: Vec<Result<Walk, StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Walk::default();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(d) = top.get(i) else { break };
                            this.walk_dir(d, exclude, &mut mine, None)?;
                        }
                        Ok(mine)
                    })
                })
                .collect();
            handles.into_iter().map(joined).collect()
        });
        // Into the largest part, made room for once: never the whole
        // walk twice over.
        let mut parts = parts.into_iter().collect::<Result<Vec<Walk>, _>>()?;
        let Some(largest) = (0..parts.len()).max_by_key(|&i| parts[i].entries.len()) else {
            return Ok(out);
        };
        let mut all = std::mem::take(&mut parts[largest]);
        let rest: usize = out.entries.len() + parts.iter().map(|p| p.entries.len()).sum::<usize>();
        all.entries.reserve_exact(rest);
        all.entries.append(&mut out.entries);
        all.skipped += out.skipped;
        for part in parts {
            all.entries.extend(part.entries);
            all.skipped += part.skipped;
        }
        Ok(all)
    }

    fn stat(&mut self, path: &str) -> Result<Stat, StoreError> {
        Ok(to_stat(&fs::symlink_metadata(self.full(path))?))
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let f = fs::File::open(self.checked(path)?)?;
        let mut done = 0;
        while done < buf.len() {
            let n = f.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn read_link(&mut self, path: &str) -> Result<Vec<u8>, StoreError> {
        let t = fs::read_link(self.full(path))?;
        Ok(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()).to_vec())
    }

    fn create(&mut self, path: &str) -> Result<(), StoreError> {
        let p = self.checked(path)?;
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&p)?;
        }
        fs::File::create(p)?;
        Ok(())
    }

    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.open_regular(path)?.write_all_at(data, offset)?;
        Ok(())
    }

    fn copy_range(
        &mut self,
        from: &str,
        from_offset: u64,
        to: &str,
        to_offset: u64,
        len: u64,
    ) -> Result<u64, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let src = fs::File::open(self.checked(from)?)?;
        let dst = self.open_regular(to)?;
        (&src).seek(SeekFrom::Start(from_offset))?;
        (&dst).seek(SeekFrom::Start(to_offset))?;
        // std copies file to file in the kernel (copy_file_range) where it
        // can: no pass through this process's memory.
        Ok(std::io::copy(&mut (&src).take(len), &mut &dst)?)
    }

    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError> {
        self.open_regular(path)?.set_len(len)?;
        Ok(())
    }

    fn sync_file(&mut self, path: &str) -> Result<(), StoreError> {
        fs::File::open(self.checked(path)?)?.sync_all()?;
        Ok(())
    }

    fn sync_dir(&mut self, path: &str) -> Result<(), StoreError> {
        fs::File::open(self.checked(path)?)?.sync_all()?;
        Ok(())
    }

    fn sync_files(&mut self, paths: &[String]) -> Result<(), StoreError> {
        // fsync waits on the device, not the CPU: overlapping many lets the
        // file system commit them together (only when asked for).
        let threads = self.sync_threads.min(paths.len());
        if threads <= 1 {
            for p in paths {
                self.sync_file(p)?;
            }
            return Ok(());
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let this = &*self;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| -> Result<(), StoreError> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(p) = paths.get(i) else {
                                return Ok(());
                            };
                            fs::File::open(this.checked(p)?)?.sync_all()?;
                        }
                    })
                })
                .collect();
            handles.into_iter().try_for_each(joined)
        })
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        fs::rename(self.checked(from)?, self.checked(to)?)?;
        Ok(())
    }

    fn remove_file(&mut self, path: &str) -> Result<(), StoreError> {
        let p = self.checked(path)?;
        if fs::symlink_metadata(&p)?.is_dir() {
            return Err(StoreError::IsDir);
        }
        fs::remove_file(p)?;
        Ok(())
    }

    fn remove_dir(&mut self, path: &str) -> Result<(), StoreError> {
        let p = self.checked(path)?;
        if !fs::symlink_metadata(&p)?.is_dir() {
            return Err(StoreError::NotDir);
        }
        fs::remove_dir(p)?;
        Ok(())
    }

    fn create_dir(&mut self, path: &str, mode: u32) -> Result<(), StoreError> {
        let p = self.checked(path)?;
        fs::create_dir(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777 | 0o700))?;
        Ok(())
    }

    fn symlink(&mut self, target: &[u8], path: &str) -> Result<(), StoreError> {
        let t = std::ffi::OsStr::from_bytes_compat(target);
        std::os::unix::fs::symlink(t, self.checked(path)?)?;
        Ok(())
    }

    fn set_meta(&mut self, path: &str, mode: u32, mtime_ns: i64) -> Result<(), StoreError> {
        let p = self.checked(path)?;
        let m = fs::symlink_metadata(&p)?;
        if m.file_type().is_symlink() {
            return Ok(());
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))?;
        let f = if m.is_dir() {
            fs::File::open(&p)?
        } else {
            fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .or_else(|_| fs::File::open(&p))?
        };
        f.set_modified(ns_to_time(mtime_ns))?;
        Ok(())
    }

    fn list_dir(&mut self, path: &str) -> Result<Vec<String>, StoreError> {
        let mut v = Vec::new();
        for e in fs::read_dir(self.checked(path)?)? {
            if let Some(n) = e?.file_name().to_str() {
                v.push(n.to_owned());
            }
        }
        v.sort();
        Ok(v)
    }

    fn hash_files(&mut self, paths: &[RelPath]) -> Vec<Result<Hashed, StoreError>> {
        if self.threads <= 1 {
            let mut buf = vec![0u8; IO_CHUNK];
            return paths
                .iter()
                .map(|p| fs_hash(&self.root, p.as_str(), &mut buf))
                .collect();
        }
        // Files of SPLIT_MIN and more are set aside by the queue and then
        // hashed one at a time by every thread together, so one large file
        // does not leave the other threads idle.
        let threads = self.threads.min(paths.len()).max(1);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let root = &self.root;
        let work = || {
            let mut buf = vec![0u8; IO_CHUNK];
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(p) = paths.get(i) else { break };
                mine.push((i, fs_hash_or_defer(root, p.as_str(), &mut buf)));
            }
            mine
        };
        /// A thread's results: a path's index, and its hash or `None`
        /// when it was set aside.
        type Part = Vec<(usize, Option<Result<Hashed, StoreError>>)>;
        let mut parts: Vec<Part> = if threads == 1 {
            vec![work()]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        let mut out: Vec<Option<Result<Hashed, StoreError>>> =
            (0..paths.len()).map(|_| None).collect();
        for part in parts.drain(..) {
            for (i, r) in part {
                if let Some(slot) = out.get_mut(i) {
                    *slot =
                        Some(r.unwrap_or_else(|| {
                            fs_hash_split(root, paths[i].as_str(), self.threads)
                        }));
                }
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or(Err(StoreError::Io {
                    kind: std::io::ErrorKind::Other,
                }))
            })
            .collect()
    }
}

fn fs_hash(root: &Path, path: &str, buf: &mut [u8]) -> Result<Hashed, StoreError> {
    let p = root.join(path);
    let before = to_stat(&fs::symlink_metadata(&p)?);
    fs_hash_from(&p, before, buf)
}

/// [`fs_hash`] of the file at `p`, its stat `before` taken.
fn fs_hash_from(p: &Path, before: Stat, buf: &mut [u8]) -> Result<Hashed, StoreError> {
    use std::io::Read;
    if before.kind != StatKind::File {
        return Err(StoreError::Io {
            kind: std::io::ErrorKind::InvalidInput,
        });
    }
    let mut h = blake3::Hasher::new();
    if cfg!(feature = "mmap") && before.size <= MMAP_MAX {
        // One pass over the page cache, no copy.
        #[cfg(feature = "mmap")]
        h.update_mmap(p)?;
    } else {
        // Large files through a bounded buffer: a mapping would count the
        // whole file in the resident set.
        let mut f = fs::File::open(p)?;
        loop {
            let n = f.read(buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    let after = to_stat(&fs::symlink_metadata(p)?);
    Ok(Hashed {
        hash: *h.finalize().as_bytes(),
        len: h.count(),
        before,
        after,
    })
}

/// Files from this size up are hashed by all of a threaded store's threads
/// together (`fs_hash_split`).
const SPLIT_MIN: u64 = 32 << 20;

/// [`Storage::signature`]: the file read from the start through `buf`,
/// piece by piece, into a one-thread builder.
fn read_signature<S: Storage + ?Sized>(
    store: &mut S,
    path: &str,
    size: u64,
    params: ChunkParams,
    buf: &mut Vec<u8>,
) -> Result<Option<Vec<SigChunk>>, StoreError> {
    let mut b = SignatureBuilder::new(params);
    if buf.len() < IO_CHUNK {
        buf.resize(IO_CHUNK, 0);
    }
    let mut off = 0u64;
    while off < size {
        // Whole buffers: a file grown past `size` reads past it, and is
        // not there as recorded.
        let n = match store.read_at(path, off, buf) {
            Ok(n) => n,
            // Not there as recorded (changed locally).
            Err(e) if e.is_not_there() => return Ok(None),
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        b.update(&buf[..n]);
        off += n as u64;
    }
    if off != size {
        return Ok(None);
    }
    Ok(Some(b.finish()))
}

/// `fs_hash`, or `None` for a regular file of [`SPLIT_MIN`] bytes or more
/// (to be hashed by [`fs_hash_split`]).
fn fs_hash_or_defer(root: &Path, path: &str, buf: &mut [u8]) -> Option<Result<Hashed, StoreError>> {
    let p = root.join(path);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_file() && m.len() >= SPLIT_MIN => None,
        Ok(m) => Some(fs_hash_from(&p, to_stat(&m), buf)),
        Err(e) => Some(Err(e.into())),
    }
}

/// One file's BLAKE3 hash by `threads` threads: the file is cut along
/// the hash's own tree (each piece a whole subtree, at most an eighth of
/// a thread's share), the threads take the pieces in turn and find each
/// one's chaining value, and the values are merged up the tree to the
/// root. The same hash as one pass over the file (a unit test holds it to
/// `blake3::hash` across sizes and thread counts).
fn fs_hash_split(root: &Path, path: &str, threads: usize) -> Result<Hashed, StoreError> {
    use blake3::hazmat::HasherExt as _;
    let p = root.join(path);
    let before = to_stat(&fs::symlink_metadata(&p)?);
    if before.kind != StatKind::File {
        return Err(StoreError::Io {
            kind: std::io::ErrorKind::InvalidInput,
        });
    }
    let size = before.size;
    let threads = threads.max(1);
    // Pieces of a power of two, 4 MiB or more: about eight a thread.
    let piece = (size / (threads as u64 * 8))
        .max(4 << 20)
        .next_power_of_two();
    let Some(split) = Split::new(size, piece) else {
        // Too small to split: one pass.
        return fs_hash(root, path, &mut vec![0u8; IO_CHUNK]);
    };
    let leaves = &split.pieces;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let p = &p;
    // Per piece: its chaining value and the bytes read (short when the
    // file shrank while it was read).
    let work = || -> Result<Vec<(usize, blake3::hazmat::ChainingValue, u64)>, StoreError> {
        let f = fs::File::open(p)?;
        let mut buf = vec![0u8; IO_CHUNK];
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(start, len)) = leaves.get(i) else {
                break;
            };
            let mut h = piece_hasher(start);
            let mut at = start;
            while at < start + len {
                let want = usize::try_from(start + len - at).map_or(IO_CHUNK, |w| w.min(IO_CHUNK));
                let n = f.read_at(&mut buf[..want], at)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                at += n as u64;
            }
            mine.push((i, h.finalize_non_root(), at - start));
        }
        Ok(mine)
    };
    let parts: Vec<Result<Vec<_>, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(leaves.len()))
            .map(|_| s.spawn(work))
            .collect();
        handles.into_iter().map(joined).collect()
    });
    let mut cvs = vec![[0u8; 32]; leaves.len()];
    let mut read = 0u64;
    for part in parts {
        for (i, c, n) in part? {
            cvs[i] = c;
            read += n;
        }
    }
    let after = to_stat(&fs::symlink_metadata(p)?);
    let hash = split.root(&cvs);
    Ok(Hashed {
        hash: *hash.as_bytes(),
        // Short of the size when the file shrank: the caller sees the
        // change (and the stat after) and does not take the hash.
        len: read,
        before,
        after,
    })
}

/// Files up to this size are hashed through a memory map.
const MMAP_MAX: u64 = 8 << 20;

trait OsStrCompat {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}

impl OsStrCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}
