//! Duration strings as written in the config file (`"500ms"`, `"15s"`,
//! `"1h30m"`) and the same compact form for display.
//!
//! Only the text syntax lives here. Whether zero or `"off"` is acceptable
//! depends on the key, so `config::validate` decides that.

use std::time::Duration;

/// Units from largest to smallest, with their length in milliseconds.
/// Compound durations must use them in this order, each at most once, so a
/// typo such as `"1m1m"` or `"30m1h"` is caught instead of silently summed.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// The list shown to the user whenever a unit is wrong or missing.
pub(crate) const UNIT_HELP: &str = "units: ms, s, m, h, d";

/// Parses `"500ms"`, `"15s"`, `"2m"`, `"1h"`, `"1d"` or a compound such as
/// `"1h30m"`. Zero (`"0s"`) parses; callers reject it where it makes no sense.
///
/// The error is a reason fragment, without the offending text, so the caller
/// can phrase the whole message.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!("empty; write e.g. \"15s\" ({UNIT_HELP})"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err("contains spaces; write e.g. \"1h30m\"".to_string());
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    // Index in UNITS of the previous unit, to enforce largest-to-smallest.
    let mut previous: Option<usize> = None;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        if digits.is_empty() {
            return Err(format!(
                "expected a number followed by a unit, e.g. \"15s\" ({UNIT_HELP})"
            ));
        }
        if unit.is_empty() {
            return Err(format!(
                "missing unit after {digits}; write e.g. \"{digits}s\" ({UNIT_HELP})"
            ));
        }
        if unit.starts_with('.') {
            return Err("fractions are not supported; use a smaller unit, e.g. \"1500ms\"".into());
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(format!("unknown unit \"{unit}\" ({UNIT_HELP})"));
        };
        if previous.is_some_and(|p| index <= p) {
            return Err(
                "units must go from largest to smallest, each at most once, e.g. \"1h30m\"".into(),
            );
        }
        previous = Some(index);
        let too_large = || "too large".to_string();
        let count: u64 = digits.parse().map_err(|_| too_large())?;
        let ms = count.checked_mul(UNITS[index].1).ok_or_else(too_large)?;
        total_ms = total_ms.checked_add(ms).ok_or_else(too_large)?;
        rest = next;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The compact form `parse_duration` accepts: `1h30m`, `500ms`, `0s`.
/// Sub-millisecond parts are dropped; the parser never produces them.
pub(crate) fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (name, unit_ms) in UNITS {
        let unit_ms = u128::from(unit_ms);
        let count = ms / unit_ms;
        if count > 0 {
            out.push_str(&format!("{count}{name}"));
            ms %= unit_ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        match parse_duration(text) {
            Ok(d) => d,
            Err(e) => panic!("{text:?} should parse: {e}"),
        }
    }

    fn err(text: &str) -> String {
        match parse_duration(text) {
            Ok(d) => panic!("{text:?} should fail, got {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn single_units() {
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("15s"), Duration::from_secs(15));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn compound() {
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1d2h3m4s5ms"), Duration::from_millis(93_784_005));
        assert_eq!(ok("1s500ms"), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_bad_syntax_with_a_reason() {
        assert!(err("").contains("empty"));
        assert!(err("15").contains("missing unit after 15"));
        assert!(err("15").contains("\"15s\""));
        assert!(err("15sec").contains("unknown unit \"sec\""));
        assert!(err("15S").contains("unknown unit \"S\""));
        assert!(err("s").contains("expected a number"));
        assert!(err("-5s").contains("expected a number"));
        assert!(err("1.5s").contains("fractions"));
        assert!(err("1h 30m").contains("spaces"));
        assert!(err("30m1h").contains("largest to smallest"));
        assert!(err("1m1m").contains("largest to smallest"));
        assert!(err("off").contains("expected a number"));
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(err("99999999999999999999s"), "too large");
        assert_eq!(err("18446744073709551615d"), "too large");
        // Each part fits; only the sum overflows.
        assert_eq!(err("213503982334d213503982334h"), "too large");
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in 0u64..10_000_000_000_000) {
            let d = Duration::from_millis(ms);
            proptest::prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn never_panics(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
        }
    }
}
