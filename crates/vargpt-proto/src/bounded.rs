//! Text the service writes back (error messages, headers, log fields) is
//! bounded and inert, whatever the input it quotes: a 300 KB field name
//! echoed into a dead letter's header once closed the worker's broker
//! connection (the header frame exceeded `frame_max`).

use std::fmt::Write as _;

/// Longest error message a result or header carries, bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `s` with control characters escaped (`\n` → `\u{a}`), cut to at most
/// `max` bytes on a character boundary with a note of how much was cut.
pub fn bounded(s: &str, max: usize) -> String {
    let clean = s.len() <= max && !s.chars().any(char::is_control);
    if clean {
        return s.to_string();
    }
    // Leave room for the note so the whole stays within `max`.
    let note_room = 40.min(max);
    let budget = max - note_room;
    let mut out = String::with_capacity(budget.min(s.len()) + note_room);
    let mut used = 0;
    for (i, c) in s.char_indices() {
        let piece_len = if c.is_control() {
            escaped_len(c)
        } else {
            c.len_utf8()
        };
        if out.len() + piece_len > budget {
            break;
        }
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
        used = i + c.len_utf8();
    }
    if used < s.len() {
        let note = format!("… ({} bytes cut)", s.len() - used);
        if out.len() + note.len() <= max {
            out.push_str(&note);
        }
    }
    out
}

/// [`bounded`] with the message limit.
pub fn message(s: &str) -> String {
    bounded(s, MAX_MESSAGE_BYTES)
}

fn escaped_len(c: char) -> usize {
    format!("\\u{{{:x}}}", c as u32).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_clean_text_is_unchanged() {
        assert_eq!(bounded("unknown field `x`", 100), "unknown field `x`");
    }

    #[test]
    fn long_text_is_cut_within_the_bound_with_a_note() {
        let s = "é".repeat(300_000);
        let b = bounded(&s, MAX_MESSAGE_BYTES);
        assert!(b.len() <= MAX_MESSAGE_BYTES, "{}", b.len());
        assert!(b.ends_with("bytes cut)"), "{b}");
        assert!(b.starts_with("éé"));
    }

    #[test]
    fn control_characters_are_escaped() {
        let b = bounded("a\nb\r\u{1b}[31mc\0", 100);
        assert_eq!(b, "a\\u{a}b\\u{d}\\u{1b}[31mc\\u{0}");
        assert!(!b.chars().any(char::is_control));
    }

    #[test]
    fn tiny_bounds_hold() {
        for max in 0..12 {
            assert!(bounded("abcdefghijklmnopqrstuvwxyz\n", max).len() <= max);
        }
    }
}
