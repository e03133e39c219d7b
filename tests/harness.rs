//! Self-checks of the test harness's own parsers and encoders (no server involved),
//! so that a failing integration test points at tessera, not at the harness.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::*;

#[test]
fn harness_helpers_are_right() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
    assert_eq!(parse_rfc3339("2024-05-03T08:00:00+02:00"), parse_rfc3339("2024-05-03T06:00:00Z"));
    assert_eq!(parse_rfc3339("2024-05-03T09:15:30.250Z").map(|t| t.1), Some(250_000_000));
    assert_eq!(parse_rfc3339("2024-05-03 09:15:30"), None);
    assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);

    let text = "# TYPE x counter\nx{a=\"1\",b=\"q\\\"}\"} 2\nx{a=\"2\"} 3.5\nxy 9\n";
    assert_eq!(metric_value(text, "x", &[]), Some(5.5));
    assert_eq!(metric_value(text, "x", &[("a", "1")]), Some(2.0));
    assert_eq!(metric_value(text, "x", &[("b", "q\"}")]), Some(2.0));
    assert_eq!(metric_value(text, "xy", &[]), Some(9.0));
    assert_eq!(metric_value(text, "nope", &[]), None);

    let b = tile_bounds(0, 0, 0);
    assert!((b[0] + 180.0).abs() < 1e-9 && (b[2] - 180.0).abs() < 1e-9);
    assert!((b[3] - 85.051_128_779_806_59).abs() < 1e-9 && (b[1] + b[3]).abs() < 1e-9);

    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
    let r = parse_response(chunked, false).expect("parse chunked");
    assert_eq!(r.body, b"abcde");
    assert_eq!(r.header("transfer-ENCODING"), Some("chunked"));
    let cut = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", false).expect_err("a head cut short");
    assert_eq!(cut.kind(), std::io::ErrorKind::InvalidData);

    // Pipelined answers, framed one by one as a connection reads them.
    let two = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 206 Partial Content\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nde\r\n0\r\nX: y\r\n\r\n";
    let mut conn = RawConn::over(two);
    let first = conn.read_response(false).expect("first answer");
    assert_eq!((first.status, first.body.as_slice(), first.closes()), (200, &b"abc"[..], false));
    let second = conn.read_response(false).expect("second answer");
    assert_eq!((second.status, second.body.as_slice(), second.closes()), (206, &b"de"[..], true));
    assert!(conn.at_end());
    let mut short = RawConn::over(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab");
    assert!(short.read_response(false).is_err(), "a body shorter than its Content-Length");

    assert_eq!(content_range("bytes 10-19/100"), Some((10, 19, 100)));
    assert_eq!(content_range("bytes */100"), None);
    assert_eq!(content_range("bytes 1-2-3/4"), None);
}
