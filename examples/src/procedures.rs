//! What the operator's procedures need beyond the pair engine: the staging
//! folder where firmware images, language packs and configuration archives
//! wait, the image's hand-over to the peer on the link's transfer channel
//! (a Passive Backup does not sync), the vendor's `[hooks]` commands, and
//! the recent log that `GET /logs` downloads.
//!
//! # The transfer channel's frames
//!
//! Each payload on [`failover_orchestrator::pair::CHANNEL_TRANSFER`] starts
//! with a tag byte:
//!
//! | tag | frame | rest |
//! | --- | --- | --- |
//! | 0 | begin | JSON [`ImageMeta`] |
//! | 1 | chunk | offset (u64, big-endian), then the bytes |
//! | 2 | end | nothing |
//! | 3 | answer | JSON `{"ok":bool,"error":string}` |
//!
//! The sender streams one image at a time, in order; the receiver writes it
//! to `incoming.part` in its staging folder, checks the size and BLAKE3
//! hash the begin frame announced, keeps it under its own name and
//! answers. Anything out of order, too large or not matching is refused
//! with its reason, and counted.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What an image installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A firmware image.
    Firmware,
    /// A language pack.
    LanguagePack,
}

impl ImageKind {
    /// `firmware` or `language_pack`, as the API and the hook see it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Firmware => "firmware",
            ImageKind::LanguagePack => "language_pack",
        }
    }

    /// Parses the API's `kind` field.
    ///
    /// # Errors
    /// The field's value, when it is neither.
    pub fn parse(s: &str) -> Result<ImageKind, String> {
        match s {
            "firmware" => Ok(ImageKind::Firmware),
            "language_pack" => Ok(ImageKind::LanguagePack),
            other => Err(format!(
                "kind `{other}`: expected firmware or language_pack"
            )),
        }
    }

    /// For people.
    #[must_use]
    pub fn words(self) -> &'static str {
        match self {
            ImageKind::Firmware => "firmware",
            ImageKind::LanguagePack => "language pack",
        }
    }
}

/// A staged file: its name in the staging folder, size and BLAKE3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    /// File name inside the staging folder.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// BLAKE3, lowercase hex.
    pub blake3: String,
}

/// An image to install: the file, what it installs and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The staged file.
    #[serde(flatten)]
    pub file: StagedFile,
    /// Firmware or language pack.
    pub kind: ImageKind,
    /// The version it installs, as `[hooks] version` prints it afterwards.
    pub version: String,
}

/// Why a staging request is refused.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The name is empty, absolute outside the folder, or climbs out of it.
    #[error("`{0}` is not a file inside the staging folder")]
    Outside(String),
    /// Larger than `[hooks] max_image_mib`.
    #[error("larger than the {limit} bytes allowed ([hooks] max_image_mib)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// No such file.
    #[error("`{0}`: no such file in the staging folder")]
    Missing(String),
    /// The file system.
    #[error("staging folder: {0}")]
    Io(#[from] std::io::Error),
}

impl StagingError {
    /// `snake_case`, stable, for the API's `code`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            StagingError::Outside(_) => "outside_staging",
            StagingError::TooLarge { .. } => "too_large",
            StagingError::Missing(_) => "no_such_file",
            StagingError::Io(_) => "io",
        }
    }
}

/// The staging folder and its size limit.
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
    max_bytes: u64,
}

/// The name the current upgrade's image is described under.
const UPGRADE_META: &str = "upgrade.json";
/// Where a received image is written until it is checked.
const INCOMING: &str = "incoming.part";

impl Staging {
    /// The folder (created when missing, readable by the node's user
    /// only) and the largest file it takes.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn new(dir: &Path, max_bytes: u64) -> std::io::Result<Staging> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let meta = std::fs::metadata(dir)?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Staging {
            dir: dir.canonicalize()?,
            max_bytes,
        })
    }

    /// The folder.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size limit.
    #[must_use]
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The path of `name`: a plain file name, or a path that resolves
    /// inside the folder (symbolic links included). Never a path outside.
    ///
    /// # Errors
    /// [`StagingError::Outside`] for anything else.
    pub fn confine(&self, name: &str) -> Result<PathBuf, StagingError> {
        let outside = || StagingError::Outside(name.to_string());
        if name.is_empty() || name.contains('\0') {
            return Err(outside());
        }
        let p = Path::new(name);
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            if p.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(outside());
            }
            self.dir.join(p)
        };
        // Resolve what exists (links included) and check the result.
        let resolved = match joined.canonicalize() {
            Ok(r) => r,
            Err(_) => {
                let parent = joined.parent().ok_or_else(outside)?.canonicalize();
                let file = joined.file_name().ok_or_else(outside)?;
                parent.map_err(|_| outside())?.join(file)
            }
        };
        if resolved.parent() != Some(self.dir.as_path()) {
            return Err(outside());
        }
        Ok(resolved)
    }

    /// A writer for a new file `name` (a plain file name): it hashes and
    /// counts as it writes and refuses to pass the limit; `finish` syncs it
    /// and gives it its name.
    ///
    /// # Errors
    /// [`StagingError`].
    pub fn writer(&self, name: &str) -> Result<StageWriter, StagingError> {
        let path = self.confine(name)?;
        if path
            .file_name()
            .and_then(|f| f.to_str())
            .is_none_or(|f| f.starts_with('.') || f == UPGRADE_META || f == INCOMING)
        {
            return Err(StagingError::Outside(name.to_string()));
        }
        static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".upload-{n}.part"));
        let file = std::fs::File::create(&tmp)?;
        Ok(StageWriter {
            file,
            tmp,
            path,
            hasher: blake3::Hasher::new(),
            written: 0,
            limit: self.max_bytes,
        })
    }

    /// Size and BLAKE3 of a file already in the folder.
    ///
    /// # Errors
    /// [`StagingError`].
    pub fn describe(&self, name: &str) -> Result<StagedFile, StagingError> {
        let path = self.confine(name)?;
        let meta = std::fs::metadata(&path).map_err(|_| StagingError::Missing(name.into()))?;
        if !meta.is_file() {
            return Err(StagingError::Missing(name.into()));
        }
        if meta.len() > self.max_bytes {
            return Err(StagingError::TooLarge {
                limit: self.max_bytes,
            });
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(&path)?)?;
        Ok(StagedFile {
            name: file_name(&path),
            size: meta.len(),
            blake3: hasher.finalize().to_hex().to_string(),
        })
    }

    /// The image the next install uses, as last recorded.
    #[must_use]
    pub fn upgrade_image(&self) -> Option<ImageMeta> {
        let b = std::fs::read(self.dir.join(UPGRADE_META)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Records the image the next install uses (durably).
    ///
    /// # Errors
    /// The file system's.
    pub fn set_upgrade_image(&self, meta: &ImageMeta) -> std::io::Result<()> {
        let tmp = self.dir.join(".upgrade.json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(meta)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(UPGRADE_META))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The path of a staged file by its name.
    #[must_use]
    pub fn path_of(&self, file: &StagedFile) -> PathBuf {
        self.dir.join(&file.name)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A file being staged; see [`Staging::writer`].
pub struct StageWriter {
    file: std::fs::File,
    tmp: PathBuf,
    path: PathBuf,
    hasher: blake3::Hasher,
    written: u64,
    limit: u64,
}

impl StageWriter {
    /// Appends `bytes`.
    ///
    /// # Errors
    /// [`StagingError::TooLarge`] past the limit (the partial file is
    /// removed), or the file system's.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StagingError> {
        self.written += bytes.len() as u64;
        if self.written > self.limit {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(StagingError::TooLarge { limit: self.limit });
        }
        self.hasher.update(bytes);
        self.file.write_all(bytes)?;
        Ok(())
    }

    /// Syncs the file and moves it under its name.
    ///
    /// # Errors
    /// The file system's.
    pub fn finish(self) -> Result<StagedFile, StagingError> {
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(StagedFile {
            name: file_name(&self.path),
            size: self.written,
            blake3: self.hasher.finalize().to_hex().to_string(),
        })
    }
}

impl Drop for StageWriter {
    fn drop(&mut self) {
        // Unfinished (an error, a dropped upload): nothing half-written
        // stays. After `finish` the name is gone and this does nothing.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

// ---------------------------------------------------------------------
// The transfer channel

/// Bytes of image per chunk frame.
pub const CHUNK: usize = 256 * 1024;

/// One frame on the transfer channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferFrame {
    /// An image follows.
    Begin(ImageMeta),
    /// Its bytes at `offset`.
    Chunk {
        /// Where they go.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// All bytes sent.
    End,
    /// The receiver's answer to an image.
    Answer {
        /// Stored, size and hash checked.
        ok: bool,
        /// Why not.
        error: String,
    },
}

/// A frame that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Empty payload.
    #[error("empty transfer frame")]
    Empty,
    /// A tag this node does not know.
    #[error("unknown transfer frame tag {0}")]
    UnknownTag(u8),
    /// A chunk shorter than its offset.
    #[error("truncated transfer chunk")]
    Truncated,
    /// Bad JSON in a begin or answer frame.
    #[error("transfer frame: {0}")]
    Json(String),
}

#[derive(Serialize, Deserialize)]
struct AnswerBody {
    ok: bool,
    error: String,
}

impl TransferFrame {
    /// The payload to send.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        match self {
            TransferFrame::Begin(meta) => {
                let mut v = vec![0];
                v.extend(serde_json::to_vec(meta).unwrap_or_default());
                v
            }
            TransferFrame::Chunk { offset, data } => {
                let mut v = Vec::with_capacity(9 + data.len());
                v.push(1);
                v.extend_from_slice(&offset.to_be_bytes());
                v.extend_from_slice(data);
                v
            }
            TransferFrame::End => vec![2],
            TransferFrame::Answer { ok, error } => {
                let mut v = vec![3];
                let body = AnswerBody {
                    ok: *ok,
                    error: error.clone(),
                };
                v.extend(serde_json::to_vec(&body).unwrap_or_default());
                v
            }
        }
    }

    /// Decodes a payload.
    ///
    /// # Errors
    /// [`FrameError`].
    pub fn decode(b: &[u8]) -> Result<TransferFrame, FrameError> {
        let (&tag, rest) = b.split_first().ok_or(FrameError::Empty)?;
        let json = |e: serde_json::Error| FrameError::Json(e.to_string());
        match tag {
            0 => Ok(TransferFrame::Begin(
                serde_json::from_slice(rest).map_err(json)?,
            )),
            1 => {
                let (off, data) = rest.split_at_checked(8).ok_or(FrameError::Truncated)?;
                let offset = u64::from_be_bytes(off.try_into().map_err(|_| FrameError::Truncated)?);
                Ok(TransferFrame::Chunk {
                    offset,
                    data: data.to_vec(),
                })
            }
            2 => Ok(TransferFrame::End),
            3 => {
                let a: AnswerBody = serde_json::from_slice(rest).map_err(json)?;
                Ok(TransferFrame::Answer {
                    ok: a.ok,
                    error: a.error,
                })
            }
            t => Err(FrameError::UnknownTag(t)),
        }
    }
}

/// The receiving end: writes the image the peer sends into the staging
/// folder and checks it.
pub struct Receiver {
    staging: Staging,
    current: Option<Incoming>,
    /// Images stored.
    pub stored: u64,
    /// Frames or images refused.
    pub refused: u64,
}

struct Incoming {
    meta: ImageMeta,
    file: std::fs::File,
    hasher: blake3::Hasher,
    written: u64,
}

impl Receiver {
    /// A receiver writing into `staging`.
    #[must_use]
    pub fn new(staging: Staging) -> Receiver {
        Receiver {
            staging,
            current: None,
            stored: 0,
            refused: 0,
        }
    }

    /// The folder it writes into.
    #[must_use]
    pub fn staging(&self) -> &Staging {
        &self.staging
    }

    /// One payload from the peer; the answer to send back, if any.
    pub fn handle(&mut self, payload: &[u8]) -> Option<TransferFrame> {
        let r = match TransferFrame::decode(payload) {
            Ok(f) => self.frame(f),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(None) => None,
            Ok(Some(stored)) => {
                self.stored += 1;
                tracing::info!(
                    name = %stored.file.name,
                    size = stored.file.size,
                    blake3 = %stored.file.blake3,
                    "image from the peer stored and checked"
                );
                Some(TransferFrame::Answer {
                    ok: true,
                    error: String::new(),
                })
            }
            Err(error) => {
                self.refused += 1;
                self.abandon();
                tracing::warn!(%error, "image from the peer refused");
                Some(TransferFrame::Answer { ok: false, error })
            }
        }
    }

    fn abandon(&mut self) {
        if self.current.take().is_some() {
            let _ = std::fs::remove_file(self.staging.dir.join(INCOMING));
        }
    }

    fn frame(&mut self, f: TransferFrame) -> Result<Option<ImageMeta>, String> {
        match f {
            TransferFrame::Begin(meta) => {
                self.abandon();
                if meta.file.size > self.staging.max_bytes {
                    return Err(format!(
                        "{} bytes: more than this unit's {} ([hooks] max_image_mib)",
                        meta.file.size, self.staging.max_bytes
                    ));
                }
                // The name must be a plain file name here too.
                self.staging
                    .confine(&meta.file.name)
                    .map_err(|e| e.to_string())?;
                let file = std::fs::File::create(self.staging.dir.join(INCOMING))
                    .map_err(|e| format!("staging folder: {e}"))?;
                self.current = Some(Incoming {
                    meta,
                    file,
                    hasher: blake3::Hasher::new(),
                    written: 0,
                });
                Ok(None)
            }
            TransferFrame::Chunk { offset, data } => {
                let c = self.current.as_mut().ok_or("a chunk with no image begun")?;
                if offset != c.written {
                    return Err(format!("chunk at {offset}, expected {}", c.written));
                }
                let end = c.written + data.len() as u64;
                if end > c.meta.file.size {
                    return Err(format!(
                        "more than the announced {} bytes",
                        c.meta.file.size
                    ));
                }
                c.hasher.update(&data);
                c.file
                    .write_all(&data)
                    .map_err(|e| format!("staging folder: {e}"))?;
                c.written = end;
                Ok(None)
            }
            TransferFrame::End => {
                let c = self.current.take().ok_or("an end with no image begun")?;
                let incoming = self.staging.dir.join(INCOMING);
                let checked = (|| {
                    if c.written != c.meta.file.size {
                        return Err(format!(
                            "{} bytes received, {} announced",
                            c.written, c.meta.file.size
                        ));
                    }
                    let got = c.hasher.finalize().to_hex().to_string();
                    if got != c.meta.file.blake3 {
                        return Err(format!(
                            "BLAKE3 {got} does not match the announced {}",
                            c.meta.file.blake3
                        ));
                    }
                    c.file
                        .sync_all()
                        .and_then(|()| {
                            std::fs::rename(&incoming, self.staging.dir.join(&c.meta.file.name))
                        })
                        .and_then(|()| self.staging.set_upgrade_image(&c.meta))
                        .map_err(|e| format!("staging folder: {e}"))
                })();
                if checked.is_err() {
                    let _ = std::fs::remove_file(&incoming);
                }
                checked.map(|()| Some(c.meta))
            }
            TransferFrame::Answer { .. } => Err("an answer where an image was expected".into()),
        }
    }
}

// ---------------------------------------------------------------------
// Hooks

/// Runs a `[hooks]` command under `/bin/sh -c` with `arg` as `$1`; its
/// standard output when it exits 0.
///
/// # Errors
/// Its exit status and the end of its standard error, for the log and the
/// procedure's outcome.
pub async fn run_hook(
    what: &str,
    cmd: &str,
    arg: Option<&Path>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, String> {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c").arg(cmd).arg(what);
    if let Some(a) = arg {
        c.arg(a);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    let out = match tokio::time::timeout(timeout, c.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("[hooks] {what}: cannot run: {e}")),
        Err(_) => return Err(format!("[hooks] {what}: no answer within {timeout:?}")),
    };
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: String = err
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    Err(format!("[hooks] {what}: {} {tail}", out.status)
        .trim_end()
        .to_string())
}

/// The versions `[hooks] version` printed: `firmware=` and
/// `language_pack=` lines (other lines ignored).
#[must_use]
pub fn parse_versions(out: &str) -> (Option<String>, Option<String>) {
    let mut fw = None;
    let mut lp = None;
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "firmware" if !v.is_empty() => fw = Some(v),
                "language_pack" if !v.is_empty() => lp = Some(v),
                _ => {}
            }
        }
    }
    (fw, lp)
}

/// Runs `[hooks] version` and sets the versions it printed over
/// `firmware` and `language_pack` (a line left out keeps its value).
///
/// # Errors
/// The hook's failure, or output with neither line.
pub async fn read_versions(
    cmd: &str,
    timeout: Duration,
    firmware: &mut String,
    language_pack: &mut String,
) -> Result<(), String> {
    let out = run_hook("version", cmd, None, &[], timeout).await?;
    let (fw, lp) = parse_versions(&out);
    if fw.is_none() && lp.is_none() {
        return Err("[hooks] version printed no firmware= or language_pack= line".into());
    }
    if let Some(fw) = fw {
        *firmware = fw;
    }
    if let Some(lp) = lp {
        *language_pack = lp;
    }
    Ok(())
}

// ---------------------------------------------------------------------
// The recent log

/// The last lines the process logged, for `GET /logs`: a writer that
/// copies everything to standard error and keeps the newest
/// [`LOG_KEEP`] bytes.
#[derive(Clone, Copy, Default)]
pub struct LogTee;

/// Bytes of log kept.
pub const LOG_KEEP: usize = 4 << 20;

static RECENT: Mutex<VecDeque<u8>> = Mutex::new(VecDeque::new());

impl Write for LogTee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        {
            let mut r = RECENT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            r.extend(buf);
            let over = r.len().saturating_sub(LOG_KEEP);
            r.drain(..over);
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogTee {
    type Writer = LogTee;
    fn make_writer(&'a self) -> LogTee {
        LogTee
    }
}

/// The kept log, oldest first, starting at a whole line.
#[must_use]
pub fn recent_log() -> Vec<u8> {
    let r = RECENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let v: Vec<u8> = r.iter().copied().collect();
    if v.len() >= LOG_KEEP
        && let Some(nl) = v.iter().position(|&b| b == b'\n')
    {
        return v[nl + 1..].to_vec();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staging(max: u64) -> (tempdir::Dir, Staging) {
        let d = tempdir::Dir::new();
        let s = Staging::new(&d.0.join("staging"), max).expect("staging");
        (d, s)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "procedures-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).expect("temp dir");
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn names_outside_the_staging_folder_are_refused() {
        let (d, s) = staging(1 << 20);
        std::fs::write(d.0.join("secret"), b"x").expect("write");
        std::os::unix::fs::symlink(d.0.join("secret"), s.dir().join("link")).expect("link");
        for bad in [
            "",
            "../secret",
            "a/../../secret",
            "/etc/passwd",
            "link",
            "sub/file",
            ".",
            "..",
        ] {
            assert!(
                matches!(s.confine(bad), Err(StagingError::Outside(_))),
                "{bad:?} was accepted"
            );
        }
        let inside = s.dir().join("fw.img");
        assert_eq!(s.confine("fw.img").expect("plain name"), inside);
        assert_eq!(
            s.confine(inside.to_str().expect("utf-8"))
                .expect("absolute inside"),
            inside
        );
    }

    #[test]
    fn a_staged_file_has_its_size_and_hash_and_the_limit_holds() {
        let (_d, s) = staging(10);
        let mut w = s.writer("fw.img").expect("writer");
        w.write(b"hello").expect("write");
        w.write(b"world").expect("write");
        let f = w.finish().expect("finish");
        assert_eq!(f.size, 10);
        assert_eq!(f.blake3, blake3::hash(b"helloworld").to_hex().to_string());
        assert_eq!(s.describe("fw.img").expect("describe"), f);
        let mut w = s.writer("big.img").expect("writer");
        assert!(matches!(
            w.write(b"0123456789a"),
            Err(StagingError::TooLarge { limit: 10 })
        ));
        drop(w);
        assert!(!s.dir().join("big.img").exists());
        let leftovers: Vec<_> = std::fs::read_dir(s.dir())
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("fw.img")]);
        assert!(matches!(
            s.writer("upgrade.json"),
            Err(StagingError::Outside(_))
        ));
    }

    fn meta(data: &[u8], name: &str) -> ImageMeta {
        ImageMeta {
            file: StagedFile {
                name: name.into(),
                size: data.len() as u64,
                blake3: blake3::hash(data).to_hex().to_string(),
            },
            kind: ImageKind::Firmware,
            version: "5.2.0".into(),
        }
    }

    fn send(r: &mut Receiver, data: &[u8], m: ImageMeta) -> Option<TransferFrame> {
        let mut answer = r.handle(&TransferFrame::Begin(m).encode());
        for (i, c) in data.chunks(3).enumerate() {
            if answer.is_some() {
                return answer;
            }
            answer = r.handle(
                &TransferFrame::Chunk {
                    offset: (i * 3) as u64,
                    data: c.to_vec(),
                }
                .encode(),
            );
        }
        answer.or_else(|| r.handle(&TransferFrame::End.encode()))
    }

    #[test]
    fn an_image_is_stored_only_when_size_and_hash_match() {
        let (_d, s) = staging(100);
        let mut r = Receiver::new(s.clone());
        let data = b"firmware image bytes";
        let ok = send(&mut r, data, meta(data, "fw.img"));
        assert_eq!(
            ok,
            Some(TransferFrame::Answer {
                ok: true,
                error: String::new()
            })
        );
        assert_eq!(std::fs::read(s.dir().join("fw.img")).expect("stored"), data);
        assert_eq!(s.upgrade_image(), Some(meta(data, "fw.img")));

        // A wrong hash, a short image, a long one, a name that climbs out,
        // one too large: each refused, nothing kept, counted.
        let mut bad_hash = meta(data, "x.img");
        bad_hash.file.blake3 = blake3::hash(b"other").to_hex().to_string();
        let mut short = meta(data, "y.img");
        short.file.size += 1;
        let mut long = meta(data, "z.img");
        long.file.size -= 1;
        let climbs = meta(data, "../evil");
        let mut huge = meta(data, "h.img");
        huge.file.size = 101;
        for m in [bad_hash, short, long, climbs, huge] {
            let name = m.file.name.clone();
            match send(&mut r, data, m) {
                Some(TransferFrame::Answer { ok: false, error }) => assert!(!error.is_empty()),
                other => panic!("{name}: {other:?}"),
            }
            assert!(!s.dir().join(&name).exists(), "{name} kept");
            assert!(!s.dir().join(INCOMING).exists());
        }
        assert_eq!((r.stored, r.refused), (1, 5));
        // The image the next install uses did not change.
        assert_eq!(s.upgrade_image(), Some(meta(data, "fw.img")));
        // Garbage and out-of-order frames: refused, never a panic.
        for junk in [&[][..], &[9], &[1, 0, 0], &[0, b'{'], &[2], &[3, b'x']] {
            assert!(matches!(
                r.handle(junk),
                Some(TransferFrame::Answer { ok: false, .. })
            ));
        }
    }

    proptest::proptest! {
        /// Whatever the peer sends, the receiver answers or waits: no
        /// panic, and nothing but checked images lands in the folder.
        #[test]
        fn hostile_frames_are_refused_never_a_panic(
            frames in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48), 0..12),
            tags in proptest::collection::vec(0u8..4, 0..12),
        ) {
            let (_d, s) = staging(64);
            let mut r = Receiver::new(s.clone());
            for (f, t) in frames.iter().zip(tags.iter().chain(std::iter::repeat(&9))) {
                let mut payload = vec![*t];
                payload.extend_from_slice(f);
                let _ = r.handle(&payload);
            }
            let _ = r.handle(&TransferFrame::End.encode());
            // After an end, only checked images (and their record) stay.
            let kept = s.upgrade_image();
            for e in std::fs::read_dir(s.dir()).expect("list").flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name == "upgrade.json" {
                    continue;
                }
                let image = kept.as_ref().filter(|k| k.file.name == name);
                proptest::prop_assert!(image.is_some(), "{} left behind", name);
                let data = std::fs::read(e.path()).expect("read");
                proptest::prop_assert_eq!(
                    blake3::hash(&data).to_hex().to_string(),
                    image.map(|k| k.file.blake3.clone()).unwrap_or_default()
                );
            }
        }
    }

    #[test]
    fn frames_round_trip() {
        let m = meta(b"abc", "fw.img");
        for f in [
            TransferFrame::Begin(m),
            TransferFrame::Chunk {
                offset: 7,
                data: vec![1, 2, 3],
            },
            TransferFrame::End,
            TransferFrame::Answer {
                ok: false,
                error: "why".into(),
            },
        ] {
            assert_eq!(TransferFrame::decode(&f.encode()), Ok(f));
        }
    }

    #[test]
    fn versions_from_the_hook() {
        assert_eq!(
            parse_versions("firmware=5.2.0\nlanguage_pack = en-2\nother=1\n"),
            (Some("5.2.0".into()), Some("en-2".into()))
        );
        assert_eq!(parse_versions("nothing\n"), (None, None));
    }

    #[tokio::test]
    async fn hooks_get_their_argument_and_report_failures() {
        let out = run_hook(
            "upgrade",
            "echo \"$1 $PBX_IMAGE_KIND\"",
            Some(Path::new("/x/fw.img")),
            &[("PBX_IMAGE_KIND", "firmware")],
            Duration::from_secs(10),
        )
        .await
        .expect("ran");
        assert_eq!(out, "/x/fw.img firmware\n");
        let err = run_hook(
            "save_config",
            "echo disk full >&2; exit 3",
            None,
            &[],
            Duration::from_secs(10),
        )
        .await
        .expect_err("failed");
        assert!(err.contains("save_config") && err.contains("disk full") && err.contains('3'));
    }
}
