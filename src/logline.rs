//! Log lines and their timestamps: the one definition the catalog's time
//! index, the listing's first and last times and the HTTP layer's time
//! slices all share, so that they can never disagree about a line.
//!
//! A line ends with `\n`; bytes after the last `\n` are a line still being
//! written and belong to no slice yet. A line's timestamp, to the
//! millisecond, is found by its shape:
//! - JSON lines (`{` first): the first `"ts"`, `"timestamp"` or `"time"` key
//!   (tried in that order) whose value is an RFC 3339 string or a number of
//!   epoch seconds (milliseconds from 1e11 up);
//! - CSV whose first line names a `timestamp`, `time` or `ts` column: that
//!   field;
//! - otherwise the line's first word (up to a space or comma, without
//!   `[`, `]` or `"` around it), if it is an RFC 3339 time.
//!
//! A line without a timestamp (a CSV header, a stack trace's continuation)
//! belongs to the timestamped line before it; lines before the first
//! timestamped one belong to none.
//!
//! The parsing is by hand, not serde or chrono: the index reads every line
//! of a log and must keep up with the disk (about 1 GB/s on one core).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use memchr::memmem;

/// What the first line of a log says about the rest: which CSV column holds
/// the time, if any.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub csv_column: Option<usize>,
}

impl Shape {
    /// The shape a file's first line gives (a CSV header names its time column).
    pub fn learn(first_line: &[u8]) -> Shape {
        let line = trim(first_line);
        if line.first() == Some(&b'{') || memchr::memchr(b',', line).is_none() {
            return Shape::default();
        }
        let csv_column = line.split(|&b| b == b',').position(|c| {
            let c = trim_quotes(trim(c));
            c.eq_ignore_ascii_case(b"timestamp") || c.eq_ignore_ascii_case(b"time") || c.eq_ignore_ascii_case(b"ts")
        });
        Shape { csv_column }
    }

    /// The line's timestamp in Unix milliseconds, if it has one.
    pub fn time(&self, line: &[u8]) -> Option<i64> {
        let line = trim(line);
        if line.first() == Some(&b'{') {
            return json_time(line);
        }
        if let Some(col) = self.csv_column {
            if let Some(t) = line.split(|&b| b == b',').nth(col).and_then(|f| rfc3339_ms(trim_quotes(trim(f)))) {
                return Some(t);
            }
        }
        // A time is at most 40-odd bytes: look no further for the first word's end.
        let head = &line[..line.len().min(64)];
        let end = head.iter().position(|&b| b == b' ' || b == b'\t' || b == b',').unwrap_or(head.len());
        let word = &line[..end];
        let word = word.strip_prefix(b"[").unwrap_or(word);
        let word = word.strip_suffix(b"]").unwrap_or(word);
        rfc3339_ms(trim_quotes(word))
    }
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

fn trim_quotes(s: &[u8]) -> &[u8] {
    let s = s.strip_prefix(b"\"").unwrap_or(s);
    s.strip_suffix(b"\"").unwrap_or(s)
}

const JSON_KEYS: [&[u8]; 3] = [b"\"ts\"", b"\"timestamp\"", b"\"time\""];

fn json_time(line: &[u8]) -> Option<i64> {
    for key in JSON_KEYS {
        for at in memmem::find_iter(line, key) {
            if let Some(t) = json_value_time(&line[at + key.len()..]) {
                return Some(t);
            }
        }
    }
    None
}

/// The time of the value after a key: `: "RFC 3339"` or `: number`.
fn json_value_time(rest: &[u8]) -> Option<i64> {
    let rest = rest.trim_ascii_start().strip_prefix(b":")?.trim_ascii_start();
    if let Some(string) = rest.strip_prefix(b"\"") {
        let end = memchr::memchr(b'"', string)?;
        return rfc3339_ms(&string[..end]);
    }
    let end = rest.iter().position(|&b| !(b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')))?;
    let n: f64 = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    if !n.is_finite() {
        return None;
    }
    // Past 1e11 it is milliseconds (1e11 seconds is the year 5138).
    Some(if n.abs() >= 1e11 { n as i64 } else { (n * 1000.0) as i64 })
}

/// An RFC 3339 time (`2026-11-20T06:00:00.250+01:00`; `t` or a space for
/// `T`, `z` for `Z`, any number of fractional digits) in Unix milliseconds,
/// fractions below the millisecond cut off. The whole of `s` must be the time.
pub fn rfc3339_ms(s: &[u8]) -> Option<i64> {
    if s.len() < 20 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        s[from..from + len].iter().try_fold(0i64, |n, &b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't' | b' ') || s[13] != b':' || s[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second, counted as the next second (as chrono does).
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if s[i] == b'.' {
        i += 1;
        let digits = s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for k in 0..3 {
            millis = millis * 10 + if k < digits { i64::from(s[i + k] - b'0') } else { 0 };
        }
        i += digits;
    }
    let offset_minutes = match s.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The longest line: a run of bytes without a newline is cut into lines of
/// this length, so that a file that is not a line log (or a line that never
/// ends) costs bounded memory and one pass, like any other.
pub const MAX_LINE: usize = 1 << 20;

/// Reads whole lines of a file forward from an offset with positional reads
/// (the descriptor may be shared with responses being sent), in chunks of a
/// given size.
pub struct Lines<'a> {
    file: &'a File,
    /// Read bytes are `buf[..filled]`; the buffer is reused, never zeroed again.
    buf: Vec<u8>,
    filled: usize,
    /// File offset of `buf[0]`.
    base: u64,
    /// Start of the next line in `buf`.
    pos: usize,
    /// How far `buf` has been searched for a newline.
    scanned: usize,
    /// Read no further than this offset.
    end: u64,
    chunk: usize,
    /// Bytes read from the file so far.
    pub read: u64,
}

impl<'a> Lines<'a> {
    pub fn new(file: &'a File, from: u64, end: u64, chunk: usize) -> Lines<'a> {
        Lines { file, buf: Vec::new(), filled: 0, base: from, pos: 0, scanned: 0, end, chunk, read: 0 }
    }

    /// The next complete line (with its `\n`, or [`MAX_LINE`] bytes of one
    /// without) and its offset; `None` at the end, where a last line
    /// without `\n` is left unread.
    pub fn next_line(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        loop {
            // A line ends at its newline or MAX_LINE bytes in, wherever the
            // reading started: never search past that.
            let limit = self.filled.min(self.pos + MAX_LINE);
            let stop = match memchr::memchr(b'\n', &self.buf[self.scanned..limit]) {
                Some(n) => Some(self.scanned + n + 1),
                None if limit == self.pos + MAX_LINE => Some(limit),
                None => None,
            };
            if let Some(stop) = stop {
                let start = self.pos;
                self.pos = stop;
                self.scanned = stop;
                return Ok(Some((self.base + start as u64, &self.buf[start..stop])));
            }
            self.scanned = limit;
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Moves the unread tail of the buffer to its front and reads the next
    /// chunk after it; false at the end.
    fn fill(&mut self) -> io::Result<bool> {
        let at = self.base + self.filled as u64;
        if at >= self.end {
            return Ok(false);
        }
        self.buf.copy_within(self.pos..self.filled, 0);
        self.base += self.pos as u64;
        self.filled -= self.pos;
        self.scanned -= self.pos;
        self.pos = 0;
        let want = (self.end - at).min(self.chunk as u64) as usize;
        if self.buf.len() < self.filled + want {
            self.buf.resize(self.filled + want, 0);
        }
        let mut got = 0;
        while got < want {
            let from = self.filled + got;
            match self.file.read_at(&mut self.buf[from..from + want - got], at + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.filled += got;
        self.read += got as u64;
        if got == 0 {
            self.end = at;
        }
        Ok(got > 0)
    }
}

/// The first line of a file (up to 64 KiB), for [`Shape::learn`].
pub fn first_line(file: &File) -> io::Result<Vec<u8>> {
    let mut lines = Lines::new(file, 0, 64 * 1024, 64 * 1024);
    Ok(lines.next_line()?.map(|(_, l)| l.to_vec()).unwrap_or_default())
}

/// A mark is put on the first timestamped line at least this far past the
/// previous mark: a slice's boundaries are found by reading at most this
/// much at each end, and the index costs about 0.03 % of the log.
pub const MARK_EVERY: u64 = 64 * 1024;

/// Read size of a whole-file pass (indexing, filtering).
const SCAN_CHUNK: usize = 1 << 20;

/// A line start where the time index points: the line at `offset` has time `ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub offset: u64,
    pub ms: i64,
}

/// How far a log has been indexed, and what was learnt on the way: the
/// state an append continues from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub shape: Shape,
    /// End of the last whole line read.
    pub indexed_to: u64,
    /// Earliest and latest time seen, and the last line's.
    pub min_ms: Option<i64>,
    pub max_ms: Option<i64>,
    pub prev_ms: Option<i64>,
    /// No timestamp so far is earlier than the one before it.
    pub ordered: bool,
    /// Offset of the last mark, and how many there are.
    pub last_mark: Option<u64>,
    pub marks: u64,
}

impl Progress {
    pub fn new() -> Progress {
        Progress { ordered: true, ..Progress::default() }
    }

    /// Reads the whole lines from `indexed_to` up to `end` and returns the
    /// marks among them, and whether it stopped at an unwritten line (see
    /// [`unwritten`]): the index goes no further until that is written.
    /// From offset 0 the first line teaches the shape.
    pub fn extend(&mut self, file: &File, end: u64) -> io::Result<(Vec<Mark>, bool)> {
        if self.indexed_to == 0 {
            self.shape = Shape::learn(&first_line(file)?);
        }
        let mut marks = Vec::new();
        let mut lines = Lines::new(file, self.indexed_to, end, SCAN_CHUNK);
        while let Some((at, line)) = lines.next_line()? {
            if unwritten(line) {
                return Ok((marks, true));
            }
            self.indexed_to = at + line.len() as u64;
            let Some(ms) = self.shape.time(line) else { continue };
            if self.prev_ms.is_some_and(|prev| ms < prev) {
                self.ordered = false;
            }
            self.prev_ms = Some(ms);
            self.min_ms = Some(self.min_ms.map_or(ms, |m| m.min(ms)));
            self.max_ms = Some(self.max_ms.map_or(ms, |m| m.max(ms)));
            if self.last_mark.map_or(true, |last| at >= last + MARK_EVERY) {
                marks.push(Mark { offset: at, ms });
                self.last_mark = Some(at);
                self.marks += 1;
            }
        }
        Ok((marks, false))
    }
}

/// A line that starts with a NUL byte: space a file holds but nobody wrote
/// yet (a preallocated or sparse log, a binary file). It belongs to no
/// slice, and a file that has one is read through, never sliced by offsets:
/// when it is written, its lines may go anywhere.
pub fn unwritten(line: &[u8]) -> bool {
    line.first() == Some(&0)
}

/// The first and last time of a log from its two ends (64 KiB of each):
/// its span while the index has not read it all.
pub fn ends(file: &File, len: u64) -> io::Result<(Option<i64>, Option<i64>)> {
    const WINDOW: u64 = 64 * 1024;
    let shape = Shape::learn(&first_line(file)?);
    let mut head = Lines::new(file, 0, len.min(WINDOW), WINDOW as usize);
    let mut first = None;
    while let Some((_, line)) = head.next_line()? {
        if let Some(ms) = shape.time(line) {
            first = Some(ms);
            break;
        }
    }
    // A window that starts inside a line starts at the next one.
    let from = len.saturating_sub(WINDOW);
    let mut tail = Lines::new(file, from, len, WINDOW as usize);
    let mut skip = from > 0;
    let mut last = None;
    while let Some((_, line)) = tail.next_line()? {
        if std::mem::take(&mut skip) {
            continue;
        }
        last = shape.time(line).or(last);
    }
    Ok((first, last.or(first)))
}

/// A check of the bytes just before `indexed_to`, to tell an append (they
/// are still there) from a rewrite in place (they are not).
pub fn tail_check(file: &File, indexed_to: u64) -> io::Result<i64> {
    let from = indexed_to.saturating_sub(4096);
    let mut buf = vec![0; (indexed_to - from) as usize];
    file.read_exact_at(&mut buf, from)?;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&buf);
    Ok(i64::from_le_bytes(digest[..8].try_into().expect("8 bytes")))
}

/// Where a boundary search ended and how much it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub offset: u64,
    pub read: u64,
}

/// In a time-ordered file, the offset of the first timestamped line at or
/// after `from` (a line start) whose time is at least `ms`, or the end of
/// the whole lines before `end` if there is none. Lines without a time go
/// with the line before them, so they are never a boundary.
pub fn boundary(file: &File, shape: &Shape, from: u64, end: u64, ms: i64) -> io::Result<Found> {
    let mut lines = Lines::new(file, from, end, MARK_EVERY as usize);
    let mut after = from;
    while let Some((at, line)) = lines.next_line()? {
        if shape.time(line).is_some_and(|t| t >= ms) {
            return Ok(Found { offset: at, read: lines.read });
        }
        after = at + line.len() as u64;
    }
    Ok(Found { offset: after, read: lines.read })
}

/// Whether the whole lines from `from` to `end` keep time order after a
/// line of time `prev_ms`, with no unwritten line: the part of a growing
/// log the index has not read yet.
pub fn still_ordered(file: &File, shape: &Shape, from: u64, end: u64, mut prev_ms: Option<i64>) -> io::Result<bool> {
    let mut lines = Lines::new(file, from, end, SCAN_CHUNK);
    while let Some((_, line)) = lines.next_line()? {
        if unwritten(line) {
            return Ok(false);
        }
        if let Some(ms) = shape.time(line) {
            if prev_ms.is_some_and(|prev| ms < prev) {
                return Ok(false);
            }
            prev_ms = Some(ms);
        }
    }
    Ok(true)
}

/// The byte runs `[start, end)` of the whole lines before `end` whose
/// times fall in `[since, until)`, each with the untimed lines after it, by
/// reading the whole file: the answer for a file that is not in time order.
/// Adjacent lines make one run. Also returns the end of the whole lines.
pub fn filter_runs(file: &File, since: i64, until: i64, end: u64) -> io::Result<(Vec<(u64, u64)>, u64)> {
    let shape = Shape::learn(&first_line(file)?);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut lines = Lines::new(file, 0, end, SCAN_CHUNK);
    let mut inside = false;
    let mut whole_end = 0;
    while let Some((at, line)) = lines.next_line()? {
        whole_end = at + line.len() as u64;
        if unwritten(line) {
            inside = false;
        } else if let Some(ms) = shape.time(line) {
            inside = since <= ms && ms < until;
        }
        if inside {
            match runs.last_mut() {
                Some(run) if run.1 == at => run.1 = whole_end,
                _ => runs.push((at, whole_end)),
            }
        }
    }
    Ok((runs, whole_end))
}

/// The next line of a stream into `line` (cleared first), as [`Lines`]
/// cuts them: up to a newline or [`MAX_LINE`] bytes. False at the end,
/// where a last line without a newline is left out.
pub fn read_line(reader: &mut impl io::BufRead, line: &mut Vec<u8>) -> io::Result<bool> {
    line.clear();
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(false);
        }
        let room = MAX_LINE - line.len();
        let (take, done) = match memchr::memchr(b'\n', &available[..available.len().min(room)]) {
            Some(n) => (n + 1, true),
            None if available.len() >= room => (room, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(true);
        }
    }
}

/// Why a stream was given up: it passed a limit (the text says which).
#[derive(Debug)]
pub struct TooLarge(pub String);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TooLarge {}

/// [`filter_runs`] for a stream (a decompressed log): the matching lines'
/// bytes, or an error holding [`TooLarge`] once they pass `cap` bytes.
pub fn filter_stream(mut reader: impl io::BufRead, since: i64, until: i64, cap: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut shape = None;
    let mut inside = false;
    let mut line = Vec::new();
    loop {
        if !read_line(&mut reader, &mut line)? {
            return Ok(out);
        }
        let shape = *shape.get_or_insert_with(|| Shape::learn(&line));
        if unwritten(&line) {
            inside = false;
        } else if let Some(ms) = shape.time(&line) {
            inside = since <= ms && ms < until;
        }
        if inside {
            out.extend_from_slice(&line);
            if out.len() > cap {
                let why = format!("this span holds more than {} MiB of lines; ask for a shorter one", cap >> 20);
                return Err(io::Error::other(TooLarge(why)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_ms(s: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
    }

    #[test]
    fn rfc3339_agrees_with_chrono() {
        for s in [
            "2026-11-20T06:00:00Z",
            "2026-11-20t06:00:00z",
            "2026-11-20 06:00:00Z",
            "2026-11-20T06:00:00.1Z",
            "2026-11-20T06:00:00.123456789+01:30",
            "2026-11-20T06:00:00-05:00",
            "1969-12-31T23:59:59.999Z",
            "2024-02-29T12:00:00Z",
            "2016-12-31T23:59:60Z",
            "2000-01-01T00:00:00+23:59",
        ] {
            assert_eq!(rfc3339_ms(s.as_bytes()), chrono_ms(s), "{s}");
            assert!(chrono_ms(s).is_some(), "{s}");
        }
        for s in [
            "2026-11-20T06:00:00",
            "2026-13-20T06:00:00Z",
            "2025-02-29T06:00:00Z",
            "2026-11-20T24:00:00Z",
            "2026-11-20T06:00:00.Z",
            "2026-11-20T06:00:00+0100",
            "2026-11-20T06:00:00Zx",
            "2026/11/20T06:00:00Z",
        ] {
            assert_eq!(rfc3339_ms(s.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn shapes() {
        let plain = Shape::default();
        assert_eq!(plain.time(b"2026-11-20T06:00:00Z INFO up\n"), chrono_ms("2026-11-20T06:00:00Z"));
        assert_eq!(plain.time(b"[2026-11-20T06:00:00Z] up\n"), chrono_ms("2026-11-20T06:00:00Z"));
        assert_eq!(plain.time(b"  at frame 3\n"), None);
        let json = br#"{"device":"p","ts":"2026-11-20T06:00:01Z","v":1}"#;
        assert_eq!(plain.time(json), chrono_ms("2026-11-20T06:00:01Z"));
        assert_eq!(plain.time(br#"{"kind":"ts","time": 1763618400.5}"#), Some(1_763_618_400_500));
        assert_eq!(plain.time(br#"{"timestamp":1763618400500}"#), Some(1_763_618_400_500));
        let csv = Shape::learn(b"flow,\"Timestamp\"\r\n");
        assert_eq!(csv.csv_column, Some(1));
        assert_eq!(csv.time(b"1.5,2026-11-20T06:00:00Z\r\n"), chrono_ms("2026-11-20T06:00:00Z"));
        assert_eq!(csv.time(b"flow,timestamp\n"), None);
    }

    #[test]
    fn lines_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"one\ntwo two\n\nthree-is-longer-than-a-chunk\npartial").unwrap();
        let file = File::open(&path).unwrap();
        let mut lines = Lines::new(&file, 0, u64::MAX, 4);
        let mut got = Vec::new();
        while let Some((at, line)) = lines.next_line().unwrap() {
            got.push((at, String::from_utf8(line.to_vec()).unwrap()));
        }
        assert_eq!(
            got,
            [
                (0, "one\n".into()),
                (4, "two two\n".into()),
                (12, "\n".into()),
                (13, "three-is-longer-than-a-chunk\n".into())
            ]
        );
    }

    #[test]
    fn a_line_without_end_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let mut body = vec![b'x'; 2 * MAX_LINE + 10];
        body.push(b'\n');
        std::fs::write(&path, &body).unwrap();
        let file = File::open(&path).unwrap();
        let mut lines = Lines::new(&file, 0, u64::MAX, 64 * 1024);
        let mut got = Vec::new();
        while let Some((at, line)) = lines.next_line().unwrap() {
            got.push((at, line.len()));
        }
        assert_eq!(got, [(0, MAX_LINE), (MAX_LINE as u64, MAX_LINE), (2 * MAX_LINE as u64, 11)]);
        let mut reader = io::BufReader::new(&body[..]);
        let mut line = Vec::new();
        let mut lens = Vec::new();
        while read_line(&mut reader, &mut line).unwrap() {
            lens.push(line.len());
        }
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 11]);
    }
}
