//! Polled directories: the directories of a local root that inotify refused
//! a watch (the watch limit), each listed again every poll interval and
//! compared with its previous listing.
//!
//! A polled directory is listed on its own, not with what is below it: its
//! subdirectories are watched or polled each in their own right. A round
//! therefore costs one directory read and one `lstat` per entry of the
//! polled directories, whatever the size of the rest of the tree.

use crate::names::is_hidden_name;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io;
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a directory entry was when listed: enough to tell a new file, a
/// file written in place, and another file under the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    ino: u64,
    dir: bool,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        if meta.is_dir() {
            // A directory's own times move with its entries, which its own
            // watch or poll reports: only its identity matters here.
            return Stamp { ino: meta.ino(), dir: true, size: 0, mtime_ns: 0, ctime_ns: 0 };
        }
        Stamp {
            ino: meta.ino(),
            dir: false,
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.dir
    }
}

/// A directory's entries by name, hidden ones left out.
pub type Listing = HashMap<OsString, Stamp>;

/// Lists `dir`: its entries that are not hidden, symbolic links as
/// themselves (never followed).
pub fn list(dir: &Path) -> io::Result<Listing> {
    let mut out = Listing::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if is_hidden_name(&name) {
            continue;
        }
        // `DirEntry::metadata` does not traverse a symbolic link.
        match entry.metadata() {
            Ok(meta) => {
                out.insert(name, Stamp::of(&meta));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // removed since the read
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// One name whose entry differs between two listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: OsString,
    pub before: Option<Stamp>,
    pub after: Option<Stamp>,
}

impl Change {
    /// The same entry (inode and type) in both listings.
    fn same_entry(&self) -> bool {
        matches!((self.before, self.after), (Some(b), Some(a)) if b.ino == a.ino && b.dir == a.dir)
    }

    /// The same file with another length or modification time: written in
    /// place (attributes alone, such as a `chmod`, move only the ctime).
    pub fn in_place(&self) -> bool {
        self.same_entry()
            && matches!((self.before, self.after), (Some(b), Some(a)) if b.size != a.size || b.mtime_ns != a.mtime_ns)
    }

    /// A directory no longer under this name (removed, moved away or replaced).
    pub fn dir_gone(&self) -> bool {
        self.before.is_some_and(|b| b.dir) && !self.same_entry()
    }

    /// A directory new under this name (made, moved here or replacing another entry).
    pub fn dir_new(&self) -> bool {
        self.after.is_some_and(|a| a.dir) && !self.same_entry()
    }
}

/// What differs from `old` to `new`, by name in byte order.
pub fn diff(old: &Listing, new: &Listing) -> Vec<Change> {
    let mut changes: Vec<Change> = new
        .iter()
        .filter(|(name, stamp)| old.get(*name) != Some(stamp))
        .map(|(name, stamp)| Change { name: name.clone(), before: old.get(name).copied(), after: Some(*stamp) })
        .collect();
    changes.extend(old.iter().filter(|(name, _)| !new.contains_key(*name)).map(|(name, stamp)| Change {
        name: name.clone(),
        before: Some(*stamp),
        after: None,
    }));
    changes.sort_by(|a, b| a.name.cmp(&b.name));
    changes
}

/// The polled directories of one root, each with its last listing.
#[derive(Debug, Default)]
pub struct Polled {
    dirs: BTreeMap<PathBuf, Listing>,
}

impl Polled {
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    pub fn contains(&self, dir: &Path) -> bool {
        self.dirs.contains_key(dir)
    }

    /// The polled directories, parents before their subdirectories.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.keys().cloned().collect()
    }

    pub fn insert(&mut self, dir: PathBuf, listing: Listing) {
        self.dirs.insert(dir, listing);
    }

    pub fn remove(&mut self, dir: &Path) {
        self.dirs.remove(dir);
    }

    /// Forgets `top` and every polled directory below it.
    pub fn forget(&mut self, top: &Path) {
        // Paths order component by component, so a directory's descendants
        // follow it without anything else in between.
        let below: Vec<PathBuf> = self
            .dirs
            .range::<Path, _>((Bound::Included(top), Bound::Unbounded))
            .take_while(|(path, _)| path.starts_with(top))
            .map(|(path, _)| path.clone())
            .collect();
        for path in below {
            self.dirs.remove(&path);
        }
    }

    /// Lists `dir` again, keeps the new listing and returns what changed.
    /// An error leaves the previous listing in place.
    pub fn relist(&mut self, dir: &Path) -> io::Result<Vec<Change>> {
        let new = list(dir)?;
        let old = self.dirs.insert(dir.to_path_buf(), new);
        Ok(match (old, self.dirs.get(dir)) {
            (Some(old), Some(new)) => diff(&old, new),
            _ => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn stamp(ino: u64, dir: bool, size: u64, mtime_ns: i128, ctime_ns: i128) -> Stamp {
        Stamp { ino, dir, size, mtime_ns, ctime_ns }
    }

    fn listing(entries: &[(&str, Stamp)]) -> Listing {
        entries.iter().map(|(n, s)| (OsString::from(n), *s)).collect()
    }

    #[test]
    fn diff_tells_new_gone_rewritten_and_replaced_entries_apart() {
        let old = listing(&[
            ("same.png", stamp(1, false, 10, 5, 5)),
            ("rewritten.png", stamp(2, false, 10, 5, 5)),
            ("chmod.png", stamp(3, false, 10, 5, 5)),
            ("renamed-over.png", stamp(4, false, 10, 5, 5)),
            ("gone", stamp(5, true, 0, 0, 0)),
            ("dir-now-file", stamp(6, true, 0, 0, 0)),
        ]);
        let new = listing(&[
            ("same.png", stamp(1, false, 10, 5, 5)),
            ("rewritten.png", stamp(2, false, 12, 9, 9)),
            ("chmod.png", stamp(3, false, 10, 5, 9)),
            ("renamed-over.png", stamp(40, false, 10, 5, 5)),
            ("dir-now-file", stamp(6, false, 3, 1, 1)),
            ("new", stamp(7, true, 0, 0, 0)),
        ]);
        let changes = diff(&old, &new);
        let names: Vec<&str> = changes.iter().map(|c| c.name.to_str().unwrap()).collect();
        assert_eq!(names, ["chmod.png", "dir-now-file", "gone", "new", "renamed-over.png", "rewritten.png"]);
        let by = |n: &str| changes.iter().find(|c| c.name == n).unwrap();
        assert!(by("rewritten.png").in_place());
        assert!(!by("chmod.png").in_place(), "attributes only");
        assert!(!by("renamed-over.png").in_place(), "another inode is not an in-place write");
        assert!(by("gone").dir_gone() && !by("gone").dir_new());
        assert!(by("new").dir_new() && !by("new").dir_gone());
        assert!(by("dir-now-file").dir_gone() && !by("dir-now-file").dir_new());
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn forget_takes_a_directory_and_only_what_is_below_it() {
        let mut polled = Polled::default();
        for dir in ["/r/a", "/r/a/b", "/r/a/b/c", "/r/a-b", "/r/ab", "/r/b"] {
            polled.insert(PathBuf::from(dir), Listing::new());
        }
        polled.forget(Path::new("/r/a"));
        assert_eq!(polled.dirs(), [PathBuf::from("/r/a-b"), PathBuf::from("/r/ab"), PathBuf::from("/r/b")]);
    }

    #[test]
    fn listing_leaves_out_hidden_names_and_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        std::fs::write(dir.path().join(".a.png.tmp"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("sub"), dir.path().join("link")).unwrap();
        let listed = list(dir.path()).unwrap();
        let mut names: Vec<&str> = listed.keys().map(|n| n.to_str().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["a.png", "link", "sub"]);
        assert!(listed[OsStr::new("sub")].is_dir());
        assert!(!listed[OsStr::new("link")].is_dir(), "a link to a directory is not one");
    }
}
