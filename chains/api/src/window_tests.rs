use super::*;

fn window(text: &str) -> TimeWindow {
    #[derive(Deserialize)]
    struct W {
        w: TimeWindow,
    }
    toml::from_str::<W>(&format!("w = {text}")).unwrap().w
}

fn parse(text: &str) -> Result<TimeWindow, String> {
    #[derive(Deserialize, Debug)]
    struct W {
        w: TimeWindow,
    }
    toml::from_str::<W>(&format!("w = {text}"))
        .map(|w| w.w)
        .map_err(|e| e.to_string())
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
    match w.check("bitcoin.time_window", at(5, 12, 0)).unwrap_err() {
        Rejection::Policy {
            rule,
            field,
            reason,
        } => {
            assert_eq!((rule, field.as_str()), ("bitcoin.time_window", "time"));
            assert!(reason.contains("sat 12:00"), "{reason}");
            assert!(reason.contains("08:00-18:00"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.check("evm.time_window", at(0, 12, 0)), Ok(()));
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
    for form in [r#""22:00-06:00""#, "[22, 6]"] {
        let w = window(&format!(r#"{{ days = ["fri"], hours = {form} }}"#));
        assert!(w.contains(at(4, 23, 0)), "{form}: friday night");
        assert!(w.contains(at(5, 5, 59)), "{form}: saturday early morning");
        assert!(!w.contains(at(5, 6, 0)), "{form}");
        assert!(!w.contains(at(5, 23, 0)), "{form}: saturday night");
        assert!(
            !w.contains(at(4, 5, 0)),
            "{form}: friday early morning follows thursday"
        );
    }
}

/// Both spellings of `hours` mean the same window at every minute of a week, with and
/// without an offset, daytime and overnight.
#[test]
fn both_hour_forms_mean_the_same_window() {
    let pairs = [
        (r#""08:00-18:00""#, "[8, 18]"),
        (r#""22:00-06:00""#, "[22, 6]"),
        (r#""00:00-24:00""#, "[0, 24]"),
        (r#""23:00-24:00""#, "[23, 24]"),
    ];
    for (text, whole) in pairs {
        for tail in [
            "",
            r#", utc_offset = "+05:30""#,
            r#", utc_offset = "-08:00""#,
        ] {
            let a = window(&format!(
                r#"{{ days = ["mon", "sat"], hours = {text}{tail} }}"#
            ));
            let b = window(&format!(
                r#"{{ days = ["mon", "sat"], hours = {whole}{tail} }}"#
            ));
            assert_eq!(a, b, "{text} vs {whole}{tail}");
            for minute in (0..7 * 1440).step_by(15) {
                let t = at(0, 0, minute);
                assert_eq!(a.contains(t), b.contains(t), "{text}{tail} at {minute}");
            }
        }
    }
    // Control: a different window is told apart by the same sweep.
    let a = window(r#"{ hours = "08:00-18:00" }"#);
    let b = window("{ hours = [8, 17] }");
    assert!((0..1440).any(|m| a.contains(at(0, 0, m)) != b.contains(at(0, 0, m))));
}

#[test]
fn bad_windows_are_config_errors_naming_the_key() {
    for (bad, key) in [
        (r#"{ hours = "08:00-08:00" }"#, "hours"),
        ("{ hours = [8, 8] }", "hours"),
        ("{ hours = [8, 25] }", "hours"),
        ("{ hours = [24, 8] }", "hours"),
        (r#"{ hours = "8-18" }"#, "hours"),
        (r#"{ hours = "08:00-25:00" }"#, "hours"),
        (r#"{ hours = "08:60-09:00" }"#, "hours"),
        (r#"{ hours = "08:00" }"#, "hours"),
        (r#"{ hours = "+8:00-09:00" }"#, "hours"),
        (r#"{ hours = "08:0-09:00" }"#, "hours"),
        (r#"{ utc_offset = "02:00" }"#, "utc_offset"),
        (r#"{ utc_offset = "+15:00" }"#, "utc_offset"),
        (r#"{ utc_offset = "+2" }"#, "utc_offset"),
        (r#"{ days = ["monday"] }"#, "monday"),
        (
            r#"{ hours = "08:00-18:00", zone = "Europe/Paris" }"#,
            "zone",
        ),
    ] {
        let e = parse(bad).expect_err(bad);
        assert!(e.contains(key), "{bad}: {e}");
    }
    // Control: the nearest valid spellings parse.
    for good in [
        r#"{ hours = "08:00-09:00" }"#,
        "{ hours = [8, 24] }",
        r#"{ utc_offset = "+14:00" }"#,
        r#"{ days = ["mon"] }"#,
    ] {
        parse(good).expect(good);
    }
}

#[test]
fn the_shared_case_table_holds_for_the_shape_itself() {
    for (text, t, inside) in cases::SAME_MEANING {
        assert_eq!(window(text).contains(*t), *inside, "{text} at {t}");
    }
    for (text, key) in cases::INVALID {
        assert!(parse(text).expect_err(text).contains(key), "{text}");
    }
}
