//! The first and last time of a compressed log, read through a gzip
//! decoder (plain logs get theirs from their time index, see
//! [`super::timeindex`]). Lines and their times are [`crate::logline`]'s.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use crate::logline::{Shape, TooLarge};

/// Decompressed bytes read from a gzip file at most.
pub const GZIP_LIMIT: u64 = 1 << 30;

/// Whether a log is gzip-compressed (by its name).
pub fn compressed(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// The decompressed bytes of a gzip log; past [`GZIP_LIMIT`] a read fails
/// with [`TooLarge`] (never a silent end: a slice would miss lines).
pub fn decompressed(compressed: impl Read) -> impl BufRead {
    limited(compressed, GZIP_LIMIT)
}

fn limited(compressed: impl Read, limit: u64) -> impl BufRead {
    let decoder = flate2::read::MultiGzDecoder::new(BufReader::new(compressed));
    BufReader::new(Limited { inner: decoder, left: limit, limit })
}

struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(TooLarge(format!(
                    "the compressed log holds more than {} MiB; it is not sliced",
                    self.limit >> 20
                )))),
            };
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Earliest and latest time in a compressed log, as Unix milliseconds.
pub fn compressed_span(file: File) -> io::Result<(Option<i64>, Option<i64>)> {
    span_of_lines(decompressed(file))
}

fn span_of_lines(mut reader: impl BufRead) -> io::Result<(Option<i64>, Option<i64>)> {
    let mut shape = None;
    let (mut min, mut max): (Option<i64>, Option<i64>) = (None, None);
    let mut line = Vec::new();
    loop {
        if !crate::logline::read_line(&mut reader, &mut line)? {
            return Ok((min, max));
        }
        let shape = *shape.get_or_insert_with(|| Shape::learn(&line));
        if let Some(t) = shape.time(&line) {
            min = Some(min.map_or(t, |m| m.min(t)));
            max = Some(max.map_or(t, |m| m.max(t)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ms(s: &str) -> Option<i64> {
        crate::logline::rfc3339_ms(s.as_bytes())
    }

    #[test]
    fn gzip_csv() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"timestamp,flow\n2026-11-19T00:00:00Z,1\n2026-11-19T23:59:00Z,2\n").unwrap();
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
        assert!(compressed(&path));
        let span = compressed_span(File::open(&path).unwrap()).unwrap();
        assert_eq!(span, (ms("2026-11-19T00:00:00Z"), ms("2026-11-19T23:59:00Z")));
    }

    /// Past the limit a read fails: a slice never ends silently short.
    #[test]
    fn past_the_limit_a_read_fails() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b'x'; 3 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        let mut all = Vec::new();
        let err = limited(&gz[..], 2 << 20).read_to_end(&mut all).unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<TooLarge>()), "{err}");
        all.clear();
        assert_eq!(limited(&gz[..], 3 << 20).read_to_end(&mut all).unwrap(), 3 << 20, "exactly the limit is fine");
    }

    #[test]
    fn plain_lines_out_of_order_and_none() {
        let body = b"2026-11-20T02:00:00Z b\n2026-11-20T01:00:00Z a\n  continued\n";
        assert_eq!(span_of_lines(&body[..]).unwrap(), (ms("2026-11-20T01:00:00Z"), ms("2026-11-20T02:00:00Z")));
        assert_eq!(span_of_lines(&b"hello\nworld\n"[..]).unwrap(), (None, None));
    }
}
