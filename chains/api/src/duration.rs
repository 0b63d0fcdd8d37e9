//! One duration syntax for every config key that takes a length of time.
//!
//! `"500ms"`, `"90s"`, `"15m"`, `"1h"`, `"7d"`: a whole number and one unit (a space between
//! them is allowed). Nothing else: no fractions, no signs, no compound `"1h30m"`, no bare
//! numbers (is `"60"` seconds or minutes?), so a typo is a load error naming the key rather
//! than a window a thousand times longer or shorter than meant. Integer `*_secs` / `*_ms` keys
//! stay integers; this parser is for the string-valued ones.

use std::time::Duration;

/// The units, in the order the error messages list them.
const UNITS: &str = "ms, s, m, h, d";

/// Parses a duration (`"500ms"`, `"90s"`, `"15m"`, `"1h"`, `"7d"`). Zero is a valid duration;
/// keys that need a positive one say so (see [`parse_positive_duration`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.starts_with('-') {
        return Err(format!("{text:?}: a duration cannot be negative"));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    if n.is_empty() {
        return Err(format!(
            "{text:?}: expected a whole number and a unit ({UNITS}), e.g. \"24h\""
        ));
    }
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?}: the number is too large"))?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("{text:?}: missing unit ({UNITS})")),
        u => return Err(format!("{text:?}: unknown unit {u:?} ({UNITS})")),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?}: too long"))
}

/// [`parse_duration`] for keys where zero would mean "never" or "always" by accident.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?}: must not be zero")),
        d => Ok(d),
    }
}

/// A duration in whole milliseconds (every duration here fits: the parser works in u64 ms).
pub fn as_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_duration_table() {
        let ok = [
            ("500ms", 500),
            ("0s", 0),
            ("90s", 90_000),
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("24h", 86_400_000),
            ("7d", 604_800_000),
            ("31d", 31 * 86_400_000),
            (" 24 h ", 86_400_000),
            ("007s", 7_000),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_duration(text).map(as_ms), Ok(ms), "{text:?}");
        }
        // (input, what the error must say)
        let bad = [
            ("", "whole number"),
            ("h", "whole number"),
            ("24", "missing unit"),
            ("-1h", "negative"),
            ("+1h", "whole number"),
            ("1.5h", "unknown unit"),
            ("1h30m", "unknown unit"),
            ("1 week", "unknown unit"),
            ("1H", "unknown unit"),
            ("1µs", "unknown unit"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615d", "too long"),
            ("213503982335d", "too long"),
            ("ten minutes", "whole number"),
        ];
        for (text, want) in bad {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(
                e.contains(&format!("{text:?}")),
                "error names the input: {e}"
            );
        }
        // Control: the largest representable number of days still parses.
        assert!(parse_duration("213503982334d").is_ok());
    }

    #[test]
    fn zero_is_refused_only_where_a_positive_duration_is_needed() {
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert!(parse_positive_duration("0h").unwrap_err().contains("zero"));
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
    }
}
