//! The output folder's life. It is checked before any work starts, staged beside the
//! destination, and swapped in without ever deleting data someone still needs: the old output is
//! renamed aside, the new one renamed in, and only then is the old one removed. Folders that an
//! interrupted run left behind are recognised by name and by a lock: each run holds a locked
//! claim file beside them for as long as it lives (process ids say nothing across PID
//! namespaces, and come back), so the next run restores, resumes or removes exactly what no
//! live run holds.
//!
//! Aliases are compared by file identity (device and inode), not by path strings, so a symlink,
//! a hard link or a bind mount of the input is recognised as the input.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crate::io::error::{Context, Result};
use crate::io::faults::{fault, fault_point};
use crate::{bail, err};

/// Where the pruned checkpoint goes, checked: the parent exists, the name is a plain folder
/// name, and replacing it can never touch the input.
#[derive(Clone, Debug)]
pub struct Destination {
    /// The path as the user gave it, for messages.
    pub shown: PathBuf,
    /// Canonical parent folder.
    pub parent: PathBuf,
    pub name: OsString,
    pub force: bool,
    input: PathBuf,
    /// Staging folders of interrupted runs that hold progress, oldest first (with `--resume`).
    adoptable: Vec<PathBuf>,
}

#[cfg(unix)]
type Id = (u64, u64);
#[cfg(not(unix))]
type Id = PathBuf;

/// Device and inode of a path (symlinks followed); `None` where it does not exist.
#[cfg(unix)]
fn identity(p: &Path) -> Option<Id> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(p: &Path) -> Option<Id> {
    p.canonicalize().ok()
}

/// Whether `p` is a mount point: its device differs from its parent's, or it is its own parent.
#[cfg(unix)]
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(canon) = p.canonicalize() else { return false };
    let Some(parent) = canon.parent() else { return true };
    match (std::fs::metadata(&canon), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn is_mount_point(p: &Path) -> bool {
    p.canonicalize().map(|c| c.parent().is_none()).unwrap_or(false)
}

/// Resolves a path that may not exist yet: its deepest existing ancestor is canonicalized and
/// the rest appended, with `..` applied lexically.
pub fn resolve(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().context(|| "cannot read the current folder".into())?.join(p)
    };
    let mut existing = abs.clone();
    let mut rest: Vec<OsString> = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = existing.canonicalize().context(|| format!("{}", p.display()))?;
    for part in rest.iter().rev() {
        for c in Path::new(part).components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(n) => out.push(n),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The input folder and every file directly in it, by identity.
fn input_identities(input: &Path) -> Vec<(PathBuf, Option<Id>)> {
    let mut ids = vec![(input.to_path_buf(), identity(input))];
    if let Ok(entries) = std::fs::read_dir(input) {
        for e in entries.flatten() {
            ids.push((e.path(), identity(&e.path())));
        }
    }
    ids.retain(|(_, id)| id.is_some());
    ids
}

/// Refuses `target` when it is the input or inside it; when `replacing` (the folder will be
/// moved away and deleted), also when it is one of the input's ancestors or holds anything that
/// is the input or one of its files.
fn check_not_input(input: &Path, target: &Path, shown: &Path, what: &str, replacing: bool) -> Result<()> {
    let input_canon = input.canonicalize().context(|| format!("{}", input.display()))?;
    let target_id = identity(target);
    if target_id.is_some() {
        for anc in input_canon.ancestors() {
            if identity(anc) != target_id {
                continue;
            }
            if anc == input_canon {
                bail!(
                    "{what} {} is the input folder {} (same file on disk); choose another folder",
                    shown.display(),
                    input.display()
                );
            }
            if replacing {
                bail!(
                    "{what} {} contains the input folder {}; choose another folder",
                    shown.display(),
                    input.display()
                );
            }
        }
    }
    let input_id = identity(&input_canon);
    let resolved = resolve(target)?;
    for anc in resolved.ancestors() {
        if identity(anc).is_some() && identity(anc) == input_id {
            bail!(
                "{what} {} is inside the input folder {}; choose a folder outside it",
                shown.display(),
                input.display()
            );
        }
    }
    if replacing && target_id.is_some() && target.is_dir() {
        let inputs = input_identities(&input_canon);
        // Every level: a bind mount or link of the input however deep would be emptied with the
        // folder. What cannot be inspected whole is refused.
        let mut stack = vec![target.to_path_buf()];
        let mut seen = 0usize;
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                seen += 1;
                if seen > 100_000 {
                    bail!("{what} {} holds over 100000 entries; refusing to replace it", shown.display());
                }
                let p = e.path();
                let id = identity(&p);
                if let Some((orig, _)) = inputs.iter().find(|(_, i)| id.is_some() && *i == id) {
                    bail!(
                        "{what} {} holds {}, which is the input's {} (same file on disk); choose another folder",
                        shown.display(),
                        p.display(),
                        orig.display()
                    );
                }
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir && is_mount_point(&p) {
                    bail!("{what} {} holds the mount point {}; refusing to replace it", shown.display(), p.display());
                }
                if is_dir {
                    stack.push(p);
                }
            }
        }
    }
    Ok(())
}

/// Refuses to replace an old output that could not be removed whole once the new one is in
/// (it would stay beside it, and the replace could never finish): anything in it that is
/// immutable or append-only, or a folder this user may not change.
fn check_removable(old: &Path, shown: &Path) -> Result<()> {
    let mut stack = vec![old.to_path_buf()];
    let mut first = true;
    while let Some(p) = stack.pop() {
        if let Some(why) = unremovable(&p) {
            let what = if first { "is".to_string() } else { format!("holds {}, which is", p.display()) };
            bail!("--out {}: {what} {why}, so the old output cannot be removed; not replaced", shown.display());
        }
        first = false;
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
            && let Ok(entries) = std::fs::read_dir(&p)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    Ok(())
}

/// Why `p` (a link is not followed) cannot be removed, where that can be known up front.
#[cfg(target_os = "linux")]
fn unremovable(p: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    const FS_IMMUTABLE_FL: libc::c_int = 0x10;
    const FS_APPEND_FL: libc::c_int = 0x20;
    let meta = std::fs::symlink_metadata(p).ok()?;
    if meta.is_dir() {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
        // SAFETY: access only reads the NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return Some(match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EPERM) => "immutable",
                Some(libc::EROFS) => "on a read-only file system",
                _ => "a folder this user may not change",
            });
        }
    }
    if !(meta.is_file() || meta.is_dir()) {
        return None;
    }
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(p).ok()?;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int into `flags` for an open file descriptor.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return None;
    }
    if flags & FS_IMMUTABLE_FL != 0 {
        Some("immutable")
    } else if flags & FS_APPEND_FL != 0 {
        Some("append-only")
    } else {
        None
    }
}

#[cfg(not(target_os = "linux"))]
fn unremovable(_p: &Path) -> Option<&'static str> {
    None
}

impl Destination {
    /// Whether [`Staging::create`] will take over an interrupted run (with `--resume`, one
    /// holding progress was found).
    pub fn resumes(&self) -> bool {
        !self.adoptable.is_empty()
    }

    /// Checks `out` for a run reading `input`: a plain folder name in an existing parent, not a
    /// file, not a mount point, never the input or an alias of it, and absent unless `force`.
    /// What interrupted runs left behind is dealt with first: an old output moved aside is
    /// restored (or removed, when the replacement is complete); their staging folders are
    /// removed, except, with `resume`, those holding progress.
    pub fn check(input: &Path, out: &Path, force: bool, resume: bool) -> Result<Destination> {
        let name = match out.components().next_back() {
            Some(Component::Normal(n)) => n.to_os_string(),
            _ => bail!("--out {}: not a folder name", out.display()),
        };
        let parent_given = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let parent = parent_given.canonicalize().map_err(|_| {
            err!("--out {}: the parent folder {} does not exist", out.display(), parent_given.display())
        })?;
        if !parent.is_dir() {
            bail!("--out {}: {} is not a folder", out.display(), parent_given.display());
        }
        let mut dest = Destination {
            shown: out.to_path_buf(),
            parent,
            name,
            force,
            input: input.to_path_buf(),
            adoptable: Vec::new(),
        };
        dest.recover_interrupted_replace()?;
        // A leftover's name proves nothing: one that is, holds or lies in the input is left alone.
        let mut stale: Vec<(PathBuf, String)> =
            dest.stale("tmp").into_iter().filter(|(p, _)| !dest.touches_input(p)).collect();
        if resume {
            stale.sort_by_key(|(p, _)| std::fs::metadata(p.join(RESUME_DIR)).and_then(|m| m.modified()).ok());
            let (keep, drop): (Vec<_>, Vec<_>) =
                stale.into_iter().partition(|(p, _)| p.join(RESUME_DIR).join("state.json").exists());
            dest.adoptable = keep.into_iter().map(|(p, _)| p).collect();
            stale = drop;
        }
        for (p, _) in &stale {
            match std::fs::remove_dir_all(p) {
                Ok(()) => eprintln!("note: removed {}, left by a run that was interrupted", p.display()),
                // Another run cleaning up, or resuming, got there first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("cannot remove {}: {}", p.display(), crate::io::error::io_words(&e)),
            }
        }
        dest.remove_dead_claims();
        let path = dest.path();
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && !path.is_dir()
        {
            bail!(
                "--out {}: exists and is {}, not a folder",
                out.display(),
                if meta.is_symlink() { "a dangling link" } else { "a file" }
            );
        }
        dest.check_replaceable()?;
        if path.exists() && !force {
            bail!("--out {}: already exists (use --force to replace it)", out.display());
        }
        Ok(dest)
    }

    /// Whether `p` is the input, holds it (or one of its files) or lies inside it: cleanup
    /// never touches such a path.
    fn touches_input(&self, p: &Path) -> bool {
        check_not_input(&self.input, p, p, "a leftover", true).is_err()
    }

    /// The destination's path (canonical parent joined with the name).
    pub fn path(&self) -> PathBuf {
        self.parent.join(&self.name)
    }

    fn check_replaceable(&self) -> Result<()> {
        let path = self.path();
        if path.exists() && is_mount_point(&path) {
            bail!(
                "--out {}: is a mount point, which cannot be replaced safely; choose a folder inside it",
                self.shown.display()
            );
        }
        check_not_input(&self.input, &path, &self.shown, "--out", true)?;
        if path.is_dir() {
            check_removable(&path, &self.shown)?;
        }
        Ok(())
    }

    fn sibling(&self, kind: &str, token: &str) -> PathBuf {
        self.parent.join(format!(".{}.{kind}-{token}", self.name.to_string_lossy()))
    }

    /// Sibling entries `.NAME.KIND-TOKEN` of this destination whose run holds no claim (its
    /// process is gone, whatever namespace it ran in), with their tokens.
    fn stale(&self, kind: &str) -> Vec<(PathBuf, String)> {
        let prefix = format!(".{}.{kind}-", self.name.to_string_lossy());
        let mut found = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.parent) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(token) = n.strip_prefix(&prefix)
                    && !token.is_empty()
                    && !token.ends_with(".part")
                    && !claim_held(&self.sibling("run", token))
                {
                    found.push((e.path(), token.to_string()));
                }
            }
        }
        found.sort();
        found
    }

    /// Claim files of runs that are gone (their folders dealt with first), and part files of
    /// claims that a kill interrupted while they were made, once they are an hour old.
    fn remove_dead_claims(&self) {
        for (p, _) in self.stale("run") {
            let _ = std::fs::remove_file(p);
        }
        let prefix = format!(".{}.run-", self.name.to_string_lossy());
        let hour_old = |p: &Path| {
            std::fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() > 3600))
        };
        if let Ok(entries) = std::fs::read_dir(&self.parent) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) && n.ends_with(".part") && hour_old(&e.path()) && !claim_held(&e.path()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// An earlier run killed while replacing this destination left the old output aside:
    /// put it back if nothing replaced it, else remove it (the replacement is complete).
    fn recover_interrupted_replace(&self) -> Result<()> {
        for (old, _) in self.stale("old").into_iter().filter(|(p, _)| !self.touches_input(p)) {
            if std::fs::symlink_metadata(self.path()).is_err() {
                std::fs::rename(&old, self.path())
                    .context(|| format!("cannot restore {} to {}", old.display(), self.shown.display()))?;
                eprintln!(
                    "note: restored {} from a replace that an interrupted run did not finish",
                    self.shown.display()
                );
            } else {
                match std::fs::remove_dir_all(&old) {
                    Ok(()) => eprintln!(
                        "note: removed {}, the previous output that an interrupted run had already replaced",
                        old.display()
                    ),
                    // What cannot be removed (an immutable file) is left, said once per run,
                    // and never stops a run.
                    Err(e) => eprintln!(
                        "warning: {} (an old output already replaced) cannot be removed: {}; remove it by hand",
                        old.display(),
                        crate::io::error::io_words(&e)
                    ),
                }
            }
        }
        Ok(())
    }
}

/// Whether a live run holds the claim file `path` locked. A missing file is nobody's claim; one
/// that cannot be opened or asked is taken as held, so nothing is removed on a guess.
fn claim_held(path: &Path) -> bool {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return e.kind() != std::io::ErrorKind::NotFound,
    };
    match file.try_lock() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => true,
    }
}

/// A run's claim on its destination: the file `.NAME.run-TOKEN` in the output's parent, locked
/// for as long as the run lives (the system releases the lock when the process ends, however it
/// ends). Its staging folder is `.NAME.tmp-TOKEN`, an old output it moves aside
/// `.NAME.old-TOKEN`. The token (process id and clock) is unique, so two runs in different PID
/// namespaces never share a name, and a resumed run never mistakes an old folder for its own.
struct Claim {
    path: PathBuf,
    token: String,
    _file: std::fs::File,
}

impl Claim {
    /// Made under a part name, locked, then renamed: a claim file is never seen unlocked while
    /// its run lives.
    fn take(dest: &Destination) -> Result<Claim> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        for attempt in 0..100u128 {
            let token = format!("{}-{:x}", std::process::id(), (nanos + attempt) & 0xffff_ffff_ffff);
            let path = dest.sibling("run", &token);
            let part = path.with_file_name(format!("{}.part", path.file_name().unwrap_or_default().to_string_lossy()));
            let file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&part) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => bail!(
                    "--out {}: cannot create the temporary folder's claim file in {}: {}",
                    dest.shown.display(),
                    dest.parent.display(),
                    crate::io::error::io_words(&e)
                ),
            };
            file.try_lock().map_err(|_| {
                let _ = std::fs::remove_file(&part);
                err!("--out {}: the file system of {} cannot lock files", dest.shown.display(), dest.parent.display())
            })?;
            if let Err(e) = std::fs::rename(&part, &path) {
                let _ = std::fs::remove_file(&part);
                bail!(
                    "--out {}: cannot create {}: {}",
                    dest.shown.display(),
                    path.display(),
                    crate::io::error::io_words(&e)
                );
            }
            return Ok(Claim { path, token, _file: file });
        }
        bail!(
            "--out {}: cannot find a free name for this run's files in {}",
            dest.shown.display(),
            dest.parent.display()
        )
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the file handle after.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Folder (inside a staging folder) that holds an interrupted run's progress.
pub const RESUME_DIR: &str = ".resume";

/// The staged output: a temporary folder beside the destination, removed on drop (and on
/// SIGINT/SIGTERM, keeping its progress) unless [`Staging::commit`] renamed it into place.
pub struct Staging {
    pub dir: PathBuf,
    dest: Destination,
    done: bool,
    /// Dropped after the folder is dealt with (fields drop after [`Drop::drop`]).
    claim: Claim,
}

impl Staging {
    /// Creates this run's staging folder (so an unwritable parent fails before any work), or
    /// takes over the newest interrupted run's folder that [`Destination::check`] kept for
    /// `--resume`, once `accept` has found its progress to be this run's (a refused folder is
    /// left where it is); the taken-over folder's old path is returned.
    pub fn create(dest: &Destination, accept: &dyn Fn(&Path) -> Result<()>) -> Result<(Staging, Option<PathBuf>)> {
        let claim = Claim::take(dest)?;
        let dir = dest.sibling("tmp", &claim.token);
        let mut candidates = dest.adoptable.clone();
        let adopted = candidates.pop();
        if let Some(p) = &adopted {
            accept(p)?;
        }
        for p in candidates {
            match std::fs::remove_dir_all(&p) {
                Ok(()) => eprintln!("note: removed {}, an older interrupted run of the same output", p.display()),
                // Another run resuming the same output took it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("cannot remove {}: {}", p.display(), crate::io::error::io_words(&e)),
            }
        }
        match &adopted {
            Some(p) => std::fs::rename(p, &dir).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    err!("{}: another run resuming the same output took it over first", p.display())
                }
                _ => err!("cannot take over {}: {}", p.display(), crate::io::error::io_words(&e)),
            })?,
            None => std::fs::create_dir(&dir).map_err(|e| {
                err!(
                    "--out {}: cannot create the temporary folder {}: {}",
                    dest.shown.display(),
                    dir.display(),
                    crate::io::error::io_words(&e)
                )
            })?,
        }
        register(&dir, &claim.path);
        Ok((Staging { dir, dest: dest.clone(), done: false, claim }, adopted))
    }

    /// Moves the staged folder to the destination. Without `force` the destination must still
    /// be absent (a run that finished meanwhile is never replaced); with it, the old output is
    /// renamed aside first and removed only after the new one is in place.
    pub fn commit(mut self) -> Result<()> {
        let _guard = write_lock();
        let _ = std::fs::remove_dir_all(self.dir.join(RESUME_DIR));
        let out = self.dest.path();
        if fault_point("appear-before-commit") {
            std::fs::create_dir_all(&out).ok();
            std::fs::write(out.join("other-run.txt"), "written by another run").ok();
        }
        let shown = self.dest.shown.display().to_string();
        if std::fs::symlink_metadata(&out).is_ok() {
            if !self.dest.force {
                bail!(
                    "--out {shown}: appeared while this run was working; not replaced (rerun with --force to replace it)"
                );
            }
            if !out.is_dir() {
                bail!("--out {shown}: is now a file, not a folder; not replaced");
            }
            self.dest.check_replaceable()?;
            let aside = self.dest.sibling("old", &self.claim.token);
            std::fs::rename(&out, &aside).map_err(|e| {
                err!("--out {shown}: cannot move the old output aside: {}", crate::io::error::io_words(&e))
            })?;
            fault("after-aside");
            if let Err(e) = rename_noreplace(&self.dir, &out) {
                let _ = std::fs::rename(&aside, &out);
                bail!("--out {shown}: cannot move the new output in: {e}; the old output is unchanged");
            }
            self.done = true;
            unregister(&self.dir);
            fault("after-rename-in");
            if let Err(e) = std::fs::remove_dir_all(&aside) {
                eprintln!(
                    "warning: the new output is in place, but the old one could not be removed from {}: {}",
                    aside.display(),
                    crate::io::error::io_words(&e)
                );
            }
        } else {
            rename_noreplace(&self.dir, &out).map_err(|e| err!("--out {shown}: {e}"))?;
            self.done = true;
            unregister(&self.dir);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _guard = write_lock();
            let _ = std::fs::remove_dir_all(&self.dir);
            unregister(&self.dir);
        }
    }
}

/// rename(2) that fails instead of replacing an existing destination.
fn rename_noreplace(from: &Path, to: &Path) -> std::result::Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let a = CString::new(from.as_os_str().as_bytes()).map_err(|_| "path holds a NUL byte".to_string())?;
        let b = CString::new(to.as_os_str().as_bytes()).map_err(|_| "path holds a NUL byte".to_string())?;
        // SAFETY: both are valid NUL-terminated paths; renameat2 reads them only.
        let r =
            unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_NOREPLACE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => {
                return Err(
                    "appeared while this run was working; not replaced (rerun with --force to replace it)".into()
                );
            }
            // Filesystems without RENAME_NOREPLACE: fall through to check-then-rename.
            Some(libc::EINVAL) | Some(libc::ENOSYS) => {}
            _ => return Err(format!("cannot rename the staged output into place: {}", crate::io::error::io_words(&e))),
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err("appeared while this run was working; not replaced (rerun with --force to replace it)".into());
    }
    std::fs::rename(from, to)
        .map_err(|e| format!("cannot rename the staged output into place: {}", crate::io::error::io_words(&e)))
}

// ---------------------------------------------------------------------------------------------
// Interruption: staging folders registered here are cleaned when SIGINT, SIGTERM or SIGHUP arrives
// (on Windows: Ctrl-C, Ctrl-Break or the console closing).

// These are process-wide because the OS demands it: a signal or console-control handler is
// one per process and takes no argument, so what it must clean up is where it can find it.

/// Staged output folders, removed by the handler.
/// Each with its run's claim file, removed with it (the run is over).
static STAGED: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
/// Held while files are written into a staged folder, so the handler never removes a folder a
/// writer is halfway through (it waits for the lock).
static WRITING: Mutex<()> = Mutex::new(());
/// Scratch folders ([`Scratch`]), removed by the handler.
static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Child processes (`bench`'s measuring children), stopped by the handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A folder this process makes for itself and removes (a benchmark's random checkpoint, its
/// timed prune's output): removed when dropped, or by the interrupt handler when the process is
/// stopped first, so a stopped `bench` leaves no gigabytes behind in the temporary folder.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new(dir: PathBuf) -> Scratch {
        if let Ok(mut v) = SCRATCH.lock() {
            v.push(dir.clone());
        }
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Keeps the folder under the name `to`, which must not exist yet: whole, or not at all.
    pub fn keep_as(self, to: &Path) -> Result<()> {
        {
            let _guard = write_lock();
            if std::fs::symlink_metadata(to).is_ok() {
                bail!("{}: already exists; name a new folder", to.display());
            }
            std::fs::rename(&self.dir, to).map_err(|e| {
                err!("cannot rename {} to {}: {}", self.dir.display(), to.display(), crate::io::error::io_words(&e))
            })?;
            self.forget();
        }
        // Dropped here, outside the lock its drop takes, with nothing left to remove.
        Ok(())
    }

    fn forget(&self) {
        if let Ok(mut v) = SCRATCH.lock() {
            v.retain(|d| d != &self.dir);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _guard = write_lock();
        if SCRATCH.lock().is_ok_and(|v| v.contains(&self.dir)) {
            let _ = std::fs::remove_dir_all(&self.dir);
            self.forget();
        }
    }
}

/// Bytes free for an unprivileged writer on the file system that `path` (or its nearest existing
/// ancestor) is on; `None` where that cannot be asked (Windows here).
pub fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let base = std::path::absolute(path).ok()?;
        let existing = base.ancestors().find(|p| p.exists())?;
        let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs fills the zeroed struct it is given for a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Runs a child process of this one to its end, collecting its output; an interruption of this
/// process is passed on to it (it cleans up after itself, as this one does).
pub fn child_output(cmd: &mut std::process::Command) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    if let Ok(mut v) = CHILDREN.lock() {
        v.push(pid);
    }
    let out = child.wait_with_output();
    if let Ok(mut v) = CHILDREN.lock() {
        v.retain(|&p| p != pid);
    }
    out
}

/// What an interruption removes before the staged output: the scratch folders, after passing
/// the signal on to the children (unix; on Windows the console's Ctrl-C reaches them itself).
#[cfg(any(unix, windows))]
fn clean_scratch(_signal: i32) {
    #[cfg(unix)]
    for pid in CHILDREN.lock().map(|v| v.clone()).unwrap_or_default() {
        // SAFETY: kill only sends a signal to a process this one started and still waits for.
        unsafe {
            libc::kill(pid as libc::pid_t, _signal);
        }
    }
    for dir in SCRATCH.lock().map(|v| v.clone()).unwrap_or_default() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn register(dir: &Path, claim: &Path) {
    if let Ok(mut v) = STAGED.lock() {
        v.push((dir.to_path_buf(), claim.to_path_buf()));
    }
}

fn unregister(dir: &Path) {
    if let Ok(mut v) = STAGED.lock() {
        v.retain(|(d, _)| d != dir);
    }
}

/// Held while a file is written into a staging folder, so an interruption never cleans up
/// under a half-written file or leaves one behind.
pub fn write_lock() -> std::sync::MutexGuard<'static, ()> {
    WRITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes a file whole or not at all: into a part file named for this process (two processes
/// writing one file each rename a whole one in), then renamed over `path`; a part left by a
/// failed write is removed. Under [`write_lock`], so an interruption waits for the rename.
pub fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let _guard = write_lock();
    let part = path.with_extension(format!("part-{}", std::process::id()));
    let written = std::fs::write(&part, bytes)
        .map_err(|e| (part.clone(), e))
        .and_then(|_| std::fs::rename(&part, path).map_err(|e| (path.to_path_buf(), e)));
    written.map_err(|(what, e)| {
        let _ = std::fs::remove_file(&part);
        err!("cannot write {}: {}", what.display(), crate::io::error::io_words(&e))
    })
}

/// The interrupt handler's last line. Not `eprintln!`, which panics when stderr is gone (a
/// benchmark child whose parent was stopped first): the handler's thread would die before the
/// process exits, and the process would run on.
#[cfg(any(unix, windows))]
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Removes what an interrupted run staged, keeping its progress (small) for `--resume`.
/// Returns the folders whose progress was kept.
#[cfg(any(unix, windows))]
fn clean_staged() -> Vec<PathBuf> {
    let dirs = STAGED.lock().map(|v| v.clone()).unwrap_or_default();
    let mut kept = Vec::new();
    for (dir, claim) in dirs {
        let _ = std::fs::remove_file(&claim);
        let progress = dir.join(RESUME_DIR).join("state.json").exists();
        if !progress {
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name() != RESUME_DIR {
                    let p = e.path();
                    let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                }
            }
        }
        kept.push(dir);
    }
    kept
}

/// Takes SIGINT, SIGTERM and SIGHUP (the terminal closing) on a thread of their own: staged
/// output is cleaned (progress kept for `--resume`) and the process exits with 128 + the
/// signal. Call first in `main`, before any other thread exists, so that every thread inherits
/// the blocked mask.
#[cfg(unix)]
pub fn install_interrupt_handler() {
    // SAFETY: plain libc signal-set manipulation on locals; the thread below owns the waits.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let set_copy = set;
        std::thread::spawn(move || {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set_copy, &mut sig) != 0 {
                return;
            }
            let _guard = write_lock();
            clean_scratch(sig);
            let kept = clean_staged();
            let name = match sig {
                libc::SIGINT => "SIGINT",
                libc::SIGHUP => "SIGHUP",
                _ => "SIGTERM",
            };
            match kept.first() {
                Some(dir) => say(&format!(
                    "interrupted by {name}: progress kept in {}; run the same command with --resume to continue",
                    dir.display()
                )),
                None => say(&format!("interrupted by {name}; nothing half-written was left")),
            }
            libc::_exit(128 + sig);
        });
    }
}

/// Windows: Ctrl-C, Ctrl-Break and closing the console window, with the same cleanup; the
/// system runs the handler on a thread of its own. Exit code 130 as for SIGINT.
#[cfg(windows)]
pub fn install_interrupt_handler() {
    unsafe extern "system" fn handler(event: u32) -> windows_sys::core::BOOL {
        let _guard = write_lock();
        clean_scratch(0);
        let kept = clean_staged();
        let name = match event {
            windows_sys::Win32::System::Console::CTRL_C_EVENT => "Ctrl-C",
            windows_sys::Win32::System::Console::CTRL_BREAK_EVENT => "Ctrl-Break",
            _ => "the console closing",
        };
        match kept.first() {
            Some(dir) => say(&format!(
                "interrupted by {name}: progress kept in {}; run the same command with --resume to continue",
                dir.display()
            )),
            None => say(&format!("interrupted by {name}; nothing half-written was left")),
        }
        std::process::exit(130);
    }
    // SAFETY: registers a handler with the signature the console API expects.
    unsafe {
        windows_sys::Win32::System::Console::SetConsoleCtrlHandler(Some(handler), 1);
    }
}

#[cfg(not(any(unix, windows)))]
pub fn install_interrupt_handler() {}

/// Checks a `--plots` folder: never the input or inside it; when inside `--out`, the plots are
/// written into the staged output instead, so they arrive (and survive) with it. Returns the
/// folder to write into now, relative to the staging folder when inside the output.
pub enum PlotsTarget {
    Outside(PathBuf),
    InsideOutput(PathBuf),
}

pub fn check_plots(input: &Path, dest: &Destination, plots: &Path) -> Result<PlotsTarget> {
    let resolved = resolve(plots)?;
    if let Ok(meta) = std::fs::metadata(&resolved)
        && !meta.is_dir()
    {
        bail!("--plots {}: exists and is a file, not a folder", plots.display());
    }
    let out = dest.path();
    if let Ok(rel) = resolved.strip_prefix(&out) {
        if rel.as_os_str().is_empty() {
            bail!(
                "--plots {}: is the output folder itself; use a subfolder such as {}",
                plots.display(),
                dest.shown.join("plots").display()
            );
        }
        return Ok(PlotsTarget::InsideOutput(rel.to_path_buf()));
    }
    check_not_input(input, &resolved, plots, "--plots", false)?;
    Ok(PlotsTarget::Outside(resolved))
}
