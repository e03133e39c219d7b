//! Tiles: the formats tessera serves, and the one parser of a tile's address
//! (`{z}/{x}/{y}.{ext}`) that the HTTP layer, the catalog and the fuzzer
//! share, so that a URL and a file name can never disagree on what is a tile.

use std::fmt;

/// The formats tiles are served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Png,
    Jpeg,
    Webp,
    /// Mapbox vector tiles (`.pbf` or `.mvt`), often stored gzipped.
    Pbf,
}

impl Format {
    /// The format of a file extension or a declared format (MBTiles
    /// `metadata`), in any case; `jpeg` is `jpg`, `mvt` is `pbf`.
    pub fn from_name(name: &str) -> Option<Format> {
        const NAMES: [(&str, Format); 6] = [
            ("png", Format::Png),
            ("jpg", Format::Jpeg),
            ("jpeg", Format::Jpeg),
            ("webp", Format::Webp),
            ("pbf", Format::Pbf),
            ("mvt", Format::Pbf),
        ];
        NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, f)| f)
    }

    /// The format of a tile from its first bytes (an MBTiles file that does
    /// not declare one); anything not an image is taken for a vector tile.
    pub fn sniff(data: &[u8]) -> Format {
        match data {
            [0x89, b'P', b'N', b'G', ..] => Format::Png,
            [0xff, 0xd8, 0xff, ..] => Format::Jpeg,
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Format::Webp,
            _ => Format::Pbf,
        }
    }

    /// The name in the catalog, TileJSON and tile URL templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpg",
            Format::Webp => "webp",
            Format::Pbf => "pbf",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::Webp => "image/webp",
            Format::Pbf => "application/x-protobuf",
        }
    }

    /// Vector tiles: a missing one is an empty tile (204), and a stored
    /// gzip is an encoding to negotiate.
    pub fn is_vector(self) -> bool {
        self == Format::Pbf
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tile's address: zoom, column, row (as the request or the file names
/// it) and format, with the extension as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    pub z: u32,
    pub x: u32,
    pub y: u32,
    pub format: Format,
    /// The extension in lower case, as the file is named (`jpeg` stays `jpeg`).
    pub ext: String,
}

/// Why a path is not a tile's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotATile {
    /// Not coordinates at all (a client's mistake: 400).
    Malformed,
    /// An unknown format, or a coordinate outside its zoom level (404).
    Outside,
}

/// The deepest zoom level of any tile scheme in use (and 2^z fits a u32).
pub const MAX_ZOOM: u32 = 30;

impl Tile {
    /// Parses `{z}`, `{x}` and `{y}.{ext}`: decimal digits only (no sign,
    /// at most 10 digits), a known format, `x` and `y` below `2^z`.
    pub fn parse(z: &str, x: &str, file: &str) -> Result<Tile, NotATile> {
        let number = |s: &str| -> Result<u32, NotATile> {
            if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NotATile::Malformed);
            }
            s.parse().map_err(|_| NotATile::Malformed)
        };
        let (y, ext) = file.split_once('.').ok_or(NotATile::Malformed)?;
        let (z, x, y) = (number(z)?, number(x)?, number(y)?);
        let format = Format::from_name(ext).ok_or(NotATile::Outside)?;
        if z > MAX_ZOOM || x >> z != 0 || y >> z != 0 {
            return Err(NotATile::Outside);
        }
        Ok(Tile { z, x, y, format, ext: ext.to_ascii_lowercase() })
    }

    /// `{tileset}/{z}/{x}/{y}.{ext}` relative to a tiles root, if `rel` is one.
    pub fn parse_rel(rel: &str) -> Option<(&str, Tile)> {
        let mut parts = rel.split('/');
        let (Some(tileset), Some(z), Some(x), Some(file), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some((tileset, Tile::parse(z, x, file).ok()?))
    }

    /// The same tile with its row counted from the other edge (XYZ <-> TMS).
    pub fn flipped(&self) -> Tile {
        Tile { y: flip_row(self.z, self.y), ..self.clone() }
    }

    /// Its file below a tiles root: `{tileset}/{z}/{x}/{y}.{ext}`.
    pub fn rel(&self, tileset: &str) -> String {
        format!("{tileset}/{}/{}/{}.{}", self.z, self.x, self.y, self.ext)
    }
}

/// The XYZ tiles of zoom `z` that cover `bounds` (west, south, east, north
/// in degrees): `[z, x0, x1, y0, y1]`, clamped to the level and to Web
/// Mercator's latitudes.
pub fn extent(z: u32, bounds: [f64; 4]) -> [u32; 5] {
    let n = f64::from(1u32 << z.min(31));
    let last = (1u64 << z.min(31)) - 1;
    let clamp = |v: f64| (v.floor().max(0.0) as u64).min(last) as u32;
    let x = |lon: f64| clamp((lon.clamp(-180.0, 180.0) + 180.0) / 360.0 * n);
    let y = |lat: f64| {
        let lat = lat.clamp(-85.051_128_779_806_6, 85.051_128_779_806_6).to_radians();
        clamp((1.0 - lat.tan().asinh() / std::f64::consts::PI) / 2.0 * n)
    };
    let [w, s, e, north] = bounds;
    [z, x(w), x(e), y(north), y(s)]
}

/// Row `y` of zoom `z` counted from the other edge (XYZ <-> TMS).
pub fn flip_row(z: u32, y: u32) -> u32 {
    ((1u64 << z) - 1 - u64::from(y)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let t = Tile::parse("2", "3", "1.PNG").unwrap();
        assert_eq!((t.z, t.x, t.y, t.format, t.ext.as_str()), (2, 3, 1, Format::Png, "png"));
        assert_eq!(Tile::parse("2", "4", "1.png"), Err(NotATile::Outside));
        assert_eq!(Tile::parse("2", "1", "1.gif"), Err(NotATile::Outside));
        assert_eq!(Tile::parse("31", "0", "0.png"), Err(NotATile::Outside));
        for bad in [("+1", "0", "0.png"), ("1", "-0", "0.png"), ("1", "0", "0"), ("", "0", "0.png")] {
            assert_eq!(Tile::parse(bad.0, bad.1, bad.2), Err(NotATile::Malformed), "{bad:?}");
        }
        let (name, t) = Tile::parse_rel("world/3/1/6.jpeg").unwrap();
        assert_eq!((name, t.format, t.rel(name)), ("world", Format::Jpeg, "world/3/1/6.jpeg".to_string()));
        assert_eq!(t.flipped().y, 1);
        assert!(Tile::parse_rel("world/3/1").is_none() && Tile::parse_rel("a/world/3/1/6.png").is_none());
    }

    #[test]
    fn extents_cover_bounds() {
        let world = [-180.0, -85.0511, 180.0, 85.0511];
        assert_eq!(extent(0, world), [0, 0, 0, 0, 0]);
        assert_eq!(extent(3, world), [3, 0, 7, 0, 7]);
        // Berlin at zoom 10 is tile 550/335.
        assert_eq!(extent(10, [13.4, 52.5, 13.4, 52.5]), [10, 550, 550, 335, 335]);
    }

    #[test]
    fn formats() {
        assert_eq!(Format::from_name("MVT"), Some(Format::Pbf));
        assert_eq!(Format::from_name("jpeg").map(Format::as_str), Some("jpg"));
        assert_eq!(Format::sniff(b"\x89PNG\r\n"), Format::Png);
        assert_eq!(Format::sniff(&[0x1f, 0x8b]), Format::Pbf);
    }
}
