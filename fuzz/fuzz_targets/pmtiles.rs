//! PMTiles archives: `pmtiles::Header::parse`, `decompress` and
//! `decode_directory` over any bytes, and lookups through what they give.
//!
//! Invariants, beyond "never panics":
//!  * a decoded directory has increasing tile ids and no entry of length 0,
//!    and encoding it again (the spec's rules, written here) decodes to the
//!    same entries;
//!  * `find` gives only an entry that holds the id (exact, inside its run)
//!    or a leaf before it;
//!  * a parsed header's sections all end inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::pmtiles::{
    decode_directory, decompress, find, tile_id, Compression, Entry, Header, DIRECTORY_MAX, MAX_DEPTH,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = decode_directory(data) {
        check_directory(&entries);
    }
    let len = data.len() as u64;
    let Ok(header) = Header::parse(data, len) else { return };
    for s in [header.root, header.metadata, header.leaves, header.tile_data] {
        assert!(s.offset.checked_add(s.length).is_some_and(|end| end <= len), "{s:?} past {len}");
    }
    // Lookups of a few tiles through the archive's own directories.
    for (z, x, y) in [(0, 0, 0), (1, 1, 0), (3, 5, 2), (14, 8191, 5000)] {
        let Some(id) = tile_id(z, x, y) else { continue };
        let mut dir = header.root;
        for _ in 0..MAX_DEPTH {
            let stored = &data[dir.offset as usize..(dir.offset + dir.length) as usize];
            let Ok(bytes) = decompress(header.internal_compression, stored, DIRECTORY_MAX) else { break };
            let Ok(entries) = decode_directory(&bytes) else { break };
            let Some(e) = find(&entries, id) else { break };
            if !e.is_leaf() {
                break;
            }
            let Some(offset) = header.leaves.offset.checked_add(e.offset) else { break };
            if offset.checked_add(e.length).map_or(true, |end| end > len) {
                break;
            }
            dir = tessera::pmtiles::Section { offset, length: e.length };
        }
    }
    let _ = decompress(Compression::Gzip, data, 1 << 16);
});

fn check_directory(entries: &[Entry]) {
    for w in entries.windows(2) {
        assert!(w[1].tile_id > w[0].tile_id, "ids {} then {}", w[0].tile_id, w[1].tile_id);
    }
    assert!(entries.iter().all(|e| e.length > 0));
    let again = decode_directory(&encode(entries)).expect("a decoded directory encodes and decodes");
    assert_eq!(again, entries);
    for e in entries.iter().take(8) {
        for id in [e.tile_id, e.tile_id.saturating_add(1), e.tile_id.saturating_add(e.run_length)] {
            if let Some(found) = find(entries, id) {
                assert!(found.tile_id <= id);
                assert!(found.tile_id == id || found.is_leaf() || id - found.tile_id < found.run_length);
            }
        }
    }
}

/// The spec's directory encoding.
fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |mut v: u64, out: &mut Vec<u8>| loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    };
    push(entries.len() as u64, &mut out);
    let mut last = 0;
    for e in entries {
        push(e.tile_id - last, &mut out);
        last = e.tile_id;
    }
    for e in entries {
        push(e.run_length, &mut out);
    }
    for e in entries {
        push(e.length, &mut out);
    }
    for (i, e) in entries.iter().enumerate() {
        let follows = i > 0 && Some(e.offset) == entries[i - 1].offset.checked_add(entries[i - 1].length);
        push(if follows { 0 } else { e.offset + 1 }, &mut out);
    }
    out
}
