//! The one duration syntax of chkpt's command lines: `chkptd --idle`, `--max-delay`,
//! `--poll-interval`, `--keep-within`, and `chkptctl watch --idle`, `--max-delay`,
//! `--keep-within`, `prune --keep-within` all read durations with [`parse`]; the snapshot
//! selectors' `@10m` forms use the same units (humantime's).

use std::time::Duration;

/// The forms [`parse`] takes, for help texts and error messages.
pub const FORMS: &str =
    "a duration like 90s, 30m, 2h, 3d, 1w, 1h30m or 250ms, or a number of seconds like 5 or 0.5";

/// Parses a duration: humantime's forms (`90s`, `30m`, `2h`, `3d`, `1w`, `1h30m`, `1h 30m`,
/// `250ms`), or a plain number of seconds (`5`, `0.5`), which the flags took before they took
/// units. The error says what would have been accepted.
///
/// ```
/// use std::time::Duration;
/// use chkpt_proto::duration::parse;
/// assert_eq!(parse("90m"), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
/// assert!(parse("soon").is_err());
/// ```
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("an empty duration: use {FORMS}"));
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = t.parse().map_err(|_| format!("`{text}` is not {FORMS}"))?;
        // 1e12 s is some 31,000 years: far past any useful delay, well inside Duration.
        if !(0.0..=1e12).contains(&secs) {
            return Err(format!("`{text}` is too long"));
        }
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("`{text}` is not {FORMS} ({e})"))
}

/// [`parse`], for flags that need whole milliseconds, at least 1 (a quiet period, a delay).
pub fn parse_ms(text: &str) -> Result<u64, String> {
    let d = parse(text)?;
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        return Err(format!("`{text}` is shorter than a millisecond"));
    }
    u64::try_from(d.as_millis()).map_err(|_| format!("`{text}` is too long"))
}

/// [`parse`], for flags that need whole seconds, at least 1 (a retention window).
pub fn parse_secs(text: &str) -> Result<u64, String> {
    let d = parse(text)?;
    if d.as_secs() == 0 {
        return Err(format!("`{text}` is shorter than a second"));
    }
    if d.subsec_nanos() != 0 {
        return Err(format!("`{text}` is not a whole number of seconds"));
    }
    Ok(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_plain_seconds_mean_the_same() {
        assert_eq!(parse("90m"), parse("5400"));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d12h"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0.3"), Ok(Duration::from_millis(300)));
    }

    #[test]
    fn bad_durations_say_what_is_accepted() {
        for bad in ["", "soon", "10x", "-5", "1.2.3", "1e3", "99999999999999"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("90s") || e.contains("too long"), "{bad}: {e}");
        }
    }

    #[test]
    fn milliseconds_and_seconds_flags() {
        assert_eq!(parse_ms("0.3"), Ok(300));
        assert_eq!(parse_ms("1m"), Ok(60_000));
        assert!(parse_ms("0").is_err());
        assert!(parse_ms("100us").is_err());
        assert_eq!(parse_secs("2h"), Ok(7200));
        assert_eq!(parse_secs("3600"), Ok(3600));
        assert!(parse_secs("0.5").is_err());
        assert!(parse_secs("1500ms").is_err());
    }
}
