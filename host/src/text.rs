//! Text that came from a guest, made safe to store and to show.
//!
//! Everything a guest writes (log lines, stdout, error messages, progress
//! messages, backtraces) is hostile data. Before it reaches the database it
//! must be *storable* (PostgreSQL refuses NUL in `text`, and every backend
//! wants valid UTF-8) and *bounded* in bytes. Both the runtime and the store
//! use these helpers, so neither depends on the other.

use std::borrow::Cow;

/// What replaces a NUL byte: U+2400 SYMBOL FOR NULL, visible in a log and
/// accepted by every backend.
pub const NUL_REPLACEMENT: char = '\u{2400}';

/// Appended to text cut by [`storable`].
pub const TRUNCATION_MARK: &str = "…[wasmq: truncated]";

/// `s` with NUL bytes replaced and cut to at most `max_bytes` bytes (on a
/// character boundary, with [`TRUNCATION_MARK`] appended, the mark counted
/// within `max_bytes` when there is room for it). Borrowed when nothing
/// needed changing, which is the common case.
pub fn storable(s: &str, max_bytes: usize) -> Cow<'_, str> {
    let has_nul = s.as_bytes().contains(&0);
    if !has_nul && s.len() <= max_bytes {
        return Cow::Borrowed(s);
    }
    let cleaned: Cow<'_, str> = if has_nul {
        Cow::Owned(s.replace('\0', NUL_REPLACEMENT.encode_utf8(&mut [0; 4])))
    } else {
        Cow::Borrowed(s)
    };
    if cleaned.len() <= max_bytes {
        return Cow::Owned(cleaned.into_owned());
    }
    let room = if max_bytes > TRUNCATION_MARK.len() * 2 {
        max_bytes - TRUNCATION_MARK.len()
    } else {
        max_bytes
    };
    let mut cut = room;
    while !cleaned.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + TRUNCATION_MARK.len());
    out.push_str(&cleaned[..cut]);
    if room < max_bytes {
        out.push_str(TRUNCATION_MARK);
    }
    Cow::Owned(out)
}

/// Bytes from a guest as storable text: invalid UTF-8 becomes U+FFFD, NUL
/// becomes [`NUL_REPLACEMENT`], and the result is cut to `max_bytes`.
pub fn storable_bytes(bytes: &[u8], max_bytes: usize) -> String {
    storable(&String::from_utf8_lossy(bytes), max_bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_short_text_is_borrowed() {
        assert!(matches!(storable("hello", 10), Cow::Borrowed("hello")));
    }

    #[test]
    fn nul_is_replaced() {
        assert_eq!(storable("a\0b", 100), "a\u{2400}b");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_within_the_bound() {
        let s = "é".repeat(100);
        let out = storable(&s, 101);
        assert!(out.len() <= 101, "{}", out.len());
        assert!(out.ends_with(TRUNCATION_MARK));
        // A bound too small for the mark still holds.
        assert!(storable(&s, 3).len() <= 3);
        assert_eq!(storable(&s, 0), "");
    }

    #[test]
    fn invalid_utf8_and_nul_bytes_become_storable() {
        assert_eq!(storable_bytes(b"x\xff\0y", 100), "x\u{fffd}\u{2400}y");
    }
}
