//! PMTiles v3 archives (protomaps/PMTiles `spec/v3/spec.md`): the header,
//! directories and tile ids, read by tessera itself because a tile's answer
//! is a byte range of the open archive, sent by sendfile, and the `pmtiles`
//! crate keeps entries' offsets private.
//!
//! Everything here is checked, never trusted: an archive is a file anyone
//! with write access to a tiles root can put there, so every length and
//! offset is bounded by its section and the file, and arithmetic is checked.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// The header's length; the header and the root directory lie within the
/// first [`FIRST_READ`] bytes.
pub const HEADER_LEN: usize = 127;
pub const FIRST_READ: usize = 16_384;
/// The most bytes a directory may decompress to (a root holds at most
/// 16 KiB compressed; leaves are written at a few hundred KiB).
pub const DIRECTORY_MAX: usize = 16 << 20;
/// Directory levels a lookup follows at most (the spec's readers use 4).
pub const MAX_DEPTH: usize = 4;
/// The most bytes the JSON metadata may take, stored or decompressed.
pub const METADATA_MAX: usize = 16 << 20;

/// Why an archive cannot be read: the text names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a readable PMTiles v3 archive: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

fn bad<T>(why: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(why.into()))
}

/// How a section or a tile is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Unknown,
    None,
    Gzip,
    Brotli,
    Zstd,
}

impl Compression {
    fn from_byte(b: u8) -> Result<Compression, Malformed> {
        Ok(match b {
            0 => Compression::Unknown,
            1 => Compression::None,
            2 => Compression::Gzip,
            3 => Compression::Brotli,
            4 => Compression::Zstd,
            other => return bad(format!("compression {other} is not one the spec defines")),
        })
    }

    /// The `Content-Encoding` of a tile stored this way, if any.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::Gzip => Some("gzip"),
            Compression::Brotli => Some("br"),
            Compression::Zstd => Some("zstd"),
            Compression::None | Compression::Unknown => None,
        }
    }
}

/// What the tiles are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileType {
    Unknown,
    Mvt,
    Png,
    Jpeg,
    Webp,
    Avif,
    Mlt,
}

impl TileType {
    fn from_byte(b: u8) -> Result<TileType, Malformed> {
        Ok(match b {
            0 => TileType::Unknown,
            1 => TileType::Mvt,
            2 => TileType::Png,
            3 => TileType::Jpeg,
            4 => TileType::Webp,
            5 => TileType::Avif,
            6 => TileType::Mlt,
            other => return bad(format!("tile type {other} is not one the spec defines")),
        })
    }
}

/// A section of the archive: offset and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    pub offset: u64,
    pub length: u64,
}

impl Section {
    fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }
}

/// The 127-byte header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub root: Section,
    pub metadata: Section,
    pub leaves: Section,
    pub tile_data: Section,
    pub addressed_tiles: u64,
    pub tile_entries: u64,
    pub tile_contents: u64,
    pub clustered: bool,
    pub internal_compression: Compression,
    pub tile_compression: Compression,
    pub tile_type: TileType,
    pub min_zoom: u8,
    pub max_zoom: u8,
    /// West, south, east, north in degrees.
    pub bounds: [f64; 4],
    pub center_zoom: u8,
    /// Longitude and latitude in degrees.
    pub center: [f64; 2],
}

impl Header {
    /// The header of an archive of `file_len` bytes from its first bytes;
    /// every section must lie inside the file.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Header, Malformed> {
        if bytes.len() < HEADER_LEN {
            return bad(format!("{} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len()));
        }
        if &bytes[..7] != b"PMTiles" {
            return bad("no PMTiles magic at the start");
        }
        if bytes[7] != 3 {
            return bad(format!("version {}, only version 3 is read", bytes[7]));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let e7_at = |at: usize| f64::from(i32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))) / 1e7;
        let section = |at: usize| Section { offset: u64_at(at), length: u64_at(at + 8) };
        let header = Header {
            root: section(8),
            metadata: section(24),
            leaves: section(40),
            tile_data: section(56),
            addressed_tiles: u64_at(72),
            tile_entries: u64_at(80),
            tile_contents: u64_at(88),
            clustered: bytes[96] == 1,
            internal_compression: Compression::from_byte(bytes[97])?,
            tile_compression: Compression::from_byte(bytes[98])?,
            tile_type: TileType::from_byte(bytes[99])?,
            min_zoom: bytes[100],
            max_zoom: bytes[101],
            bounds: [e7_at(102), e7_at(106), e7_at(110), e7_at(114)],
            center_zoom: bytes[118],
            center: [e7_at(119), e7_at(123)],
        };
        for (name, s) in [
            ("root directory", header.root),
            ("metadata", header.metadata),
            ("leaf directories", header.leaves),
            ("tile data", header.tile_data),
        ] {
            if s.end().map_or(true, |end| end > file_len) {
                return bad(format!(
                    "the {name} ({} bytes at {}) ends past the file's {file_len} bytes",
                    s.length, s.offset
                ));
            }
        }
        if header.root.length == 0 {
            return bad("the root directory is empty");
        }
        if header.min_zoom > header.max_zoom || header.max_zoom > 31 {
            return bad(format!("zoom levels {} to {}", header.min_zoom, header.max_zoom));
        }
        Ok(header)
    }
}

/// One directory entry: tiles `tile_id .. tile_id + run_length` share the
/// bytes at `offset`, `length` (in the tile data section); `run_length` 0
/// points to a leaf directory instead (in the leaf section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub tile_id: u64,
    pub offset: u64,
    pub length: u64,
    pub run_length: u64,
}

impl Entry {
    pub fn is_leaf(&self) -> bool {
        self.run_length == 0
    }
}

/// A section's bytes as stored, decompressed by the archive's internal
/// compression (none or gzip; brotli and zstd are refused by name), at most
/// `max` bytes.
pub fn decompress(compression: Compression, stored: &[u8], max: usize) -> Result<Vec<u8>, Malformed> {
    match compression {
        Compression::None | Compression::Unknown => {
            if stored.len() > max {
                return bad(format!("a section of {} bytes, more than {max}", stored.len()));
            }
            Ok(stored.to_vec())
        }
        Compression::Gzip => {
            let mut out = Vec::new();
            let mut decoder = flate2::read::GzDecoder::new(stored).take(max as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| Malformed(format!("gzip: {e}")))?;
            if out.len() > max {
                return bad(format!("a section decompresses to more than {max} bytes"));
            }
            Ok(out)
        }
        Compression::Brotli | Compression::Zstd => {
            bad(format!("internal compression {compression:?} is not supported (gzip or none)"))
        }
    }
}

/// Decodes a (decompressed) directory: a count, then its tile ids (as
/// deltas), run lengths, lengths and offsets, each a column of varints.
pub fn decode_directory(bytes: &[u8]) -> Result<Vec<Entry>, Malformed> {
    let mut at = 0;
    let mut next = || varint(bytes, &mut at);
    let n = next()?;
    if n == 0 {
        return bad("an empty directory");
    }
    // Each entry takes at least four bytes: a count larger than that is a lie.
    if n > bytes.len() as u64 / 4 {
        return bad(format!("a directory of {} bytes cannot hold {n} entries", bytes.len()));
    }
    let n = n as usize;
    let mut entries = vec![Entry { tile_id: 0, offset: 0, length: 0, run_length: 0 }; n];
    let mut id = 0u64;
    for (i, e) in entries.iter_mut().enumerate() {
        let delta = next()?;
        if i > 0 && delta == 0 {
            return bad("tile ids do not increase");
        }
        id = id.checked_add(delta).ok_or_else(|| Malformed("a tile id past 2^64".into()))?;
        e.tile_id = id;
    }
    for e in entries.iter_mut() {
        e.run_length = next()?;
    }
    for e in entries.iter_mut() {
        e.length = next()?;
        if e.length == 0 {
            return bad(format!("an entry of length 0 (tile id {})", e.tile_id));
        }
    }
    for i in 0..n {
        let stored = next()?;
        entries[i].offset = match (stored, i) {
            (0, 0) => return bad("the first entry's offset says it follows the one before"),
            (0, _) => {
                let prev = entries[i - 1];
                prev.offset.checked_add(prev.length).ok_or_else(|| Malformed("an offset past 2^64".into()))?
            }
            (v, _) => v - 1,
        };
    }
    Ok(entries)
}

/// Why an archive could not be read: the file (I/O), or what it holds.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    Malformed(Malformed),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "cannot read the archive: {e}"),
            Error::Malformed(m) => m.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<Malformed> for Error {
    fn from(m: Malformed) -> Error {
        Error::Malformed(m)
    }
}

/// `len` bytes at `offset` of `file`; a file shorter than that is malformed
/// (the header said the bytes were there).
pub fn read_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0; len];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(buf),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(Malformed(format!("the file ends inside the {len} bytes at {offset}")).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The header of the archive open as `file`, of `file_len` bytes.
pub fn read_header(file: &File, file_len: u64) -> Result<Header, Error> {
    let first = read_at(file, 0, HEADER_LEN.min(file_len as usize))?;
    Ok(Header::parse(&first, file_len)?)
}

/// The directory stored at `section` (absolute), decompressed and decoded.
pub fn read_directory(file: &File, header: &Header, section: Section) -> Result<Vec<Entry>, Error> {
    if section.length as usize > DIRECTORY_MAX {
        return Err(Malformed(format!("a directory of {} bytes stored", section.length)).into());
    }
    let stored = read_at(file, section.offset, section.length as usize)?;
    Ok(decode_directory(&decompress(header.internal_compression, &stored, DIRECTORY_MAX)?)?)
}

impl Header {
    /// Where the leaf directory of a leaf entry is, checked to lie inside
    /// the leaf section.
    pub fn leaf(&self, e: &Entry) -> Result<Section, Malformed> {
        inside(self.leaves, e, "leaf directory section")
    }

    /// Where a tile's bytes are (absolute offset in the file), checked to
    /// lie inside the tile data section.
    pub fn tile(&self, e: &Entry) -> Result<Section, Malformed> {
        inside(self.tile_data, e, "tile data section")
    }
}

fn inside(section: Section, e: &Entry, name: &str) -> Result<Section, Malformed> {
    match e.offset.checked_add(e.length) {
        Some(end) if end <= section.length => Ok(Section { offset: section.offset + e.offset, length: e.length }),
        _ => bad(format!(
            "tile id {}: {} bytes at {} lie outside the {name} ({} bytes)",
            e.tile_id, e.length, e.offset, section.length
        )),
    }
}

/// What the catalog keeps of an archive, read from its header, metadata and
/// directories (never its tiles, but the first one when the header does not
/// say what the tiles are).
#[derive(Debug, Clone)]
pub struct Summary {
    pub header: Header,
    /// The JSON metadata, an object (empty when the archive has none).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Tiles addressed: the sum of every tile entry's run length.
    pub tile_count: u64,
    /// The first bytes of the first tile, for an archive whose tile type is
    /// unknown (decompressed if the tiles are gzipped).
    pub first_tile: Vec<u8>,
}

/// Reads and checks an archive's header, metadata and every directory: an
/// entry that points outside its section, a directory that does not decode,
/// or metadata that is not a JSON object refuses the whole archive, which is
/// then not served at all (requests check what they read again, since the
/// file may have changed since). Each leaf directory (by offset) is read
/// once however many entries point to it, so a crafted archive cannot make
/// the walk explode.
pub fn summarise(file: &File, file_len: u64) -> Result<Summary, Error> {
    let header = read_header(file, file_len)?;
    let metadata = read_metadata(file, &header)?;
    let mut tile_count = 0u64;
    let mut first: Option<Section> = None;
    let mut seen = std::collections::HashSet::new();
    let mut pending = vec![(header.root, 0usize)];
    while let Some((section, depth)) = pending.pop() {
        if depth >= MAX_DEPTH {
            return Err(Malformed(format!("leaf directories nested deeper than {MAX_DEPTH} levels")).into());
        }
        for e in read_directory(file, &header, section)? {
            if e.is_leaf() {
                let leaf = header.leaf(&e)?;
                if seen.insert(leaf.offset) {
                    pending.push((leaf, depth + 1));
                }
            } else {
                let tile = header.tile(&e)?;
                tile_count = tile_count.saturating_add(e.run_length);
                if first.map_or(true, |f| f.offset > tile.offset) {
                    first = Some(tile);
                }
            }
        }
    }
    let first_tile = match (header.tile_type, first) {
        (TileType::Unknown, Some(s)) => {
            let stored = read_at(file, s.offset, (s.length as usize).min(64))?;
            if stored.starts_with(&[0x1f, 0x8b]) {
                // Only the first bytes matter; a cut stream decodes that far.
                let mut out = Vec::new();
                let _ = flate2::read::GzDecoder::new(&stored[..]).take(64).read_to_end(&mut out);
                out
            } else {
                stored
            }
        }
        _ => Vec::new(),
    };
    Ok(Summary { header, metadata, tile_count, first_tile })
}

fn read_metadata(file: &File, header: &Header) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    if header.metadata.length == 0 {
        return Ok(serde_json::Map::new());
    }
    if header.metadata.length as usize > METADATA_MAX {
        return Err(Malformed(format!("metadata of {} bytes", header.metadata.length)).into());
    }
    let stored = read_at(file, header.metadata.offset, header.metadata.length as usize)?;
    let text = decompress(header.internal_compression, &stored, METADATA_MAX)?;
    match serde_json::from_slice(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(Malformed("the metadata is JSON but not an object".into()).into()),
        Err(e) => Err(Malformed(format!("the metadata is not JSON: {e}")).into()),
    }
}

/// A protobuf-style varint at `*at`, moving past it.
fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let Some(&b) = bytes.get(*at) else { return bad("a directory ends inside a number") };
        *at += 1;
        if shift == 63 && b > 1 {
            return bad("a number past 2^64 in a directory");
        }
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    bad("a number of more than ten bytes in a directory")
}

/// The entry of a directory that holds or leads to `tile_id`: an exact
/// match, else the last entry before it if that is a leaf or its run covers
/// the id.
pub fn find(entries: &[Entry], tile_id: u64) -> Option<Entry> {
    let i = entries.partition_point(|e| e.tile_id <= tile_id);
    let e = *entries.get(i.checked_sub(1)?)?;
    (e.tile_id == tile_id || e.is_leaf() || tile_id - e.tile_id < e.run_length).then_some(e)
}

/// The tile id of `z/x/y` along the Hilbert curve of each zoom level, after
/// all the tiles of the levels above; `None` outside the level.
pub fn tile_id(z: u8, mut x: u64, mut y: u64) -> Option<u64> {
    if z > 31 || x >= 1 << z || y >= 1 << z {
        return None;
    }
    let mut id = ((1u64 << (2 * u32::from(z))) - 1) / 3;
    for a in (0..u32::from(z)).rev() {
        let s = 1u64 << a;
        let (rx, ry) = (u64::from(x & s != 0), u64::from(y & s != 0));
        id += ((3 * rx) ^ ry) << (2 * a);
        x &= s - 1;
        y &= s - 1;
        if ry == 0 {
            if rx == 1 {
                x = s - 1 - x;
                y = s - 1 - y;
            }
            std::mem::swap(&mut x, &mut y);
        }
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// The spec's encoding of a directory, written here independently.
    fn encode(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        push_varint(&mut out, entries.len() as u64);
        let mut last = 0;
        for e in entries {
            push_varint(&mut out, e.tile_id - last);
            last = e.tile_id;
        }
        for e in entries {
            push_varint(&mut out, e.run_length);
        }
        for e in entries {
            push_varint(&mut out, e.length);
        }
        for (i, e) in entries.iter().enumerate() {
            let follows = i > 0 && e.offset == entries[i - 1].offset + entries[i - 1].length;
            push_varint(&mut out, if follows { 0 } else { e.offset + 1 });
        }
        out
    }

    #[test]
    fn tile_ids_follow_the_spec() {
        for ((z, x, y), want) in [
            ((0, 0, 0), 0),
            ((1, 0, 0), 1),
            ((1, 0, 1), 2),
            ((1, 1, 1), 3),
            ((1, 1, 0), 4),
            ((2, 0, 0), 5),
            ((2, 3, 3), 15),
            ((3, 0, 0), 21),
            ((3, 7, 7), 63),
            ((3, 7, 0), 84),
            ((10, 1023, 0), 1_398_100),
            ((12, 3423, 1763), 19_078_479),
            ((14, 8191, 5000), 128_969_450),
            ((20, 0, 0), 366_503_875_925),
            ((31, 0, 0), 1_537_228_672_809_129_301),
            ((31, (1 << 31) - 1, 0), 6_148_914_691_236_517_204),
        ] {
            assert_eq!(tile_id(z, x, y), Some(want), "{z}/{x}/{y}");
        }
        assert_eq!(tile_id(1, 2, 0), None);
        assert_eq!(tile_id(32, 0, 0), None);
        // Every tile of a level gets its own id, inside the level's range.
        let ids: std::collections::BTreeSet<u64> =
            (0..16).flat_map(|x| (0..16).map(move |y| tile_id(4, x, y).unwrap())).collect();
        assert_eq!(ids.len(), 256);
        assert_eq!((*ids.first().unwrap(), *ids.last().unwrap()), (85, 85 + 255));
    }

    #[test]
    fn directories_decode_as_written() {
        let entries = vec![
            Entry { tile_id: 0, offset: 0, length: 10, run_length: 1 },
            Entry { tile_id: 1, offset: 10, length: 5, run_length: 1 },
            // Deduplicated: points back to the first blob.
            Entry { tile_id: 2, offset: 0, length: 10, run_length: 1 },
            // A run of 8 identical tiles.
            Entry { tile_id: 13, offset: 15, length: 5, run_length: 8 },
            Entry { tile_id: 300, offset: 0, length: 99, run_length: 0 },
        ];
        let bytes = encode(&entries);
        assert_eq!(decode_directory(&bytes).unwrap(), entries);
        assert_eq!(find(&entries, 2).map(|e| e.offset), Some(0));
        assert_eq!(find(&entries, 20).map(|e| e.tile_id), Some(13), "inside the run");
        assert_eq!(find(&entries, 21), None, "past the run");
        assert_eq!(find(&entries, 5), None);
        assert!(find(&entries, 100_000).is_some_and(|e| e.is_leaf()), "a leaf covers what follows it");
        let gz = {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&bytes).unwrap();
            enc.finish().unwrap()
        };
        assert_eq!(decompress(Compression::Gzip, &gz, DIRECTORY_MAX).unwrap(), bytes);
        assert!(decompress(Compression::Gzip, &gz, 3).is_err(), "past the cap");
        assert!(decompress(Compression::Zstd, &gz, DIRECTORY_MAX).is_err());
    }

    #[test]
    fn malformed_directories_are_refused_not_trusted() {
        let good = encode(&[
            Entry { tile_id: 5, offset: 0, length: 10, run_length: 1 },
            Entry { tile_id: 9, offset: 10, length: 10, run_length: 1 },
        ]);
        for cut in 0..good.len() {
            assert!(decode_directory(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut first_follows = good.clone();
        let last = first_follows.len() - 2; // the first entry's offset column value
        first_follows[last] = 0;
        assert!(decode_directory(&first_follows).is_err());
        assert!(decode_directory(&[0]).is_err(), "no entries");
        assert!(decode_directory(&[0xff, 0xff, 0xff, 0x7f]).is_err(), "a count the bytes cannot hold");
        assert!(decode_directory(&[0xff; 12]).is_err(), "an endless number");
        let zero_length = encode(&[Entry { tile_id: 0, offset: 0, length: 0, run_length: 1 }]);
        assert!(decode_directory(&zero_length).is_err());
    }

    fn header_bytes(root: (u64, u64), tiles: (u64, u64)) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[..7].copy_from_slice(b"PMTiles");
        h[7] = 3;
        h[8..16].copy_from_slice(&root.0.to_le_bytes());
        h[16..24].copy_from_slice(&root.1.to_le_bytes());
        h[56..64].copy_from_slice(&tiles.0.to_le_bytes());
        h[64..72].copy_from_slice(&tiles.1.to_le_bytes());
        h[96] = 1;
        h[97] = 2;
        h[98] = 1;
        h[99] = 2;
        h[100] = 0;
        h[101] = 14;
        h[102..106].copy_from_slice(&(-1_800_000_000i32).to_le_bytes());
        h[106..110].copy_from_slice(&(-850_511_287i32).to_le_bytes());
        h[110..114].copy_from_slice(&1_800_000_000i32.to_le_bytes());
        h[114..118].copy_from_slice(&850_511_287i32.to_le_bytes());
        h[118] = 2;
        h
    }

    #[test]
    fn headers_are_read_and_checked_against_the_file() {
        let h = Header::parse(&header_bytes((127, 40), (167, 1000)), 1167).unwrap();
        assert_eq!(h.root, Section { offset: 127, length: 40 });
        assert_eq!(h.tile_data, Section { offset: 167, length: 1000 });
        assert_eq!(
            (h.clustered, h.internal_compression, h.tile_compression, h.tile_type),
            (true, Compression::Gzip, Compression::None, TileType::Png)
        );
        assert_eq!((h.min_zoom, h.max_zoom, h.center_zoom), (0, 14, 2));
        assert!((h.bounds[0] + 180.0).abs() < 1e-9 && (h.bounds[3] - 85.0511287).abs() < 1e-9);
        assert!(Header::parse(&header_bytes((127, 40), (167, 1000)), 1166).is_err(), "tile data past the end");
        assert!(Header::parse(&header_bytes((127, 40), (u64::MAX, 2)), u64::MAX).is_err(), "an overflowing section");
        let mut v2 = header_bytes((127, 40), (167, 10));
        v2[7] = 2;
        assert!(Header::parse(&v2, 1000).unwrap_err().0.contains("version 2"));
        assert!(Header::parse(b"PMTiles", 1000).is_err());
        let mut zooms = header_bytes((127, 40), (167, 10));
        zooms[100] = 9;
        zooms[101] = 3;
        assert!(Header::parse(&zooms, 1000).is_err());
    }
}
