//! Names: which path segments and file names tessera will index and serve.
//! A leading dot hides a name everywhere (editors' and pipelines' temporary
//! files, `.git`), and a URL segment must name one entry of one directory.

use std::ffi::OsStr;
use std::path::{Component, Path};

/// A path segment that may name a tileset, a device or a file: not empty, no
/// separator of any platform, no NUL or control character, and not hidden
/// (which also rules out `.` and `..`).
pub fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && !s.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Whether a path relative to a root has a hidden component; such files are
/// neither indexed nor served.
pub fn is_hidden(rel: &Path) -> bool {
    rel.components().any(|c| matches!(c, Component::Normal(n) if is_hidden_name(n)))
}

/// Whether one file name is hidden: nothing needs to watch, poll, index or
/// serve it.
pub fn is_hidden_name(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}
