//! Text from guests (and from the database, which stores what guests and
//! clients wrote) made harmless before it reaches a terminal.
//!
//! A log line or an error message may carry escape sequences: on a terminal
//! they move the cursor, rewrite earlier lines, change the window title or
//! worse. Every control character is shown as a visible stand-in instead:
//! C0 controls as their Unicode control pictures (ESC as `␛`, CR as `␍`),
//! DEL as `␡`, and C1 controls and the bidirectional overrides (which
//! reorder what the eye reads) as `\u{…}`. Newline and tab stay in
//! multi-line text ([`text`]); one-line contexts ([`line`]) show them too.

use std::borrow::Cow;
use std::fmt::Write as _;

/// First of the Unicode control pictures: U+2400 SYMBOL FOR NULL; the C0
/// control with code `c` has the picture `U+2400 + c`.
const CONTROL_PICTURES: u32 = 0x2400;
/// U+2421 SYMBOL FOR DELETE.
const DELETE_PICTURE: char = '\u{2421}';

/// Bidirectional formatting characters: marks, embeddings, overrides and
/// isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn needs_escape(c: char, keep_layout: bool) -> bool {
    if keep_layout && matches!(c, '\n' | '\t') {
        return false;
    }
    c.is_control() || is_bidi_control(c)
}

fn neutralise(s: &str, keep_layout: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c, keep_layout)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs_escape(c, keep_layout) {
            out.push(c);
        } else if (c as u32) < 0x20 {
            out.push(char::from_u32(CONTROL_PICTURES + c as u32).expect("a control picture"));
        } else if c == '\u{7f}' {
            out.push(DELETE_PICTURE);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// Multi-line text (logs, guest stderr) safe for a terminal: lines and tabs
/// kept, every other control character visible.
pub fn text(s: &str) -> Cow<'_, str> {
    neutralise(s, true)
}

/// One line safe for a terminal: newlines and tabs are shown too, so the
/// text cannot start a line of its own.
pub fn line(s: &str) -> Cow<'_, str> {
    neutralise(s, false)
}

/// JSON data for stdout: as it is for a program reading a pipe, made safe
/// when stdout is a terminal. (Valid JSON has no raw control character but
/// its whitespace; a carriage return there could still hide text.)
pub fn stdout_data(s: &str) -> Cow<'_, str> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        text(s)
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(text("hello\n\tworld é ✓"), Cow::Borrowed(_)));
        assert!(matches!(line("hello world"), Cow::Borrowed(_)));
    }

    #[test]
    fn escape_sequences_become_visible() {
        // A colour, a title change, a line rewrite, a bell, NUL and DEL.
        let hostile = "a\x1b[31mred\x1b]0;pwned\x07\rb\0c\x7f";
        let shown = text(hostile);
        assert_eq!(shown, "a␛[31mred␛]0;pwned␇␍b␀c␡");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }

    #[test]
    fn c1_controls_and_bidi_overrides_are_escaped() {
        assert_eq!(text("x\u{9b}31m\u{85}y"), "x\\u{9b}31m\\u{85}y");
        assert_eq!(text("abc\u{202e}fed\u{2066}"), "abc\\u{202e}fed\\u{2066}");
    }

    #[test]
    fn lines_keep_layout_only_in_multi_line_text() {
        assert_eq!(text("a\n\tb"), "a\n\tb");
        assert_eq!(line("a\n\tb"), "a␊␉b");
    }
}
