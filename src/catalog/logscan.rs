//! Finds the first and last timestamp in a telemetry log.
//!
//! Understood line shapes: JSON lines with a `ts`, `timestamp` or `time`
//! field (RFC 3339 string, or epoch seconds or milliseconds), CSV whose header
//! names a `timestamp`, `time` or `ts` column, and plain lines that begin with
//! an RFC 3339 timestamp. Gzip files are read through a decoder.
//!
//! Plain files are read only at both ends (a head and a tail window), so a
//! growing multi-gigabyte log costs two small reads per change.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use chrono::DateTime;

/// How much of each end of a plain file is searched for a timestamp.
const WINDOW: u64 = 64 * 1024;
/// Decompressed bytes read from a gzip file at most.
const GZIP_LIMIT: u64 = 1 << 30;

/// First and last timestamps in the file, as Unix milliseconds.
pub fn time_span(path: &Path) -> io::Result<(Option<i64>, Option<i64>)> {
    time_span_of(File::open(path)?, path)
}

/// [`time_span`] of an open file; `path` says whether it is gzip.
pub fn time_span_of(file: File, path: &Path) -> io::Result<(Option<i64>, Option<i64>)> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
        let decoder = flate2::read::MultiGzDecoder::new(BufReader::new(file)).take(GZIP_LIMIT);
        return scan_stream(BufReader::new(decoder));
    }
    scan_ends(file)
}

/// Remembers which CSV column holds the time, once a header has been seen.
#[derive(Default)]
struct Shape {
    csv_column: Option<usize>,
}

impl Shape {
    fn learn_header(&mut self, line: &str) {
        if self.csv_column.is_none() && line.contains(',') && !line.starts_with('{') {
            self.csv_column = line.split(',').position(|c| {
                matches!(c.trim().trim_matches('"').to_ascii_lowercase().as_str(), "timestamp" | "time" | "ts")
            });
        }
    }

    fn timestamp(&self, line: &str) -> Option<i64> {
        let line = line.trim();
        if line.starts_with('{') {
            return json_timestamp(line);
        }
        if let Some(col) = self.csv_column {
            if let Some(t) = line.split(',').nth(col).and_then(|f| parse_time(f.trim().trim_matches('"'))) {
                return Some(t);
            }
        }
        let first = line.split(|c: char| c.is_whitespace() || c == ',').next()?;
        parse_time(first.trim_matches(|c| c == '[' || c == ']' || c == '"'))
    }
}

fn json_timestamp(line: &str) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    ["ts", "timestamp", "time"].iter().find_map(|k| match value.get(k)? {
        serde_json::Value::String(s) => parse_time(s),
        serde_json::Value::Number(n) => {
            let n = n.as_f64()?;
            // Heuristic: anything past 1e11 is milliseconds (1e11 s is year 5138).
            Some(if n.abs() >= 1e11 { n as i64 } else { (n * 1000.0) as i64 })
        }
        _ => None,
    })
}

fn parse_time(s: &str) -> Option<i64> {
    if s.len() < 19 || !s.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

fn scan_stream(reader: impl BufRead) -> io::Result<(Option<i64>, Option<i64>)> {
    let mut shape = Shape::default();
    let (mut first, mut last) = (None, None);
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let line = String::from_utf8_lossy(&line);
        if i == 0 {
            shape.learn_header(&line);
        }
        if let Some(t) = shape.timestamp(&line) {
            first.get_or_insert(t);
            last = Some(t);
        }
    }
    Ok((first, last))
}

fn scan_ends(mut file: File) -> io::Result<(Option<i64>, Option<i64>)> {
    let len = file.metadata()?.len();
    let mut head = Vec::new();
    (&mut file).take(WINDOW).read_to_end(&mut head)?;
    let head = String::from_utf8_lossy(&head);
    let mut shape = Shape::default();
    if let Some(first_line) = head.lines().next() {
        shape.learn_header(first_line);
    }
    let first = head.lines().find_map(|l| shape.timestamp(l));

    let tail_start = len.saturating_sub(WINDOW);
    file.seek(SeekFrom::Start(tail_start))?;
    let mut tail = Vec::new();
    file.take(WINDOW).read_to_end(&mut tail)?;
    let tail = String::from_utf8_lossy(&tail);
    // A window that starts mid-file starts mid-line: skip that partial line.
    let skip = usize::from(tail_start > 0);
    let last = tail.lines().skip(skip).collect::<Vec<_>>().into_iter().rev().find_map(|l| shape.timestamp(l));
    Ok((first, last.or(first)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn span_of(name: &str, body: &[u8]) -> (Option<i64>, Option<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        time_span(&path).unwrap()
    }

    fn ms(s: &str) -> Option<i64> {
        parse_time(s)
    }

    #[test]
    fn json_lines() {
        let body = b"{\"ts\":\"2026-11-20T00:00:00Z\",\"v\":1}\n{\"ts\":\"2026-11-20T23:59:00Z\",\"v\":2}\n";
        assert_eq!(span_of("a.jsonl", body), (ms("2026-11-20T00:00:00Z"), ms("2026-11-20T23:59:00Z")));
    }

    #[test]
    fn csv_with_header_column() {
        let body = b"flow,timestamp\n1.0,2026-11-20T01:00:00Z\n2.0,2026-11-20T02:00:00+01:00\n";
        assert_eq!(span_of("a.csv", body), (ms("2026-11-20T01:00:00Z"), ms("2026-11-20T01:00:00Z")));
    }

    #[test]
    fn plain_lines_and_a_long_file() {
        let mut body = String::new();
        for i in 0..5000 {
            body.push_str(&format!("2026-11-20T{:02}:{:02}:00Z INFO line {i}\n", (i / 60) % 24, i % 60));
        }
        let (first, last) = span_of("events.log", body.as_bytes());
        assert_eq!(first, ms("2026-11-20T00:00:00Z"));
        assert_eq!(last, ms("2026-11-20T11:19:00Z"));
    }

    #[test]
    fn gzip_csv() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"timestamp,flow\n2026-11-19T00:00:00Z,1\n2026-11-19T23:59:00Z,2\n").unwrap();
        let body = enc.finish().unwrap();
        assert_eq!(span_of("a.csv.gz", &body), (ms("2026-11-19T00:00:00Z"), ms("2026-11-19T23:59:00Z")));
    }

    #[test]
    fn no_timestamps() {
        assert_eq!(span_of("notes.txt", b"hello\nworld\n"), (None, None));
    }
}
