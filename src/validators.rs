//! Validators: what identifies one version of a file on this machine
//! (device, inode, length, mtime in nanoseconds), and the strong ETag built
//! from the part of it that every copy of the file shares (DESIGN.md
//! decision 5). The descriptor cache, the catalog and MBTiles readers all
//! compare versions with it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What identifies one version of a file on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Validators {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
}

impl Validators {
    /// `statx` of `rel` below the directory `dir`, following symbolic links
    /// as `std::fs::metadata` does, and decoded as it decodes (so that the
    /// result compares equal with [`Validators::of`] for the same file).
    pub fn at(dir: &OwnedFd, rel: &[u8]) -> io::Result<Validators> {
        use nix::NixPath;
        // SAFETY: statx only writes the struct, which is plain data.
        let mut buf: libc::statx = unsafe { std::mem::zeroed() };
        // A stack copy with the NUL (nix's NixPath), no allocation.
        let rc = rel.with_nix_path(|path| {
            // SAFETY: `path` is NUL-terminated and outlives the call; `buf` is valid.
            unsafe { libc::statx(dir.as_raw_fd(), path.as_ptr(), 0, libc::STATX_BASIC_STATS, &mut buf) }
        })?;
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Validators {
            dev: libc::makedev(buf.stx_dev_major, buf.stx_dev_minor),
            ino: buf.stx_ino,
            len: buf.stx_size,
            mtime_ns: buf.stx_mtime.tv_sec as i128 * 1_000_000_000 + buf.stx_mtime.tv_nsec as i128,
        })
    }

    pub fn of(meta: &std::fs::Metadata) -> Validators {
        Validators {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }

    /// Strong ETag from what two appliances serving the same file share:
    /// modification time and length, never the inode (DESIGN.md decision 5).
    pub fn etag(&self) -> String {
        format!("\"{:x}-{:x}\"", self.mtime_ns, self.len)
    }

    pub fn modified(&self) -> SystemTime {
        if self.mtime_ns >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.mtime_ns as u64)
        } else {
            UNIX_EPOCH
        }
    }
}

/// Under `etag = "content"`, files up to this size are tagged by their
/// bytes (tiles, metadata, small archives); larger ones keep their
/// validators' ETag (README, docs/FLEET.md).
pub const CONTENT_ETAG_MAX: u64 = 1 << 20;

/// What one version of a file is known by: its validators, its ETag and
/// its share of a tileset's version (`stamp`), each from the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub validators: Validators,
    pub etag: String,
    /// The mtime, or for a file tagged by content 62 bits of its hash.
    pub stamp: i64,
}

impl Tag {
    /// The tag of an open file: from its validators, or (`by_content`, and
    /// up to [`CONTENT_ETAG_MAX`]) from a SHA-256 of its bytes, which are
    /// read again if the validators moved meanwhile (an in-place write), so
    /// the tag always names the version the descriptor holds.
    pub fn of(file: &std::fs::File, by_content: bool) -> io::Result<Tag> {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::FileExt;
        let mut v = Validators::of(&file.metadata()?);
        for _ in 0..3 {
            if !by_content || v.len > CONTENT_ETAG_MAX {
                return Ok(Tag { validators: v, etag: v.etag(), stamp: v.mtime_ns as i64 });
            }
            let mut bytes = vec![0; v.len as usize];
            // Shorter than its length a moment ago: truncated meanwhile,
            // which the next look at its validators says.
            match file.read_exact_at(&mut bytes, 0) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                other => other?,
            }
            let now = Validators::of(&file.metadata()?);
            if now == v {
                let digest = Sha256::digest(&bytes);
                let head: [u8; 8] = digest[..8].try_into().expect("8 bytes");
                return Ok(Tag {
                    validators: v,
                    etag: format!("\"c-{}\"", URL_SAFE_NO_PAD.encode(&digest[..16])),
                    stamp: (u64::from_le_bytes(head) >> 2) as i64,
                });
            }
            v = now;
        }
        Err(io::Error::new(io::ErrorKind::WouldBlock, "file keeps changing while its content is tagged"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// The root-relative check decodes `statx` as std does: for the same
    /// file it equals the descriptor's validators (else every path check
    /// would call a current file stale), through a symlink too.
    #[test]
    fn validators_at_a_relative_path_match_the_descriptors() {
        let dir = std::env::temp_dir().join(format!("tessera-validators-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/t.png"), b"tile").unwrap();
        let _ = std::os::unix::fs::symlink("b/t.png", dir.join("a/link.png"));
        let root: OwnedFd = File::open(&dir).unwrap().into();
        let of = Validators::of(&File::open(dir.join("a/b/t.png")).unwrap().metadata().unwrap());
        assert_eq!(Validators::at(&root, b"a/b/t.png").unwrap(), of);
        assert_eq!(Validators::at(&root, b"a/link.png").unwrap(), of, "symlinks are followed");
        assert!(Validators::at(&root, b"a/b/none.png").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
