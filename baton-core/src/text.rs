//! Small text helpers shared by the strict `key=value` parsers ([`crate::cmdline`],
//! [`crate::report`]): decimal number parsing without panics and a fixed-size copy of an
//! offending word for error messages (no allocation).

/// Longest prefix of an offending word kept in an error, in bytes.
pub const SHORT_STR_CAP: usize = 24;

/// A bounded copy of (a prefix of) an input word, kept in errors so they can name it without
/// borrowing the input or allocating. Longer words are cut at a character boundary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortStr {
    buf: [u8; SHORT_STR_CAP],
    len: u8,
    truncated: bool,
}

impl ShortStr {
    /// Copies up to [`SHORT_STR_CAP`] bytes of `s`, cut at a character boundary.
    #[must_use]
    pub fn new(s: &str) -> ShortStr {
        let mut end = s.len().min(SHORT_STR_CAP);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0u8; SHORT_STR_CAP];
        buf[..end].copy_from_slice(&s.as_bytes()[..end]);
        ShortStr {
            buf,
            // end <= SHORT_STR_CAP (24) fits a u8.
            len: end as u8,
            truncated: end < s.len(),
        }
    }

    /// The kept text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // The buffer holds a prefix of a &str cut at a char boundary, so it is valid UTF-8; the
        // fallback is unreachable but keeps this free of panics and unsafe.
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    /// Whether the original word was longer than what is kept.
    #[must_use]
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

impl core::fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl core::fmt::Display for ShortStr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// Parses a plain decimal `u64`: one or more ASCII digits, no sign, no whitespace.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses `0` or `1` as a flag.
pub(crate) fn parse_flag(s: &str) -> Option<bool> {
    match s {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("007"), Some(7));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_u64("000000000000000000001"), None);
        for bad in ["", "+1", "-1", " 1", "1 ", "0x10", "1e3", "١"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn short_str() {
        assert_eq!(ShortStr::new("abc").as_str(), "abc");
        let long = "ééééééééééééééééééé"; // 38 bytes
        let s = ShortStr::new(long);
        assert!(s.is_truncated());
        assert_eq!(s.as_str(), "éééééééééééé");
        assert_eq!(std::format!("{s}"), "éééééééééééé...");
    }
}
