//! The inotify watch limit: how many watches this user may hold, which
//! setting decides it, how to raise it, and how many are in use. The
//! warning when directories start being polled and `tessera doctor` both
//! say it in these words.
//!
//! The kernel charges each watch to the user in its user namespace and in
//! every namespace above it, so two settings bound it:
//! `fs.inotify.max_user_watches` (the initial namespace's) and
//! `user.max_inotify_watches` (the current namespace's, as a container sees
//! it). The smaller one is the limit.

use std::fmt;

pub const SYSTEM_SETTING: &str = "/proc/sys/fs/inotify/max_user_watches";
pub const NAMESPACE_SETTING: &str = "/proc/sys/user/max_inotify_watches";

/// Which setting gives the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `fs.inotify.max_user_watches`.
    System,
    /// `user.max_inotify_watches` of this user namespace.
    Namespace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimit {
    /// Watches this user may hold.
    pub value: u64,
    pub source: Source,
    /// `fs.inotify.max_user_watches`, when readable.
    pub system: Option<u64>,
}

impl WatchLimit {
    /// The limit as the two settings give it now; None if neither is readable.
    pub fn read() -> Option<WatchLimit> {
        WatchLimit::from_settings(read_number(SYSTEM_SETTING), read_number(NAMESPACE_SETTING))
    }

    /// The smaller of the two settings; the system one when they are equal,
    /// since that is the one people know and raise.
    pub fn from_settings(system: Option<u64>, namespace: Option<u64>) -> Option<WatchLimit> {
        match (system, namespace) {
            (Some(s), Some(n)) if n < s => Some(WatchLimit { value: n, source: Source::Namespace, system }),
            (Some(s), _) => Some(WatchLimit { value: s, source: Source::System, system }),
            (None, Some(n)) => Some(WatchLimit { value: n, source: Source::Namespace, system }),
            (None, None) => None,
        }
    }

    /// How to raise it so that `needed` watches fit, with room to grow.
    pub fn advice(&self, needed: u64) -> String {
        let value = needed.saturating_mul(2).next_power_of_two().max(524_288);
        match self.source {
            Source::System => format!(
                "raise it with `sysctl fs.inotify.max_user_watches={value}` (kept across boots in /etc/sysctl.d/)"
            ),
            Source::Namespace => format!(
                "raise it with `sysctl user.max_inotify_watches={value}` in the user namespace that lowered it \
                 (a container's), and fs.inotify.max_user_watches on the host if that is lower"
            ),
        }
    }
}

impl fmt::Display for WatchLimit {
    /// `20 watches (/proc/sys/user/max_inotify_watches, this user namespace's
    /// limit; /proc/sys/fs/inotify/max_user_watches is 524288)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.source, self.system) {
            (Source::System, _) => write!(f, "{} watches ({SYSTEM_SETTING})", self.value),
            (Source::Namespace, Some(system)) => write!(
                f,
                "{} watches ({NAMESPACE_SETTING}, this user namespace's limit; {SYSTEM_SETTING} is {system})",
                self.value
            ),
            (Source::Namespace, None) => {
                write!(f, "{} watches ({NAMESPACE_SETTING}, this user namespace's limit)", self.value)
            }
        }
    }
}

/// Watches held by the processes whose effective user is `uid`: the
/// `inotify wd:` lines of their descriptors' fdinfo. Processes and
/// descriptors that cannot be read (gone, or another user's) are left out,
/// so this is a lower bound.
pub fn watches_in_use(uid: u32) -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    procs
        .filter_map(Result::ok)
        .filter(|p| p.file_name().as_encoded_bytes().iter().all(u8::is_ascii_digit))
        .filter(|p| effective_uid(&p.path()) == Some(uid))
        .map(|p| watches_of_process(&p.path()))
        .sum()
}

/// This process's effective user id.
pub fn own_uid() -> Option<u32> {
    effective_uid(std::path::Path::new("/proc/self"))
}

fn effective_uid(proc_dir: &std::path::Path) -> Option<u32> {
    let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

fn watches_of_process(proc_dir: &std::path::Path) -> u64 {
    let Ok(fds) = std::fs::read_dir(proc_dir.join("fdinfo")) else { return 0 };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .map(|info| info.lines().filter(|l| l.starts_with("inotify wd:")).count() as u64)
        .sum()
}

pub fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_setting_is_the_limit() {
        let ns = WatchLimit::from_settings(Some(192_546), Some(20)).unwrap();
        assert_eq!((ns.value, ns.source), (20, Source::Namespace));
        assert!(ns.to_string().contains("max_inotify_watches") && ns.to_string().contains("192546"));
        assert!(ns.advice(30).contains("user.max_inotify_watches=524288"));
        let sys = WatchLimit::from_settings(Some(8192), Some(8192)).unwrap();
        assert_eq!((sys.value, sys.source), (8192, Source::System));
        assert!(sys.advice(1_000_000).contains("fs.inotify.max_user_watches=2097152"));
        assert_eq!(WatchLimit::from_settings(None, Some(7)).map(|l| l.value), Some(7));
        assert_eq!(WatchLimit::from_settings(None, None), None);
    }

    #[test]
    fn this_process_watches_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let inotify = inotify::Inotify::init().unwrap();
        inotify.watches().add(dir.path(), inotify::WatchMask::CREATE).unwrap();
        // Other tests and processes may add or drop watches meanwhile: only
        // the one held here is certain.
        assert!(watches_of_process(std::path::Path::new("/proc/self")) >= 1, "this process's watch");
        assert!(watches_in_use(own_uid().unwrap()) >= 1, "this user's watches");
    }
}
