//! `bitcoin.time_window`: the days and hours a key may sign at all.
//!
//! Why: a hot wallet's payouts run in the operators' working hours; a stolen client credential
//! is typically used when nobody is watching. Refusing outside the window turns a night-time
//! drain into a morning alert. The clock is an argument (`now_ms`), never read here, so the
//! rule is tested at chosen instants and the daemon decides where time comes from.
//!
//! ```toml
//! time_window = { days = ["mon", "tue", "wed", "thu", "fri"], hours = "08:00-18:00", utc_offset = "+01:00" }
//! ```
//!
//! - `hours` is `"HH:MM-HH:MM"` (end exclusive, `24:00` allowed) or `[8, 18]` as in the EVM
//!   policy; a start after the end is an overnight window (`"22:00-06:00"`), whose early hours
//!   belong to the day it started on.
//! - `days` are local days (after the offset); empty or absent means every day.
//! - `utc_offset` is a fixed offset (`"+05:30"`, `"-08:00"`); absent means UTC. A fixed offset,
//!   not a zone name: daylight-saving changes would silently move the window twice a year, and
//!   the crate carries no time-zone database.

use std::fmt;

use keyguard_chain::Rejection;
use serde::{Deserialize, Deserializer};

use crate::rules::rule;

/// A day of the week.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Day of the week of day number `days` since 1970-01-01 (a Thursday).
    fn from_epoch_days(days: i64) -> Self {
        const ORDER: [Weekday; 7] = [
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
        ];
        ORDER[days.rem_euclid(7) as usize]
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = format!("{self:?}").to_ascii_lowercase();
        f.write_str(&s)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawHours {
    Text(String),
    Whole([u8; 2]),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(default)]
    days: Vec<Weekday>,
    hours: Option<RawHours>,
    utc_offset: Option<String>,
}

/// When signing is allowed (`[policies.bitcoin] time_window`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWindow {
    /// Allowed local days; empty means every day.
    pub days: Vec<Weekday>,
    /// Start minute of the local day (inclusive).
    pub start_min: u32,
    /// End minute (exclusive, up to 1440); below `start_min` for an overnight window.
    pub end_min: u32,
    /// Fixed offset of local time from UTC, in minutes.
    pub offset_min: i32,
}

fn hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| format!("{s:?}: bad hour"))?,
        m.parse().map_err(|_| format!("{s:?}: bad minute"))?,
    );
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(format!("{s:?} is not a time of day (00:00-24:00)"));
    }
    Ok(h * 60 + m)
}

fn offset(s: &str) -> Result<i32, String> {
    let s = s.trim();
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(format!("utc_offset {s:?}: expected +HH:MM or -HH:MM")),
    };
    let minutes = hhmm(rest).map_err(|e| format!("utc_offset: {e}"))?;
    if minutes > 14 * 60 {
        return Err(format!("utc_offset {s:?} is beyond ±14:00"));
    }
    Ok(sign * minutes as i32)
}

impl TryFrom<RawWindow> for TimeWindow {
    type Error = String;
    fn try_from(raw: RawWindow) -> Result<Self, String> {
        let (start_min, end_min) = match raw.hours {
            None => (0, 24 * 60),
            Some(RawHours::Whole([a, b])) => (u32::from(a) * 60, u32::from(b) * 60),
            Some(RawHours::Text(t)) => {
                let (a, b) = t
                    .split_once('-')
                    .ok_or_else(|| format!("hours {t:?}: expected \"HH:MM-HH:MM\""))?;
                (hhmm(a)?, hhmm(b)?)
            }
        };
        if start_min == end_min || start_min >= 24 * 60 || end_min > 24 * 60 {
            return Err(format!(
                "hours: {start_min} to {end_min} minutes is not a window within one day \
                 (use \"00:00-24:00\" for all day)"
            ));
        }
        Ok(TimeWindow {
            days: raw.days,
            start_min,
            end_min,
            offset_min: raw
                .utc_offset
                .as_deref()
                .map(offset)
                .transpose()?
                .unwrap_or(0),
        })
    }
}

impl<'de> Deserialize<'de> for TimeWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TimeWindow::try_from(RawWindow::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn clock(minute: u32) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

impl TimeWindow {
    /// Local day and minute of the day at `now_ms` (Unix milliseconds).
    fn local(&self, now_ms: u64) -> (i64, u32) {
        let minutes = (now_ms / 60_000) as i64 + i64::from(self.offset_min);
        (minutes.div_euclid(1440), minutes.rem_euclid(1440) as u32)
    }

    fn day_ok(&self, day: i64) -> bool {
        self.days.is_empty() || self.days.contains(&Weekday::from_epoch_days(day))
    }

    /// Whether signing is allowed at `now_ms`.
    pub fn contains(&self, now_ms: u64) -> bool {
        let (day, minute) = self.local(now_ms);
        if self.start_min < self.end_min {
            self.day_ok(day) && (self.start_min..self.end_min).contains(&minute)
        } else {
            // Overnight: the evening part on an allowed day, or the morning after one.
            (minute >= self.start_min && self.day_ok(day))
                || (minute < self.end_min && self.day_ok(day - 1))
        }
    }

    /// [`Self::contains`] as a rule: the refusal says the local time and the window.
    pub fn check(&self, now_ms: u64) -> Result<(), Rejection> {
        if self.contains(now_ms) {
            return Ok(());
        }
        let (day, minute) = self.local(now_ms);
        let days = if self.days.is_empty() {
            "every day".to_string()
        } else {
            self.days
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        Err(Rejection::policy(
            rule::TIME_WINDOW,
            "time",
            format!(
                "{} {} (UTC{}{}) is outside the signing window {}-{} on {days}",
                Weekday::from_epoch_days(day),
                clock(minute),
                if self.offset_min < 0 { '-' } else { '+' },
                clock(self.offset_min.unsigned_abs()),
                clock(self.start_min),
                clock(self.end_min),
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(text: &str) -> TimeWindow {
        #[derive(Deserialize)]
        struct W {
            w: TimeWindow,
        }
        toml::from_str::<W>(&format!("w = {text}")).unwrap().w
    }

    /// 2026-11-23 was a Monday; `at(0, 9, 30)` is that Monday 09:30 UTC.
    fn at(day: u64, h: u64, m: u64) -> u64 {
        let monday = 20_780 * 86_400_000; // days from 1970-01-01 to 2026-11-23
        monday + day * 86_400_000 + (h * 60 + m) * 60_000
    }

    #[test]
    fn the_epoch_day_of_the_fixture_is_a_monday() {
        assert_eq!(Weekday::from_epoch_days(20_780), Weekday::Mon);
        assert_eq!(Weekday::from_epoch_days(0), Weekday::Thu);
        assert_eq!(Weekday::from_epoch_days(-1), Weekday::Wed);
    }

    #[test]
    fn office_hours_on_weekdays() {
        let w = window(r#"{ days = ["mon", "tue", "wed", "thu", "fri"], hours = "08:00-18:00" }"#);
        assert!(w.contains(at(0, 8, 0)));
        assert!(w.contains(at(0, 17, 59)));
        assert!(!w.contains(at(0, 18, 0)), "end is exclusive");
        assert!(!w.contains(at(0, 7, 59)));
        assert!(!w.contains(at(5, 12, 0)), "saturday");
        let err = w.check(at(5, 12, 0)).unwrap_err();
        match err {
            Rejection::Policy {
                rule,
                field,
                reason,
                ..
            } => {
                assert_eq!((rule, field.as_str()), ("bitcoin.time_window", "time"));
                assert!(reason.contains("sat 12:00"), "{reason}");
                assert!(reason.contains("08:00-18:00"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fixed_offset_moves_hours_and_days() {
        // 08:00-18:00 at UTC+02:00 is 06:00-16:00 UTC.
        let w = window(r#"{ days = ["mon"], hours = "08:00-18:00", utc_offset = "+02:00" }"#);
        assert!(w.contains(at(0, 6, 0)));
        assert!(!w.contains(at(0, 16, 0)));
        // Sunday 23:00 UTC is Monday 01:00 local: right day, wrong hour.
        let w = window(r#"{ days = ["mon"], utc_offset = "+02:00" }"#);
        assert!(w.contains(at(0, 0, 0) - 3_600_000));
        assert!(!w.contains(at(0, 22, 0)), "tuesday 00:00 local");
        let w = window(r#"{ hours = "09:00-10:00", utc_offset = "-05:30" }"#);
        assert!(w.contains(at(0, 14, 30)));
        assert!(!w.contains(at(0, 9, 30)));
    }

    #[test]
    fn overnight_window_belongs_to_the_day_it_starts() {
        let w = window(r#"{ days = ["fri"], hours = "22:00-06:00" }"#);
        assert!(w.contains(at(4, 23, 0)), "friday night");
        assert!(w.contains(at(5, 5, 59)), "saturday early morning");
        assert!(!w.contains(at(5, 6, 0)));
        assert!(!w.contains(at(5, 23, 0)), "saturday night");
        assert!(
            !w.contains(at(4, 5, 0)),
            "friday early morning follows thursday"
        );
    }

    #[test]
    fn whole_hours_as_in_the_evm_policy_and_all_day() {
        let w = window("{ hours = [8, 18] }");
        assert_eq!((w.start_min, w.end_min), (480, 1080));
        let w = window(r#"{ hours = "00:00-24:00" }"#);
        assert!(w.contains(at(2, 23, 59)) && w.contains(at(2, 0, 0)));
    }

    #[test]
    fn bad_windows_are_config_errors() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct W {
            w: TimeWindow,
        }
        for bad in [
            r#"{ hours = "08:00-08:00" }"#,
            r#"{ hours = "8-18" }"#,
            r#"{ hours = "08:00-25:00" }"#,
            r#"{ hours = "08:60-09:00" }"#,
            r#"{ utc_offset = "02:00" }"#,
            r#"{ utc_offset = "+15:00" }"#,
            r#"{ days = ["monday"] }"#,
            r#"{ hours = "08:00-18:00", zone = "Europe/Paris" }"#,
        ] {
            assert!(
                toml::from_str::<W>(&format!("w = {bad}")).is_err(),
                "{bad} must not parse"
            );
        }
    }
}
