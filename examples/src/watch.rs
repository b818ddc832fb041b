//! Change hints for a source: the kernel's change notifications on the
//! replicated tree (inotify, through the `notify` crate), turned into
//! paths relative to the tree for the sync worker thread.
//!
//! Reads and opens are not changes and are dropped (the source's own
//! hashing opens every file it reads); so are the state folder
//! (`.sync-delta/`) and excluded paths. Lost notifications (the kernel's
//! queue overflowed) are reported as an overflow: the next round walks
//! the whole tree. An error (a directory that could not be watched, the
//! watch itself failing) means hints will not be complete again: the
//! source stops using them, walks the tree every round and counts its
//! data-loss window from its last confirmed full scan. Batching is the
//! source's (`[sync] batch_ms`): each notification goes to the worker
//! as it comes, stamped with when it came.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use notify::{Event, EventKind, RecursiveMode, Watcher};

use crate::link_io::ToWorker;

/// The path of `p` relative to `root` (`""` for the root itself), when it
/// is inside it and UTF-8.
fn relative(root: &Path, p: &Path) -> Option<String> {
    let rel = p.strip_prefix(root).ok()?;
    rel.to_str().map(str::to_owned)
}

/// Whether a path relative to the tree is never replicated: the state
/// folder, or an excluded path.
fn ignored(exclude: &sync_delta::Exclude, rel: &str) -> bool {
    rel == sync_delta::STATE_DIR
        || rel
            .strip_prefix(sync_delta::STATE_DIR)
            .is_some_and(|r| r.starts_with('/'))
        || (!rel.is_empty() && exclude.is_excluded(rel))
}

/// What one notification asks of the worker, if anything.
pub(crate) fn to_worker(
    root: &Path,
    exclude: &sync_delta::Exclude,
    event: notify::Result<Event>,
    at: Instant,
    wall: SystemTime,
) -> Option<ToWorker> {
    let event = match event {
        Ok(e) => e,
        Err(error) => return Some(ToWorker::HintsLost { at, error }),
    };
    if event.need_rescan() {
        return Some(ToWorker::Overflow { at, wall });
    }
    if matches!(event.kind, EventKind::Access(_)) {
        return None;
    }
    let paths: Vec<String> = event
        .paths
        .iter()
        .filter_map(|p| relative(root, p))
        .filter(|r| !ignored(exclude, r))
        .collect();
    (!paths.is_empty()).then_some(ToWorker::Hints { paths, at, wall })
}

/// Watches `dir` and everything below it, sending hints to the worker
/// through `tx` until the watcher is dropped.
///
/// # Errors
/// The kernel refused the watch (no inotify, too many watches).
pub(crate) fn watch_tree(
    dir: &Path,
    exclude: sync_delta::Exclude,
    tx: mpsc::Sender<ToWorker>,
) -> notify::Result<notify::RecommendedWatcher> {
    let root: PathBuf = dir.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        if let Some(m) = to_worker(&root, &exclude, event, Instant::now(), SystemTime::now()) {
            let _ = tx.send(m);
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, Flag, ModifyKind, RenameMode};

    fn hints(m: Option<ToWorker>) -> Option<Vec<String>> {
        match m {
            Some(ToWorker::Hints { paths, .. }) => Some(paths),
            _ => None,
        }
    }

    #[test]
    fn notifications_become_relative_hints_without_reads_state_or_exclusions() {
        let root = Path::new("/data/pbx");
        let ex = sync_delta::Exclude::new(["licenses/**"]);
        let (at, wall) = (Instant::now(), SystemTime::now());
        let ev = |kind, paths: &[&str]| {
            let mut e = Event::new(kind);
            for p in paths {
                e = e.add_path(PathBuf::from(p));
            }
            Ok(e)
        };
        let rename = ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/data/pbx/a.wav", "/data/pbx/vm/b.wav"],
        );
        assert_eq!(
            hints(to_worker(root, &ex, rename, at, wall)),
            Some(vec!["a.wav".to_owned(), "vm/b.wav".to_owned()])
        );
        let read = ev(EventKind::Access(AccessKind::Any), &["/data/pbx/a.wav"]);
        assert!(to_worker(root, &ex, read, at, wall).is_none());
        let state = ev(
            EventKind::Create(CreateKind::File),
            &["/data/pbx/.sync-delta/journal", "/data/pbx/licenses/key"],
        );
        assert!(to_worker(root, &ex, state, at, wall).is_none());
        let lookalike = ev(
            EventKind::Create(CreateKind::File),
            &["/data/pbx/.sync-delta-notes"],
        );
        assert_eq!(
            hints(to_worker(root, &ex, lookalike, at, wall)),
            Some(vec![".sync-delta-notes".to_owned()])
        );
        let lost = Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan));
        assert!(matches!(
            to_worker(root, &ex, lost, at, wall),
            Some(ToWorker::Overflow { .. })
        ));
        let failed = Err(notify::Error::generic("too many watches"));
        assert!(matches!(
            to_worker(root, &ex, failed, at, wall),
            Some(ToWorker::HintsLost { .. })
        ));
    }
}
