//! Roots: the directory trees tessera serves, what storage they sit on, and
//! the only way a request may open a file inside one.
//!
//! Opening goes through `openat2(2)` with `RESOLVE_BENEATH`, so the kernel
//! itself refuses `..` and symbolic links that climb out of the root; the path
//! actually opened is then read back from `/proc/self/fd` and checked again,
//! which also catches a symlink that leads to a hidden name inside the root.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::config::{Delivery, RootKind, RootSpec, WatchMode};

/// statfs `f_type` values of shared storage (DESIGN.md decision 2): other
/// machines can change files there without inotify seeing it, and sendfile
/// from them can serve stale pages.
const SHARED_FS: &[(i64, &str)] = &[
    (0x6969, "nfs"),
    (0x517B, "smb"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x6573_5546, "fuse"),
    (0x0102_1997, "9p"),
    (0x786F_4256, "vboxsf"),
    (0x00C3_6400, "ceph"),
];

/// What a root's storage is, from `statfs(2)`.
#[derive(Debug, Clone)]
pub struct Storage {
    pub fs_type: i64,
    pub fs_name: String,
    pub shared: bool,
}

/// How bodies from a root travel, decided once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryPath {
    Sendfile,
    Buffered,
}

impl DeliveryPath {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryPath::Sendfile => "sendfile",
            DeliveryPath::Buffered => "buffered",
        }
    }
}

/// How a root is watched, decided once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatcherKind {
    Inotify,
    Poll,
    Off,
}

/// A part of a root with one storage and one delivery path: the root itself,
/// or a configured subdirectory (which may be a mount of other storage).
#[derive(Debug, Clone)]
pub struct Area {
    /// Relative to the root; empty for the root itself.
    pub rel: PathBuf,
    pub storage: Storage,
    pub delivery: DeliveryPath,
    /// Why this delivery path, for `tessera doctor` and the start-up log.
    pub reason: String,
}

impl Area {
    fn classify(path: &Path, rel: PathBuf, setting: Delivery) -> io::Result<Area> {
        let storage = classify(path)?;
        let (delivery, reason) = match setting {
            Delivery::Sendfile => (DeliveryPath::Sendfile, "delivery = \"sendfile\" in the configuration".to_string()),
            Delivery::Buffered => (DeliveryPath::Buffered, "delivery = \"buffered\" in the configuration".to_string()),
            Delivery::Auto if storage.shared => (
                DeliveryPath::Buffered,
                format!("auto: {} is shared storage, zero-copy could serve stale pages", storage.fs_name),
            ),
            Delivery::Auto => (DeliveryPath::Sendfile, format!("auto: {} is local storage", storage.fs_name)),
        };
        Ok(Area { rel, storage, delivery, reason })
    }
}

/// A configured root, opened and classified.
#[derive(Debug)]
pub struct Root {
    /// Position in the configuration; also the lookup order among roots of a kind.
    pub index: usize,
    /// No earlier root of the same kind: nothing can shadow this root's files.
    pub first_of_kind: bool,
    pub spec: RootSpec,
    /// Storage of the root directory itself.
    pub storage: Storage,
    /// Delivery path of the root directory itself.
    pub delivery: DeliveryPath,
    pub watcher: WatcherKind,
    /// The root's own area first, then configured subdirectories, deepest first.
    pub areas: Vec<Area>,
    /// `O_PATH` descriptor of the root directory: every open is relative to
    /// it, and so are the cache's path checks (`FileEntry::fresh`).
    dir: Arc<OwnedFd>,
}

impl Root {
    pub fn open(index: usize, spec: RootSpec) -> io::Result<Root> {
        let dir = Arc::new(nix::fcntl::open(
            &spec.path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?);
        let own = Area::classify(&spec.path, PathBuf::new(), spec.delivery)?;
        let mut dirs = Vec::new();
        for d in &spec.dirs {
            dirs.push(Area::classify(&spec.path.join(&d.rel), d.rel.clone(), d.delivery)?);
        }
        dirs.sort_by_key(|a| std::cmp::Reverse(a.rel.components().count()));
        let (storage, delivery) = (own.storage.clone(), own.delivery);
        let mut areas = vec![own];
        areas.extend(dirs);
        let watcher = match spec.watch {
            WatchMode::Inotify => WatcherKind::Inotify,
            WatchMode::Poll => WatcherKind::Poll,
            WatchMode::Off => WatcherKind::Off,
            WatchMode::Auto if storage.shared => WatcherKind::Poll,
            WatchMode::Auto => WatcherKind::Inotify,
        };
        Ok(Root { index, first_of_kind: true, spec, storage, delivery, watcher, areas, dir })
    }

    /// The area a relative path falls in: the deepest configured
    /// subdirectory that contains it, else the root's own.
    pub fn area(&self, rel: &str) -> &Area {
        let rel = Path::new(rel);
        self.areas[1..].iter().find(|a| rel.starts_with(&a.rel)).unwrap_or(&self.areas[0])
    }

    /// Whether any part of this root is on shared storage.
    pub fn any_shared(&self) -> bool {
        self.areas.iter().any(|a| a.storage.shared)
    }

    pub fn kind(&self) -> RootKind {
        self.spec.kind
    }

    pub fn path(&self) -> &Path {
        &self.spec.path
    }

    /// Whether `rel` (safe segments) names something in this root; follows
    /// links, as an open would.
    pub fn has(&self, rel: &str) -> bool {
        nix::sys::stat::fstatat(self.dir.as_ref(), rel, nix::fcntl::AtFlags::empty()).is_ok()
    }

    /// The root directory's `O_PATH` descriptor.
    pub fn dir(&self) -> &Arc<OwnedFd> {
        &self.dir
    }

    /// Whether open descriptors of `rel` may be cached. Shared storage
    /// revalidates on every request instead (DESIGN.md decision 2).
    pub fn caches_descriptors(&self, rel: &str) -> bool {
        !self.area(rel).storage.shared
    }

    /// Opens a regular file at `rel` (already split into safe segments by
    /// the HTTP layer) without ever leaving the root.
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        // O_NONBLOCK: opening a FIFO planted in a root must not hang a worker.
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        let beneath = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        // Most paths have no symbolic link: resolved without following any,
        // the path opened is exactly `rel`, whose segments the HTTP layer
        // checked, so the /proc check can be skipped (one syscall less).
        let plain = OpenHow::new().flags(flags).resolve(beneath | ResolveFlag::RESOLVE_NO_SYMLINKS);
        match openat2(self.dir.as_fd(), rel, plain) {
            Ok(fd) => return regular(File::from(fd)),
            Err(Errno::ELOOP) => {} // a symlink on the way: resolve it, then check where it led
            Err(Errno::ENOSYS) => {}
            Err(Errno::EXDEV) => return Err(denied()),
            Err(e) => return Err(e.into()),
        }
        let how = OpenHow::new().flags(flags).resolve(beneath);
        let fd = match openat2(self.dir.as_fd(), rel, how) {
            Ok(fd) => fd,
            // Kernels before 5.6: open plainly, the /proc check below confines it.
            Err(Errno::ENOSYS) => nix::fcntl::openat(
                self.dir.as_fd(),
                rel,
                OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                Mode::empty(),
            )?,
            // EXDEV is how RESOLVE_BENEATH says "that would leave the root".
            Err(Errno::EXDEV) => return Err(io::Error::new(io::ErrorKind::PermissionDenied, "path leaves its root")),
            Err(e) => return Err(e.into()),
        };
        let file = regular(File::from(fd))?;
        self.confirm_inside(&file)?;
        Ok(file)
    }

    /// Reads back where the descriptor really points and refuses anything
    /// outside the root or behind a hidden name.
    fn confirm_inside(&self, file: &File) -> io::Result<()> {
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        let rel = real.strip_prefix(&self.spec.path).map_err(|_| denied())?;
        if rel.components().any(|c| !matches!(c, Component::Normal(n) if !n.as_encoded_bytes().starts_with(b"."))) {
            return Err(denied());
        }
        Ok(())
    }

    /// The absolute path of `rel` in this root as a string: the descriptor
    /// cache's key, the same form the watcher reports paths in.
    /// `Cache-Control` for a file: its tileset's setting, else the root's.
    pub fn cache_control_for(&self, rel: &str) -> &str {
        // A tileset's directory, or its archive (`{name}.pmtiles`, `{name}.mbtiles`).
        let first = rel.split('/').next().unwrap_or_default();
        let tileset = match rel.contains('/') {
            false => first.strip_suffix(".pmtiles").or_else(|| first.strip_suffix(".mbtiles")).unwrap_or(first),
            true => first,
        };
        match self.spec.kind {
            RootKind::Tiles => self.spec.tilesets.get(tileset).and_then(|t| t.cache_control.as_deref()),
            RootKind::Logs => None,
        }
        .unwrap_or(&self.spec.cache_control)
    }

    pub fn key(&self, rel: &str) -> String {
        let root = self.spec.path.to_string_lossy();
        let mut key = String::with_capacity(root.len() + 1 + rel.len());
        key.push_str(&root);
        key.push('/');
        key.push_str(rel);
        key
    }
}

/// Refuses anything but a regular file (directories, FIFOs, devices).
/// Opens `rel` under the directory `root` for the indexer: beneath the
/// root, through no symbolic link at all (a link inside a root is never
/// indexed, whatever it points to), a regular file only.
pub fn open_for_index(root: &Path, rel: &str) -> io::Result<File> {
    let dir = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(dir.as_fd(), rel, how) {
        Ok(fd) => regular(File::from(fd)),
        Err(Errno::ELOOP) | Err(Errno::EXDEV) => Err(denied()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a component of `rel` (the last included) is a symbolic link, or
/// cannot be looked at: such a path is not part of the root for the indexer.
pub fn crosses_symlink(root: &Path, rel: &str) -> bool {
    let mut path = root.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        match path.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return false, // gone: nothing of it will be indexed anyway
        }
    }
    false
}

fn regular(file: File) -> io::Result<File> {
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "not a regular file"));
    }
    Ok(file)
}

fn denied() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "path leaves its root")
}

/// Classifies the storage under `path` with `statfs(2)`.
pub fn classify(path: &Path) -> io::Result<Storage> {
    let st = nix::sys::statfs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let fs_type = st.filesystem_type().0 as i64;
    let shared = SHARED_FS.iter().find(|(magic, _)| *magic == fs_type);
    let fs_name = match shared {
        Some((_, name)) => name.to_string(),
        None => local_fs_name(fs_type).to_string(),
    };
    Ok(Storage { fs_type, fs_name, shared: shared.is_some() })
}

fn local_fs_name(fs_type: i64) -> &'static str {
    match fs_type {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        _ => "local",
    }
}
