//! Media types of stored files, by extension: the `Content-Type` a cache
//! entry prepares once.

use std::path::Path;

use crate::tile::Format;

/// The media type for a stored file, by extension: a tile's by its format,
/// a log's by what loggers write.
pub fn content_type(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = name.rsplit('.').next().unwrap_or("");
    if let Some(format) = Format::from_name(ext) {
        return format.content_type();
    }
    match ext.to_ascii_lowercase().as_str() {
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "csv" => "text/csv; charset=utf-8",
        "log" | "txt" => "text/plain; charset=utf-8",
        "gz" => "application/gzip",
        // The media type the PMTiles spec registers.
        "pmtiles" => "application/vnd.pmtiles",
        _ => "application/octet-stream",
    }
}
