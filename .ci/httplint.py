"""Lints one HTTP exchange captured by curl with httplint (REDbot's linter).

Usage: httplint.py RESPONSE VERBOSE

RESPONSE is what `curl -s -i --raw` wrote to stdout: the response head and
the body exactly as framed on the wire (chunked encoding kept). VERBOSE is
curl's `-v` stderr, whose `> ` lines are the exact request it sent; the
request is given to the linter too, so that checks which depend on it (a
206 needs a Range, a 304 a conditional, HEAD has no body, CORS) are run.

Prints every note as `[LEVEL] subject: summary` (BAD, WARN, INFO; GOOD
notes are counted, not listed) and exits 1 if any note is BAD, 2 if the
capture cannot be parsed, 0 otherwise.
"""

import os
import sys
import time

# This file is named like the package: keep its own directory off the path.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

from httplint import HttpRequestLinter, HttpResponseLinter  # noqa: E402
from httplint.note import levels  # noqa: E402


def fail(msg: str) -> None:
    print(f"cannot lint: {msg}")
    sys.exit(2)


def parse_request(verbose: bytes):
    """The last request head curl sent (its `> ` lines)."""
    heads, current = [], None
    for line in verbose.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"> ") or line == b">":
            text = line[2:]
            if current is None:
                current = []
            if text:
                current.append(text)
            else:
                heads.append(current)
                current = None
    if current:
        heads.append(current)
    if not heads:
        fail("no request (`> ` lines) in curl's verbose output")
    head = heads[-1]
    method, target, version = head[0].split(b" ", 2)
    headers = []
    for line in head[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    return method, target, version.split(b"/", 1)[1], headers


def dechunk(data: bytes):
    out, trailers, rest = b"", [], data
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            fail("truncated chunked body")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:
                line, sep, rest = rest.partition(b"\r\n")
                if not sep or not line:
                    return out, trailers, rest
                name, _, value = line.partition(b":")
                trailers.append((name.strip(), value.strip()))
        if len(rest) < size + 2 or rest[size : size + 2] != b"\r\n":
            fail("bad chunk framing")
        out += rest[:size]
        rest = rest[size + 2 :]


def main() -> None:
    if len(sys.argv) != 3:
        fail(__doc__.strip().splitlines()[2])
    with open(sys.argv[1], "rb") as f:
        raw = f.read()
    with open(sys.argv[2], "rb") as f:
        method, target, req_version, req_headers = parse_request(f.read())

    request = HttpRequestLinter()
    request.process_request_topline(method, target, req_version)
    request.process_headers(req_headers)
    request.finish_content(True)

    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        fail(f"no complete response head in {len(raw)} bytes")
    lines = head.split(b"\r\n")
    status_line, field_lines = lines[0], lines[1:]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        fail(f"bad status line {status_line!r}")
    version, code = parts[0].split(b"/", 1)[1], parts[1]
    phrase = parts[2] if len(parts) > 2 else b""
    headers = []
    for line in field_lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))

    response = HttpResponseLinter(start_time=time.time())
    response.request = request
    request.response = response
    response.is_head_response = method == b"HEAD"
    response.process_response_topline(version, code, phrase)
    response.process_headers(headers)
    status = int(code)
    bodyless = method == b"HEAD" or status in (204, 304) or 100 <= status < 200
    trailers = []
    names = {n.lower(): v for n, v in headers}
    content = body
    bad = 0  # BAD notes, and framing errors found here
    if bodyless:
        if body:
            print(f"[BAD] message: {len(body)} bytes after the head of a response that has no body")
            bad += 1
            response.feed_content(body)
    elif b"chunked" in names.get(b"transfer-encoding", b"").lower():
        content, trailers, extra = dechunk(body)
        if extra:
            print(f"[BAD] message: {len(extra)} bytes after the last chunk")
            bad += 1
        response.feed_content(content)
    else:
        # Everything after the head, so that a wrong Content-Length shows.
        response.feed_content(body)
    response.finish_content(True, trailers)

    ctype = names.get(b"content-type", b"").decode("latin-1")
    multipart = status == 206 and ctype.lower().startswith("multipart/byteranges")
    good = 0
    for note in sorted(response.notes, key=lambda n: n.category.value):
        for n, depth in [(note, 0)] + [(s, 1) for s in note.subnotes]:
            if n.level == levels.GOOD:
                good += 1
                continue
            level = n.level.name
            if multipart and type(n).__name__ == "PARTIAL_WITHOUT_RANGE":
                # httplint wants a Content-Range on every 206, but RFC 9110
                # 15.3.7.2 (RFC 7233 4.1) says a server MUST NOT send one in
                # the header section of a multipart/byteranges response: each
                # part carries its own. Checked here instead.
                level = "FALSE-POSITIVE"
            else:
                bad += n.level == levels.BAD
            print(f"{'  ' * depth}[{level}] {n.subject}: {n.summary}")
    if multipart:
        problems = check_multipart(ctype, content, b"content-range" in names)
        for problem in problems:
            print(f"[BAD] multipart: {problem}")
        bad += len(problems)
    print(f"({good} good notes)")
    sys.exit(1 if bad else 0)


def check_multipart(ctype: str, body: bytes, top_level_range: bool):
    """What the linter does not check of a multipart/byteranges 206: no
    Content-Range in the header section, and a Content-Range on each part
    that matches the part's length."""
    problems = []
    if top_level_range:
        problems.append("a Content-Range in the header section of a multipart response")
    boundary = None
    for param in ctype.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"').encode("latin-1")
    if not boundary:
        return problems + ["no boundary parameter"]
    delim = b"--" + boundary
    # A delimiter is CRLF "--" boundary; the first may open the body (RFC 2046 5.1.1).
    pieces = (b"\r\n" + body).split(b"\r\n" + delim)
    if pieces[0].strip():
        problems.append(f"{len(pieces[0])} bytes of preamble before the first boundary")
    parts = pieces[1:]
    if not parts or not parts[-1].startswith(b"--"):
        problems.append("no closing boundary")
    parts = parts[:-1]
    if not parts:
        problems.append("no parts")
    for i, part in enumerate(parts):
        head, sep, data = part.partition(b"\r\n\r\n")
        fields = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip():
                fields[name.strip().lower()] = value.strip().decode("latin-1")
        cr = fields.get(b"content-range", "")
        try:
            unit, spec = cr.split(" ", 1)
            rng, total = spec.split("/")
            first_pos, last_pos = (int(x) for x in rng.split("-"))
            ok = unit == "bytes" and first_pos <= last_pos < int(total) and len(data) == last_pos - first_pos + 1
        except ValueError:
            ok = False
        if not sep or not ok:
            problems.append(f"part {i + 1}: Content-Range {cr!r} does not describe its {len(data)} bytes")
    return problems


if __name__ == "__main__":
    main()
