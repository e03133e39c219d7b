//! Range parsing: `http::files::select` for any header bytes and file
//! lengths at the edges (0, 1, u64::MAX, and next to every number the header
//! names), checked against an independent reading of RFC 9110 section 14.
//!
//! Invariants, beyond "never panics":
//!  * `Range(first, last)` and every part of `Multi` have first <= last < len;
//!  * `Multi` has 2 to `MAX_PARTS` parts, no two of which share a byte;
//!  * no header, or one that is not visible ASCII, selects the whole file;
//!  * whenever tessera honours the header (anything but `Whole`), the header
//!    is a valid `bytes` ranges-specifier and the answer is exactly what the
//!    RFC gives: the satisfiable ranges, in the order asked, clipped to the
//!    file; `Unsatisfiable` only when none is satisfiable. (Ignoring a
//!    header, `Whole`, is always allowed: RFC 9110 14.2.)
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tessera::http::files::{select, Selection, MAX_PARTS};

fuzz_target!(|data: &[u8]| {
    let mut lengths = vec![0, 1, 2, 3, 10, 100, 1 << 32, u64::MAX - 1, u64::MAX];
    // Lengths next to every number in the header: where clipping and
    // satisfiability change.
    for n in numbers(data).into_iter().take(8) {
        lengths.extend([n.saturating_sub(1), n, n.saturating_add(1), n.saturating_add(2)]);
    }
    for &len in &lengths {
        assert_eq!(select(None, len), Selection::Whole, "no Range header");
    }
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    for &len in &lengths {
        check(&value, len);
    }
});

fn check(value: &HeaderValue, len: u64) {
    let got = select(Some(value), len);
    let text = value.to_str().ok();
    match &got {
        Selection::Whole => return,
        Selection::Unsatisfiable => {}
        Selection::Range(first, last) => assert!(first <= last && *last < len, "{got:?} for a file of {len}"),
        Selection::Multi(parts) => {
            assert!((2..=MAX_PARTS).contains(&parts.len()), "{} parts", parts.len());
            for (first, last) in parts {
                assert!(first <= last && *last < len, "part {first}-{last} for a file of {len}");
            }
            let mut sorted = parts.clone();
            sorted.sort_unstable();
            for w in sorted.windows(2) {
                assert!(w[1].0 > w[0].1, "parts {:?} and {:?} overlap", w[0], w[1]);
            }
        }
    }
    let text = text.unwrap_or_else(|| panic!("{got:?} from a header that is not visible ASCII: {value:?}"));
    let expected = reference(text, len)
        .unwrap_or_else(|| panic!("{got:?} from {text:?} (len {len}), which is no valid bytes ranges-specifier"));
    match &got {
        Selection::Unsatisfiable => {
            assert!(expected.is_empty(), "416 for {text:?} (len {len}), but {expected:?} are satisfiable")
        }
        Selection::Range(first, last) => {
            assert_eq!(expected, vec![(*first, *last)], "{text:?} (len {len}) answered with {got:?}")
        }
        Selection::Multi(parts) => assert_eq!(&expected, parts, "{text:?} (len {len}) answered with {got:?}"),
        Selection::Whole => unreachable!(),
    }
}

/// RFC 9110 14.1: `ranges-specifier = range-unit "=" range-set`, the unit
/// `bytes` in any case, `range-set = 1#range-spec` (OWS around commas, empty
/// elements ignored), `int-range = first-pos "-" [ last-pos ]`,
/// `suffix-range = "-" suffix-length`, positions `1*DIGIT`. Returns the
/// satisfiable ranges (14.1.2) for a representation of `len` bytes, in the
/// order given, or None if the field is not valid (and must be ignored).
fn reference(text: &str, len: u64) -> Option<Vec<(u64, u64)>> {
    let (unit, set) = text.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let ows = |c: char| c == ' ' || c == '\t';
    let elements: Vec<&str> = set.split(',').collect();
    let mut out = Vec::new();
    let mut any = false;
    for (i, element) in elements.iter().enumerate() {
        let spec = element.trim_matches(ows);
        if spec.is_empty() {
            continue;
        }
        // `[ element ] *( OWS "," OWS [ element ] )`: OWS only next to a comma.
        if (i == 0 && element.starts_with(ows)) || (i == elements.len() - 1 && element.ends_with(ows)) {
            return None;
        }
        any = true;
        let (first, last) = spec.split_once('-')?;
        let (first, last) = match (digits(first), digits(last)) {
            (None, Some(suffix)) if first.is_empty() => {
                // A suffix: the last `suffix` bytes, all of a shorter file;
                // unsatisfiable if zero (or the file is empty).
                if suffix == 0 || len == 0 {
                    continue;
                }
                (len.saturating_sub(suffix), len - 1)
            }
            (Some(first), None) if last.is_empty() => (first, len.saturating_sub(1)),
            (Some(first), Some(last)) if last >= first => (first, last.min(len.saturating_sub(1))),
            _ => return None,
        };
        if first < len {
            out.push((first, last));
        }
    }
    any.then_some(out)
}

/// `1*DIGIT`, saturating at u64::MAX (exact for every comparison with a
/// length, which is at most u64::MAX).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| n.saturating_mul(10).saturating_add(u64::from(b - b'0'))))
}

/// The decimal numbers in the input, saturated.
fn numbers(data: &[u8]) -> Vec<u64> {
    data.split(|b| !b.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.iter().fold(0u64, |n, &b| n.saturating_mul(10).saturating_add(u64::from(b - b'0'))))
        .collect()
}
