//! One table of time-window cases every chain's tests run through its own policy, so "both
//! forms mean the same on every chain" is checked against the real policy code, not a copy.

/// Monday 2026-11-23 00:00 UTC, in Unix milliseconds.
pub const MONDAY_MS: u64 = 20_780 * 86_400_000;

/// The instant `day` days after [`MONDAY_MS`] at `hh:mm` UTC.
pub const fn at(day: u64, hh: u64, mm: u64) -> u64 {
    MONDAY_MS + day * 86_400_000 + (hh * 60 + mm) * 60_000
}

/// `(window as written, instant, signs?)`; each window appears in both spellings, and every
/// window has an instant inside (the control) and one outside.
pub const SAME_MEANING: &[(&str, u64, bool)] = &[
    // Office hours on weekdays: start inclusive, end exclusive, weekend out.
    (
        r#"{ days = ["mon", "fri"], hours = "08:00-18:00" }"#,
        at(0, 8, 0),
        true,
    ),
    (
        r#"{ days = ["mon", "fri"], hours = [8, 18] }"#,
        at(0, 8, 0),
        true,
    ),
    (
        r#"{ days = ["mon", "fri"], hours = "08:00-18:00" }"#,
        at(0, 18, 0),
        false,
    ),
    (
        r#"{ days = ["mon", "fri"], hours = [8, 18] }"#,
        at(0, 18, 0),
        false,
    ),
    (
        r#"{ days = ["mon", "fri"], hours = "08:00-18:00" }"#,
        at(0, 7, 59),
        false,
    ),
    (
        r#"{ days = ["mon", "fri"], hours = [8, 18] }"#,
        at(0, 7, 59),
        false,
    ),
    (
        r#"{ days = ["mon", "fri"], hours = "08:00-18:00" }"#,
        at(5, 12, 0),
        false,
    ),
    (
        r#"{ days = ["mon", "fri"], hours = [8, 18] }"#,
        at(5, 12, 0),
        false,
    ),
    // Overnight: Friday night and the Saturday morning after it; not Friday morning.
    (
        r#"{ days = ["fri"], hours = "22:00-06:00" }"#,
        at(4, 23, 0),
        true,
    ),
    (r#"{ days = ["fri"], hours = [22, 6] }"#, at(4, 23, 0), true),
    (
        r#"{ days = ["fri"], hours = "22:00-06:00" }"#,
        at(5, 5, 59),
        true,
    ),
    (r#"{ days = ["fri"], hours = [22, 6] }"#, at(5, 5, 59), true),
    (
        r#"{ days = ["fri"], hours = "22:00-06:00" }"#,
        at(4, 5, 0),
        false,
    ),
    (r#"{ days = ["fri"], hours = [22, 6] }"#, at(4, 5, 0), false),
    (
        r#"{ days = ["fri"], hours = "22:00-06:00" }"#,
        at(5, 6, 0),
        false,
    ),
    (r#"{ days = ["fri"], hours = [22, 6] }"#, at(5, 6, 0), false),
    // A fixed offset moves the hours: 08:00-18:00 at +02:00 is 06:00-16:00 UTC.
    (
        r#"{ hours = "08:00-18:00", utc_offset = "+02:00" }"#,
        at(0, 6, 0),
        true,
    ),
    (
        r#"{ hours = [8, 18], utc_offset = "+02:00" }"#,
        at(0, 6, 0),
        true,
    ),
    (
        r#"{ hours = "08:00-18:00", utc_offset = "+02:00" }"#,
        at(0, 16, 0),
        false,
    ),
    (
        r#"{ hours = [8, 18], utc_offset = "+02:00" }"#,
        at(0, 16, 0),
        false,
    ),
    // ... and the day: Tuesday 03:00 UTC is Monday 22:00 at -05:00, Monday 03:00 UTC is
    // Sunday 22:00.
    (
        r#"{ days = ["mon"], hours = "00:00-24:00", utc_offset = "-05:00" }"#,
        at(1, 3, 0),
        true,
    ),
    (
        r#"{ days = ["mon"], hours = [0, 24], utc_offset = "-05:00" }"#,
        at(1, 3, 0),
        true,
    ),
    (
        r#"{ days = ["mon"], hours = "00:00-24:00", utc_offset = "-05:00" }"#,
        at(0, 3, 0),
        false,
    ),
    (
        r#"{ days = ["mon"], hours = [0, 24], utc_offset = "-05:00" }"#,
        at(0, 3, 0),
        false,
    ),
];

/// `(window, the key its load error must name)`.
pub const INVALID: &[(&str, &str)] = &[
    (r#"{ hours = "08:00-25:00" }"#, "hours"),
    (r#"{ hours = [8, 25] }"#, "hours"),
    (r#"{ hours = [8, 8] }"#, "hours"),
    (r#"{ hours = "8-18" }"#, "hours"),
    (
        r#"{ hours = "08:00-18:00", utc_offset = "+1" }"#,
        "utc_offset",
    ),
    (r#"{ hours = [8, 18], zone = "Europe/Paris" }"#, "zone"),
];
