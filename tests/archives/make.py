#!/usr/bin/env python3
"""PMTiles archives for tests/archives.rs, written by an independent writer:
the `pmtiles` package of the Protomaps project (pip install pmtiles).

    make.py dir SRC OUT [--unclustered] [--leaves N]
        SRC is a directory tileset ({z}/{x}/{y}.{ext} and metadata.json);
        --unclustered writes tiles out of tile-id order, --leaves N forces
        leaf directories of N entries (the writer otherwise keeps small
        archives in the root directory).
    make.py synthetic OUT DIR MAXZOOM
        every tile of zooms 0..MAXZOOM with its own bytes (and a run of one
        repeated tile per level), written as PNG tiles: a root directory too
        large for the first 16 KiB, so the writer makes leaves by itself;
        the same tiles are also written under DIR as files, for comparison.
    make.py mbtiles SRC DB OUT
        SRC is a directory tileset; writes it as an MBTiles file DB (rows
        from the bottom), then converts DB to OUT with pmtiles.convert.

Prints one JSON line: the archive's header counts, for the test to check
that the shapes it wants (runs, deduplication, leaves) are there.

    make.py locate ARCHIVE Z X Y
        prints where the package's reader finds tile Z/X/Y in ARCHIVE:
        {"offset": absolute offset in the file, "length": bytes}.
"""

import json
import os
import random
import sqlite3
import sys

import pmtiles.convert
import pmtiles.writer
from pmtiles.reader import MmapSource, Reader
from pmtiles.tile import (
    Compression,
    TileType,
    deserialize_directory,
    deserialize_header,
    find_tile,
    zxy_to_tileid,
)

FORMATS = {
    "png": TileType.PNG,
    "jpg": TileType.JPEG,
    "webp": TileType.WEBP,
    "pbf": TileType.MVT,
}


def directory_tiles(src):
    """(z, x, y, ext, bytes) of every tile file of a directory tileset."""
    for z in sorted(os.listdir(src)):
        if not z.isdigit():
            continue
        for x in sorted(os.listdir(os.path.join(src, z))):
            for name in sorted(os.listdir(os.path.join(src, z, x))):
                y, ext = name.split(".", 1)
                with open(os.path.join(src, z, x, name), "rb") as f:
                    yield int(z), int(x), int(y), ext, f.read()


def header_for(tiles, metadata):
    ext = tiles[0][3]
    gzipped = tiles[0][4][:2] == b"\x1f\x8b"
    west, south, east, north = [float(v) for v in metadata.get("bounds", "-180,-85,180,85").split(",")]
    lon, lat, zoom = [float(v) for v in metadata.get("center", "0,0,0").split(",")]
    return {
        "tile_type": FORMATS[ext],
        "tile_compression": Compression.GZIP if gzipped else Compression.NONE,
        "min_lon_e7": int(west * 1e7),
        "min_lat_e7": int(south * 1e7),
        "max_lon_e7": int(east * 1e7),
        "max_lat_e7": int(north * 1e7),
        "center_zoom": int(zoom),
        "center_lon_e7": int(lon * 1e7),
        "center_lat_e7": int(lat * 1e7),
    }


def write(out, tiles, header, metadata, unclustered=False, leaves=None):
    if leaves:
        pmtiles.writer.optimize_directories = lambda entries, _target: pmtiles.writer.build_roots_leaves(
            entries, leaves
        )
    order = [(zxy_to_tileid(z, x, y), data) for z, x, y, _ext, data in tiles]
    order.sort()
    if unclustered:
        # Largest ids first: the writer marks the archive not clustered.
        order.reverse()
    with pmtiles.writer.write(out) as writer:
        for tile_id, data in order:
            writer.write_tile(tile_id, data)
        writer.finalize(header, metadata)


def metadata_of(src):
    with open(os.path.join(src, "metadata.json")) as f:
        return json.load(f)


def report(out):
    with open(out, "rb") as f:
        reader = Reader(MmapSource(f))
        h = reader.header()
        print(
            json.dumps(
                {
                    "addressed": h["addressed_tiles_count"],
                    "entries": h["tile_entries_count"],
                    "contents": h["tile_contents_count"],
                    "clustered": bool(h["clustered"]),
                    "root_length": h["root_length"],
                    "leaves_length": h["leaf_directory_length"],
                    "tile_compression": h["tile_compression"].value,
                }
            )
        )


def locate(path, z, x, y):
    """The reader's own walk (pmtiles.reader.Reader.get), keeping the offset."""
    with open(path, "rb") as f:
        get = MmapSource(f)
        header = deserialize_header(get(0, 127))
        tile_id = zxy_to_tileid(z, x, y)
        offset, length = header["root_offset"], header["root_length"]
        for _depth in range(4):
            entry = find_tile(deserialize_directory(get(offset, length)), tile_id)
            if entry is None:
                sys.exit(f"no tile {z}/{x}/{y} in {path}")
            if entry.run_length > 0:
                return {"offset": header["tile_data_offset"] + entry.offset, "length": entry.length}
            offset, length = header["leaf_directory_offset"] + entry.offset, entry.length
    sys.exit("directories nested too deep")


def main(argv):
    mode = argv[1]
    if mode == "locate":
        print(json.dumps(locate(argv[2], *[int(v) for v in argv[3:6]])))
        return
    if mode == "dir":
        src, out = argv[2], argv[3]
        rest = argv[4:]
        leaves = int(rest[rest.index("--leaves") + 1]) if "--leaves" in rest else None
        tiles = list(directory_tiles(src))
        metadata = metadata_of(src)
        write(out, tiles, header_for(tiles, metadata), metadata, "--unclustered" in rest, leaves)
    elif mode == "synthetic":
        out, files, maxzoom = argv[2], argv[3], int(argv[4])
        rng = random.Random(7)
        tiles = []
        for z in range(maxzoom + 1):
            for x in range(1 << z):
                for y in range(1 << z):
                    if z >= 2 and x == 0:
                        # A column of one repeated tile: a run in the directory.
                        data = b"\x89PNG\r\n\x1a\n" + f"sea {z}".encode()
                    else:
                        noise = bytes(rng.getrandbits(8) for _ in range(rng.randrange(8, 64)))
                        data = b"\x89PNG\r\n\x1a\n" + f"{z}/{x}/{y} ".encode() + noise
                    tiles.append((z, x, y, "png", data))
                    path = os.path.join(files, str(z), str(x))
                    os.makedirs(path, exist_ok=True)
                    with open(os.path.join(path, f"{y}.png"), "wb") as f:
                        f.write(data)
        metadata = {"name": "synthetic", "bounds": "-180,-85.0511,180,85.0511", "center": "0,0,2"}
        write(out, tiles, header_for(tiles, metadata), metadata)
    elif mode == "mbtiles":
        src, db, out = argv[2], argv[3], argv[4]
        tiles = list(directory_tiles(src))
        metadata = metadata_of(src)
        conn = sqlite3.connect(db)
        conn.executescript(
            "CREATE TABLE metadata (name TEXT, value TEXT);"
            "CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);"
            "CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row);"
        )
        for name, value in metadata.items():
            conn.execute("INSERT INTO metadata VALUES (?, ?)", (name, value))
        conn.execute("INSERT INTO metadata VALUES ('minzoom', '0')")
        for z, x, y, _ext, data in tiles:
            conn.execute("INSERT INTO tiles VALUES (?, ?, ?, ?)", (z, x, (1 << z) - 1 - y, data))
        conn.commit()
        conn.close()
        pmtiles.convert.mbtiles_to_pmtiles(db, out, maxzoom=None)
    else:
        sys.exit(f"unknown mode {mode}")
    report(out)


if __name__ == "__main__":
    main(sys.argv)
