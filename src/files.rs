//! File handling shared by the converter, the writer and the tools: reads capped by documented
//! limits, output paths that may not be replaced, and temporary files that are removed when the
//! process is interrupted.
//!
//! Every input a user names can be hostile (a device that never ends, a named pipe, a symbolic link
//! out of a model's folder); every output path can be a device node. The rules here are the same for
//! every tool:
//!
//! - Inputs are read through [`read_capped`], which fails once a file passes its limit instead of
//!   reading until memory runs out. The limits are the `MAX_*` constants of this module.
//! - Files found beside a model (tokenizer, vocabulary) must be regular files inside the model's
//!   folder after resolving symbolic links ([`confined_file`]): their bytes are embedded in the
//!   output, which gets shared. A Hugging Face cache snapshot (`REPO/snapshots/REVISION`) is a
//!   folder of links into its repository's `REPO/blobs`, so for a snapshot that folder counts too.
//! - An output path that exists and is not a regular file is never renamed over
//!   ([`OutputTarget`]): the atomic writers refuse it, and streams write through it.
//! - Temporary files register themselves ([`TempPath`]); [`remove_temporaries`] deletes every one
//!   still registered, for a signal handler to call before the process exits.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Largest tokenizer (`tokenizer.json` or `vocab.txt`) read, in bytes.
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;
/// Largest Hugging Face `config.json` or sentence-transformers configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest pruning recipe (JSON) read, in bytes.
pub const MAX_RECIPE_BYTES: u64 = 1 << 20;
/// Largest text input (`et-run --input`, `et-convert --calibrate`) read, in bytes.
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

/// Reads at most `limit` bytes of `path`; a longer file (or an endless device) is an error of kind
/// `InvalidData` that names the limit.
pub fn read_capped(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    read_capped_from(file, limit)
}

/// Reads at most `limit` bytes from a stream (standard input, a pipe); more is an error.
pub fn read_capped_from(reader: impl std::io::Read, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    reader.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the limit of {limit} bytes"),
        ));
    }
    Ok(out)
}

/// Checks that `path` is a regular file inside `dir` once symbolic links are resolved, and returns
/// its resolved path. `Err` holds the reason in words.
pub fn confined_file(dir: &Path, path: &Path) -> Result<PathBuf, String> {
    let real = path
        .canonicalize()
        .map_err(|e| format!("cannot resolve it: {e}"))?;
    let real_dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve the model's folder: {e}"))?;
    let in_snapshot_blobs = hub_cache_blobs(&real_dir).is_some_and(|b| real.starts_with(b));
    if !real.starts_with(&real_dir) && !in_snapshot_blobs {
        return Err(format!(
            "it resolves to {}, outside the model's folder",
            real.display()
        ));
    }
    let meta = std::fs::metadata(&real).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".to_string());
    }
    Ok(real)
}

/// The `REPO/blobs` folder (resolved) of a Hugging Face cache snapshot `REPO/snapshots/REVISION`,
/// where the snapshot's links point; `None` for any other folder.
fn hub_cache_blobs(real_dir: &Path) -> Option<PathBuf> {
    let snapshots = real_dir.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let blobs = snapshots.parent()?.join("blobs");
    blobs.is_dir().then(|| blobs.canonicalize().ok()).flatten()
}

/// What an output path currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputTarget {
    /// Nothing exists under the name.
    Absent,
    /// A regular file (or a link to one) exists: an atomic writer may replace it when allowed.
    Regular,
    /// A device node, pipe, socket or folder: never renamed over.
    Special,
}

impl OutputTarget {
    /// Looks at `path` (following a symbolic link to what it names).
    pub fn of(path: &Path) -> OutputTarget {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => OutputTarget::Regular,
            Ok(_) => OutputTarget::Special,
            Err(_) => match std::fs::symlink_metadata(path) {
                // A dangling link: replacing it would silently drop the link.
                Ok(_) => OutputTarget::Special,
                Err(_) => OutputTarget::Absent,
            },
        }
    }
}

/// Longest part of a target's file name kept in the name of its temporary sibling, in bytes, so
/// that the temporary name stays within the 255-byte limit of common file systems.
const TEMP_NAME_KEEP: usize = 96;

/// A hidden sibling of `target` for a temporary file: `.NAME.PID.N.SUFFIX`, with `NAME` the target's
/// file name cut to at most 96 bytes and `N` a counter, so that two writers in one process never
/// collide and a target name near the file system's limit still gets a valid temporary name.
pub fn temp_sibling(target: &Path, suffix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let mut cut = name.len().min(TEMP_NAME_KEEP);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let file = format!(".{}.{}.{n}.{suffix}", &name[..cut], std::process::id());
    target.with_file_name(file)
}

static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    match TEMPORARIES.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A temporary file's path, registered for [`remove_temporaries`] while it lives; dropping it
/// removes the file (if any) and the registration.
#[derive(Debug)]
pub struct TempPath {
    path: PathBuf,
}

impl TempPath {
    /// Registers the temporary sibling of `target` with `suffix` (see [`temp_sibling`]).
    pub fn beside(target: &Path, suffix: &str) -> TempPath {
        let path = temp_sibling(target, suffix);
        registry().push(path.clone());
        TempPath { path }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        registry().retain(|p| p != &self.path);
    }
}

/// Removes every registered temporary file. For a signal handler (Ctrl-C, `SIGTERM`) to call just
/// before the process exits: destructors do not run then.
pub fn remove_temporaries() {
    remove_temporaries_where(|_| true);
}

/// Removes (and unregisters) the registered temporary files that `chosen` picks.
fn remove_temporaries_where(chosen: impl Fn(&Path) -> bool) {
    let paths: Vec<PathBuf> = {
        let mut reg = registry();
        let (gone, kept) = std::mem::take(&mut *reg)
            .into_iter()
            .partition(|p| chosen(p));
        *reg = kept;
        gone
    };
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// Installs a handler for Ctrl-C, `SIGTERM` and `SIGHUP` that removes the registered temporary
/// files and exits with status 130. Fails when a handler was installed already.
pub fn exit_cleanly_on_signals() -> Result<(), String> {
    ctrlc::set_handler(|| {
        remove_temporaries();
        std::process::exit(130);
    })
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_reads_stop_at_the_limit() {
        assert_eq!(read_capped_from(&b"abc"[..], 3).unwrap(), b"abc");
        let e = read_capped_from(&b"abcd"[..], 3).unwrap_err();
        assert!(e.to_string().contains("limit of 3 bytes"), "{e}");
        #[cfg(unix)]
        {
            let e = read_capped(Path::new("/dev/zero"), 1000).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        }
    }

    #[test]
    fn temp_names_stay_short_and_distinct() {
        let long = "x".repeat(250) + ".ets";
        let a = temp_sibling(Path::new(&long), "data");
        let b = temp_sibling(Path::new(&long), "data");
        assert_ne!(a, b);
        let n = a.file_name().unwrap().len();
        assert!(n < 160, "{n}");
    }

    #[test]
    fn special_outputs_are_recognised() {
        assert_eq!(
            OutputTarget::of(Path::new("/dev/null")),
            OutputTarget::Special
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        assert_eq!(OutputTarget::of(&f), OutputTarget::Absent);
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(OutputTarget::of(&f), OutputTarget::Regular);
        assert_eq!(OutputTarget::of(dir.path()), OutputTarget::Special);
    }

    #[test]
    fn registered_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempPath::beside(&dir.path().join("out.ets"), "data");
        std::fs::write(t.path(), b"partial").unwrap();
        // Only this test's files: other tests of this process have temporaries registered too.
        remove_temporaries_where(|p| p.starts_with(dir.path()));
        assert!(!t.path().exists());
        assert!(!registry().contains(&t.path().to_path_buf()));
        drop(t);
    }

    #[test]
    fn confinement() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"x").unwrap();
        let inside = dir.path().join("vocab.txt");
        std::fs::write(&inside, b"x").unwrap();
        assert!(confined_file(dir.path(), &inside).is_ok());
        #[cfg(unix)]
        {
            let link = dir.path().join("tokenizer.json");
            std::os::unix::fs::symlink(&secret, &link).unwrap();
            let e = confined_file(dir.path(), &link).unwrap_err();
            assert!(e.contains("outside the model's folder"), "{e}");
        }
    }

    #[test]
    #[cfg(unix)]
    fn hub_cache_snapshot_links_into_its_blobs() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("models--org--name");
        let snapshot = repo.join("snapshots").join("0123abcd");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs").join("f00d"), b"x").unwrap();
        std::fs::write(root.path().join("secret"), b"x").unwrap();
        let link = snapshot.join("tokenizer.json");
        std::os::unix::fs::symlink("../../blobs/f00d", &link).unwrap();
        assert!(confined_file(&snapshot, &link).is_ok());
        // A link elsewhere in the cache, or anywhere else, is still refused.
        let out = snapshot.join("vocab.txt");
        std::os::unix::fs::symlink("../../../secret", &out).unwrap();
        let e = confined_file(&snapshot, &out).unwrap_err();
        assert!(e.contains("outside the model's folder"), "{e}");
        // The same layout without the `snapshots` name is an ordinary folder.
        let plain = repo.join("other").join("rev");
        std::fs::create_dir_all(&plain).unwrap();
        let l2 = plain.join("tokenizer.json");
        std::os::unix::fs::symlink("../../blobs/f00d", &l2).unwrap();
        assert!(confined_file(&plain, &l2).is_err());
    }
}
