"""Helpers for .ci/tile-clients: each subcommand is one check, prints what it
expected and what came back when it fails, and exits non-zero then.

Raster subcommands need GDAL's Python bindings, numpy and PIL (Debian's,
under /usr/bin/python3); vector subcommands need mapbox-vector-tile (from
PyPI, in a venv). Neither half imports the other's modules.
"""

import gzip
import http.client
import sys
import urllib.parse

WEB_MERCATOR_HALF = 20037508.342789244  # pi * 6378137


def fail(message):
    print(f"     {message}")
    return False


# ---------------------------------------------------------------- raster


def png_mode(tiledir):
    """The PIL mode every PNG of the tileset converts to without loss, and its
    band count: palette tiles without transparency are RGB."""
    import glob

    from PIL import Image

    modes = set()
    for path in glob.glob(f"{tiledir}/*/*/*.png"):
        im = Image.open(path)
        if im.mode in ("RGBA", "LA") or (im.mode in ("P", "RGB", "L") and "transparency" in im.info):
            modes.add("RGBA")
        elif im.mode in ("L", "1"):
            modes.add("L")
        else:
            modes.add("RGB")
    if not modes:
        raise SystemExit(f"no PNG under {tiledir}")
    if "RGBA" in modes:
        return "RGBA", 4
    if "RGB" in modes:
        return "RGB", 3
    return "L", 1


def cmd_bands(tiledir):
    print(png_mode(tiledir)[1])
    return True


def cmd_geotiff_georef(tif, zoom):
    from osgeo import gdal, osr

    gdal.UseExceptions()
    zoom = int(zoom)
    size = 256 << zoom
    ds = gdal.Open(tif)
    ok = True
    if (ds.RasterXSize, ds.RasterYSize) != (size, size):
        ok = fail(f"size: expected {size}x{size}, got {ds.RasterXSize}x{ds.RasterYSize}")
    types = [gdal.GetDataTypeName(ds.GetRasterBand(i + 1).DataType) for i in range(ds.RasterCount)]
    if any(t != "Byte" for t in types):
        ok = fail(f"band types: expected Byte, got {types}")
    gt = ds.GetGeoTransform()
    res = 2 * WEB_MERCATOR_HALF / size
    want = (-WEB_MERCATOR_HALF, res, 0.0, WEB_MERCATOR_HALF, 0.0, -res)
    if any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(gt, want)):
        ok = fail(f"geotransform: expected {want}, got {gt}")
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    srs.AutoIdentifyEPSG()
    code = srs.GetAuthorityCode(None)
    if code != "3857":
        ok = fail(f"CRS: expected EPSG:3857, got {code!r} ({ds.GetProjection()[:80]}...)")
    if ok:
        print(f"     {ds.RasterXSize}x{ds.RasterYSize} x{ds.RasterCount} {types[0]}, EPSG:{code}, geotransform {gt}")
    return ok


def cmd_geotiff_pixels(tif, tiledir, zoom):
    import numpy as np
    from osgeo import gdal
    from PIL import Image

    gdal.UseExceptions()
    zoom = int(zoom)
    n = 1 << zoom
    mode, bands = png_mode(tiledir)
    mosaic = np.zeros((bands, 256 * n, 256 * n), dtype=np.uint8)
    for x in range(n):
        for y in range(n):
            path = f"{tiledir}/{zoom}/{x}/{y}.png"
            try:
                tile = np.asarray(Image.open(path).convert(mode), dtype=np.uint8)
            except FileNotFoundError:
                return fail(f"tile {path} missing on disk: cannot build the mosaic")
            if tile.ndim == 2:
                tile = tile[:, :, None]
            mosaic[:, y * 256 : (y + 1) * 256, x * 256 : (x + 1) * 256] = tile.transpose(2, 0, 1)
    ds = gdal.Open(tif)
    if ds.RasterCount != bands:
        return fail(f"bands: expected {bands} ({mode}), GeoTIFF has {ds.RasterCount}")
    got = ds.ReadAsArray()
    if got.ndim == 2:
        got = got[None, :, :]
    if got.shape != mosaic.shape:
        return fail(f"shape: expected {mosaic.shape}, got {got.shape}")
    diff = got != mosaic
    if diff.any():
        b, row, col = np.argwhere(diff)[0]
        bad_tiles = sorted({(int(c) // 256, int(r) // 256) for _, r, c in np.argwhere(diff)})
        return fail(
            f"{int(diff.sum())} sample(s) differ from the {n}x{n} mosaic of {tiledir}/{zoom}; first at band {b + 1} "
            f"row {row} col {col}: expected {mosaic[b, row, col]}, got {got[b, row, col]}; "
            f"tiles (x, y) affected: {bad_tiles[:10]}{' ...' if len(bad_tiles) > 10 else ''}"
        )
    print(f"     {n * n} tiles, {got.size} samples, all equal ({mode})")
    return True


# ---------------------------------------------------------------- vector


def request(base, path, method="GET", accept_encoding=None):
    """One request with exactly the Accept-Encoding given (None: no such
    header at all, as GDAL's curl sends; urllib would add 'identity')."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if accept_encoding is not None:
            conn.putheader("Accept-Encoding", accept_encoding)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def tile_path(zxy):
    return f"/tiles/countries/{zxy}.pbf"


def disk_protobuf(tiledir, zxy):
    raw = open(f"{tiledir}/{zxy}.pbf", "rb").read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def vary_has_accept_encoding(headers):
    return any(v.strip().lower() == "accept-encoding" for v in headers.get("vary", "").split(","))


def show(headers):
    keep = ("content-type", "content-encoding", "vary", "content-length")
    return {k: headers[k] for k in keep if k in headers}


def cmd_plain(base, tiledir, *tiles):
    """No Accept-Encoding (and 'identity'): plain protobuf, right headers, and
    the bytes are the gunzipped file on disk."""
    ok = True
    cases = [(t, None) for t in tiles] + [(tiles[0], "identity")]
    for zxy, ae in cases:
        what = f"GET {tile_path(zxy)} (Accept-Encoding: {ae or 'absent'})"
        status, headers, body = request(base, tile_path(zxy), accept_encoding=ae)
        if status != 200:
            ok = fail(f"{what}: expected 200, got {status} {body[:120]!r}")
            continue
        ctype = headers.get("content-type", "")
        if ctype.split(";")[0].strip() != "application/x-protobuf":
            ok = fail(f"{what}: expected Content-Type application/x-protobuf, got {ctype!r}")
        if headers.get("content-encoding", "identity").lower() != "identity":
            ok = fail(f"{what}: expected no Content-Encoding, got {headers['content-encoding']!r}")
        if body[:2] == b"\x1f\x8b":
            ok = fail(f"{what}: expected a plain protobuf body, got gzip bytes (1f 8b ...), {len(body)} bytes; headers {show(headers)}")
        if not vary_has_accept_encoding(headers):
            ok = fail(f"{what}: expected Vary to contain Accept-Encoding, got {headers.get('vary')!r}")
        want = disk_protobuf(tiledir, zxy)
        if body != want and body[:2] != b"\x1f\x8b":
            ok = fail(f"{what}: body ({len(body)} bytes) is not the gunzipped file on disk ({len(want)} bytes)")
    if ok:
        print(f"     {len(cases)} responses plain, Vary: Accept-Encoding, bytes = gunzip(file on disk)")
    return ok


def cmd_head(base, zxy):
    """HEAD and Range without Accept-Encoding address the plain body: GDAL's
    /vsicurl/ sizes the file by HEAD, then reads it in 16 KiB Range
    requests, and never asks for gzip."""
    status, headers, body = request(base, tile_path(zxy))
    hstatus, hheaders, _ = request(base, tile_path(zxy), method="HEAD")
    if status != 200 or hstatus != 200:
        return fail(f"expected 200 for GET and HEAD, got {status} and {hstatus}")
    ok = True
    length = hheaders.get("content-length")
    if length != str(len(body)):
        ok = fail(
            f"HEAD {tile_path(zxy)}: expected Content-Length {len(body)} (the plain GET body), got {length!r}; "
            f"HEAD headers {show(hheaders)}"
        )
    if hheaders.get("content-encoding", "identity").lower() != "identity":
        ok = fail(f"HEAD {tile_path(zxy)}: expected no Content-Encoding, got {hheaders['content-encoding']!r}")
    first, last = 10, min(len(body), 16384) - 1
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.putrequest("GET", tile_path(zxy), skip_accept_encoding=True)
        conn.putheader("Range", f"bytes={first}-{last}")
        conn.endheaders()
        resp = conn.getresponse()
        part, rstatus, crange = resp.read(), resp.status, resp.getheader("Content-Range")
    finally:
        conn.close()
    what = f"GET {tile_path(zxy)} Range: bytes={first}-{last} (no Accept-Encoding)"
    if rstatus == 206:
        if crange != f"bytes {first}-{last}/{len(body)}" or part != body[first : last + 1]:
            ok = fail(
                f"{what}: expected Content-Range bytes {first}-{last}/{len(body)} and those bytes of the plain body, "
                f"got Content-Range {crange!r} and {len(part)} bytes{' (not the plain body’s)' if part != body[first:last + 1] else ''}"
            )
    elif rstatus == 200:
        if part != body:
            ok = fail(f"{what}: answered 200 (range ignored), but not with the plain body ({len(part)} vs {len(body)} bytes)")
    else:
        ok = fail(f"{what}: expected 206 (or 200 with the whole plain body), got {rstatus}")
    if ok:
        print(f"     HEAD Content-Length {length}; range {first}-{last}: {rstatus}, bytes of the plain body")
    return ok


def cmd_gzip(base, *tiles):
    """Accept-Encoding: gzip: Content-Encoding gzip, Vary, and the gunzipped
    body equals the plain response."""
    ok = True
    for zxy in tiles:
        what = f"GET {tile_path(zxy)} (Accept-Encoding: gzip)"
        status, headers, body = request(base, tile_path(zxy), accept_encoding="gzip")
        pstatus, _, plain = request(base, tile_path(zxy))
        if status != 200 or pstatus != 200:
            ok = fail(f"{what}: expected 200 with and without gzip, got {status} and {pstatus}")
            continue
        if headers.get("content-encoding", "").lower() != "gzip":
            ok = fail(f"{what}: expected Content-Encoding: gzip, got {headers.get('content-encoding')!r}; headers {show(headers)}")
        if not vary_has_accept_encoding(headers):
            ok = fail(f"{what}: expected Vary to contain Accept-Encoding, got {headers.get('vary')!r}")
        ctype = headers.get("content-type", "")
        if ctype.split(";")[0].strip() != "application/x-protobuf":
            ok = fail(f"{what}: expected Content-Type application/x-protobuf, got {ctype!r}")
        try:
            unzipped = gzip.decompress(body)
        except OSError as e:
            ok = fail(f"{what}: body does not gunzip ({e}); first bytes {body[:8].hex()}")
            continue
        if unzipped != plain:
            note = " (the plain response is itself gzip)" if plain[:2] == b"\x1f\x8b" else ""
            ok = fail(f"{what}: gunzip(body) is {len(unzipped)} bytes, plain response is {len(plain)} bytes{note}, and they differ")
    if ok:
        print(f"     {len(tiles)} responses gzip, Vary: Accept-Encoding, gunzip(body) = plain body")
    return ok


def decode_plain(base, zxy):
    import mapbox_vector_tile

    status, headers, body = request(base, tile_path(zxy))
    if status != 200:
        raise ValueError(f"GET {tile_path(zxy)}: expected 200, got {status}")
    if body[:2] == b"\x1f\x8b":
        # Not the contract (checked elsewhere), but decode what a client
        # that sniffs gzip would, so this check judges the tile's content.
        body = gzip.decompress(body)
    return mapbox_vector_tile.decode(body)


def cmd_decode(base, *tiles):
    """mapbox_vector_tile decodes each tile: layer countries with features
    that carry name and id; z0 has well over 100 countries; France is in z0
    and in the z3 tile over western Europe."""
    ok = True
    counts = {}
    for zxy in tiles:
        try:
            layers = decode_plain(base, zxy)
        except Exception as e:  # noqa: BLE001 - any decoder error is the finding
            ok = fail(f"{zxy}: mapbox_vector_tile.decode failed: {type(e).__name__}: {e}")
            continue
        if "countries" not in layers:
            ok = fail(f"{zxy}: expected layer 'countries', got layers {sorted(layers)}")
            continue
        features = layers["countries"]["features"]
        counts[zxy] = len(features)
        if not features:
            ok = fail(f"{zxy}: expected features in layer countries, got none")
        missing = [f for f in features if not f["properties"].get("name") or "id" not in f["properties"]]
        if missing:
            ok = fail(f"{zxy}: {len(missing)} feature(s) without name/id, e.g. {missing[0]['properties']}")
        bad_geom = [f for f in features if f["geometry"]["type"] not in ("Polygon", "MultiPolygon")]
        if bad_geom:
            ok = fail(f"{zxy}: expected polygons, got {bad_geom[0]['geometry']['type']}")
        names = {f["properties"].get("name") for f in features}
        if zxy == "0/0/0" and len(features) <= 150:
            ok = fail(f"{zxy}: expected well over 100 countries (> 150), got {len(features)}")
        if zxy in ("0/0/0", "3/4/2") and "France" not in names:
            ok = fail(f"{zxy}: expected a feature named France, got {sorted(n for n in names if n)[:20]} ...")
    if ok:
        print(f"     features in layer countries: {counts}")
    return ok


def cmd_count(base, zxy):
    """Prints the feature count of layer countries, for comparison with GDAL."""
    layers = decode_plain(base, zxy)
    print(len(layers.get("countries", {}).get("features", [])))
    return True


# ---------------------------------------------------------------- MapLibre


def canvas(dom, name):
    """The PNG a map of .ci/maplibre.html put in <pre id=NAME>, as RGB."""
    import base64
    import io
    import re

    from PIL import Image

    found = re.search(rf'<pre id="{name}">data:image/png;base64,([A-Za-z0-9+/=]+)</pre>', dom)
    if not found:
        return None
    return Image.open(io.BytesIO(base64.b64decode(found.group(1)))).convert("RGB")


def cmd_maplibre(dom_file, tiledir):
    """MapLibre's canvases at zoom 0 (256x256): the raster maps (tessera's
    XYZ URLs and the raw archive through the pmtiles protocol) show tile
    0/0/0 of the sample, pixel for pixel but for resampling at the edges;
    the vector map fills the countries' share of the Mercator world."""
    import re

    import numpy
    from PIL import Image

    with open(dom_file) as f:
        dom = f.read()
    errors = re.search(r'<pre id="errors">(.*?)</pre>', dom, re.S)
    ok = True
    if errors and errors.group(1).strip():
        ok = fail(f"map errors: {errors.group(1).strip()[:500]}")
    want = numpy.asarray(Image.open(f"{tiledir}/0/0/0.png").convert("RGB"), dtype=numpy.int16)
    for name in ("raster", "archive"):
        got = canvas(dom, name)
        if got is None:
            ok = fail(f"{name}: the map never became idle with a canvas (nothing drawn)")
            continue
        if got.size != (256, 256):
            ok = fail(f"{name}: canvas {got.size}, expected 256x256")
            continue
        diff = numpy.abs(numpy.asarray(got, dtype=numpy.int16) - want)
        mean, close = diff.mean(), (diff.max(axis=2) <= 16).mean()
        print(f"     {name}: mean difference {mean:.2f} per channel, {close:.1%} of pixels within 16 of tile 0/0/0")
        if mean > 2 or close < 0.98:
            ok = fail(f"{name}: the canvas is not tile 0/0/0")
    got = canvas(dom, "vector")
    if got is None:
        return fail("vector: the map never became idle with a canvas (nothing drawn)")
    pixels = numpy.asarray(got, dtype=numpy.int16)
    red = ((pixels[:, :, 0] > 200) & (pixels[:, :, 1] < 60) & (pixels[:, :, 2] < 60)).mean()
    white = (pixels.min(axis=2) > 240).mean()
    print(f"     vector: {red:.1%} of the canvas filled as land, {white:.1%} background")
    if not (0.15 < red < 0.6 and white > 0.3):
        ok = fail("vector: expected land on between 15 % and 60 % of the world, the rest background")
    return ok


COMMANDS = {
    "maplibre": cmd_maplibre,
    "bands": cmd_bands,
    "geotiff-georef": cmd_geotiff_georef,
    "geotiff-pixels": cmd_geotiff_pixels,
    "plain": cmd_plain,
    "head": cmd_head,
    "gzip": cmd_gzip,
    "decode": cmd_decode,
    "count": cmd_count,
}

if __name__ == "__main__":
    sys.exit(0 if COMMANDS[sys.argv[1]](*sys.argv[2:]) else 1)
