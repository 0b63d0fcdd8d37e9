//! One time-window shape for every chain: the days and hours a key (or a rule) may sign.
//!
//! Why: a hot wallet's payouts run in the operators' working hours; a stolen client credential
//! is typically used when nobody is watching. Refusing outside the window turns a night-time
//! drain into a morning alert. The clock is an argument (`now_ms`), never read here, so a
//! window is tested at chosen instants and the caller decides where time comes from.
//!
//! ```toml
//! time_window = { days = ["mon", "tue", "wed", "thu", "fri"], hours = "08:00-18:00", utc_offset = "+01:00" }
//! time_window = { days = ["mon", "tue", "wed", "thu", "fri"], hours = [8, 18] }   # the same hours in UTC
//! ```
//!
//! - `hours` is `"HH:MM-HH:MM"` (end exclusive, `24:00` allowed) or whole hours `[8, 18]`; both
//!   forms mean the same. A start after the end is an overnight window (`"22:00-06:00"`,
//!   `[22, 6]`), whose early hours belong to the day it started on. Absent: all day.
//! - `days` are local days (after the offset); empty or absent means every day.
//! - `utc_offset` is a fixed offset (`"+05:30"`, `"-08:00"`); absent means UTC. A fixed offset,
//!   not a zone name: daylight-saving changes would silently move the window twice a year, and
//!   keyguard carries no time-zone database.
//!
//! Every refusal names the chain's window rule (`evm.time_window`, `bitcoin.time_window`) or
//! the user rule whose window missed, with field `time`.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::Rejection;

/// A day of the week.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
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
    pub fn from_epoch_days(days: i64) -> Self {
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

/// The two spellings of `hours`: `"HH:MM-HH:MM"` or whole hours `[start, end]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Hours {
    /// `"08:00-18:00"`.
    Text(String),
    /// `[8, 18]`.
    Whole([u8; 2]),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(default)]
    days: Vec<Weekday>,
    hours: Option<Hours>,
    utc_offset: Option<String>,
}

/// When signing is allowed (`time_window = { days, hours, utc_offset }`).
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
    let t = s.trim();
    let (h, m) = t
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let digits = |x: &str| !x.is_empty() && x.len() <= 2 && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || m.len() != 2 || !digits(m) {
        return Err(format!("{s:?} is not HH:MM"));
    }
    let (h, m): (u32, u32) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(format!("{s:?} is not a time of day (00:00-24:00)"));
    }
    Ok(h * 60 + m)
}

fn offset(s: &str) -> Result<i32, String> {
    let t = s.trim();
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(format!("utc_offset {s:?}: expected +HH:MM or -HH:MM")),
    };
    let minutes = hhmm(rest).map_err(|e| format!("utc_offset: {e}"))?;
    if minutes > 14 * 60 {
        return Err(format!("utc_offset {s:?} is beyond ±14:00"));
    }
    Ok(sign * minutes as i32)
}

impl TimeWindow {
    /// Builds a window from its parts, as written in a config (`hours` and `utc_offset` are
    /// optional). Errors start with the key at fault (`hours`, `utc_offset`).
    pub fn from_parts(
        days: Vec<Weekday>,
        hours: Option<&Hours>,
        utc_offset: Option<&str>,
    ) -> Result<Self, String> {
        let (start_min, end_min) = match hours {
            None => (0, 24 * 60),
            Some(Hours::Whole([a, b])) => {
                if *a > 24 || *b > 24 {
                    return Err(format!("hours: [{a}, {b}] are not hours of the day (0-24)"));
                }
                (u32::from(*a) * 60, u32::from(*b) * 60)
            }
            Some(Hours::Text(t)) => {
                let (a, b) = t
                    .split_once('-')
                    .ok_or_else(|| format!("hours {t:?}: expected \"HH:MM-HH:MM\""))?;
                (
                    hhmm(a).map_err(|e| format!("hours: {e}"))?,
                    hhmm(b).map_err(|e| format!("hours: {e}"))?,
                )
            }
        };
        if start_min == end_min || start_min >= 24 * 60 {
            return Err(format!(
                "hours: {} to {} is not a window within one day (use \"00:00-24:00\" for all day)",
                clock(start_min),
                clock(end_min),
            ));
        }
        Ok(TimeWindow {
            days,
            start_min,
            end_min,
            offset_min: utc_offset.map(offset).transpose()?.unwrap_or(0),
        })
    }

    /// Local day and minute of the day at `now_ms` (Unix milliseconds).
    fn local(&self, now_ms: u64) -> (i64, u32) {
        let minutes = (now_ms / 60_000) as i64 + i64::from(self.offset_min);
        (minutes.div_euclid(1440), minutes.rem_euclid(1440) as u32)
    }

    fn day_ok(&self, day: i64) -> bool {
        self.days.is_empty() || self.days.contains(&Weekday::from_epoch_days(day))
    }

    /// Whether signing is allowed at `now_ms` (Unix milliseconds).
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

    /// Why `now_ms` is outside the window (local time and the window), or `None` inside it.
    pub fn outside(&self, now_ms: u64) -> Option<String> {
        if self.contains(now_ms) {
            return None;
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
        Some(format!(
            "{} {} (UTC{}{}) is outside the signing window {}-{} on {days}",
            Weekday::from_epoch_days(day),
            clock(minute),
            if self.offset_min < 0 { '-' } else { '+' },
            clock(self.offset_min.unsigned_abs()),
            clock(self.start_min),
            clock(self.end_min),
        ))
    }

    /// [`Self::contains`] as the rule `rule`: the refusal (field `time`) says the local time
    /// and the window.
    pub fn check(&self, rule: &'static str, now_ms: u64) -> Result<(), Rejection> {
        match self.outside(now_ms) {
            None => Ok(()),
            Some(reason) => Err(Rejection::policy(rule, "time", reason)),
        }
    }
}

impl<'de> Deserialize<'de> for TimeWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawWindow::deserialize(d)?;
        TimeWindow::from_parts(raw.days, raw.hours.as_ref(), raw.utc_offset.as_deref())
            .map_err(serde::de::Error::custom)
    }
}

fn clock(minute: u32) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;

/// The time-window case table every chain's tests run through its own policy.
#[doc(hidden)]
#[path = "window_cases.rs"]
pub mod cases;
