//! Natural times for `--at`: `now`, `today`, `yesterday`, weekdays (`monday`, `last
//! friday`), relative durations (`3h ago`, `2 days ago`, `1w`), ISO dates and datetimes
//! (local time unless an offset is given), optionally followed by a time of day
//! (`yesterday 14:00`). A bare day means the end of that day; a duration means that
//! instant.

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::{Span, Timestamp, Zoned};

/// Resolves `spec` relative to `now` (whose time zone is the local one).
pub fn parse(spec: &str, now: &Zoned) -> Result<Timestamp, String> {
    let s = spec.trim().to_ascii_lowercase();
    let bad = || {
        format!(
            "time {spec:?}: use a date (2026-11-02), a datetime (2026-11-02T14:00, local unless an offset is given), now, today, yesterday, a weekday (last friday) or a duration (3h ago, 2 days ago)"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    if s == "now" {
        return Ok(now.timestamp());
    }
    if let Ok(ts) = s.to_uppercase().parse::<Timestamp>() {
        return Ok(ts);
    }
    // A bare date would parse as a datetime at midnight; it means the end of the day.
    if s.contains([' ', 't'])
        && let Ok(dt) = s.replacen(' ', "T", 1).parse::<DateTime>()
    {
        return local(dt, now);
    }
    if let Some(ts) = relative(&s, now) {
        return ts.map_err(|e| format!("time {spec:?}: {e}"));
    }
    // A day, maybe followed by a time of day.
    let (day, time) = match s.rsplit_once(' ') {
        Some((d, t)) if t.contains(':') => {
            let t: Time = t.parse().map_err(|_| bad())?;
            (d.trim(), Some(t))
        }
        _ => (s.as_str(), None),
    };
    let date = day_of(day, now.date()).ok_or_else(bad)?;
    let time = time.unwrap_or(Time::constant(23, 59, 59, 999_999_999));
    local(date.to_datetime(time), now)
}

fn local(dt: DateTime, now: &Zoned) -> Result<Timestamp, String> {
    dt.to_zoned(now.time_zone().clone())
        .map(|z| z.timestamp())
        .map_err(|e| format!("{dt}: {e}"))
}

fn day_of(day: &str, today: Date) -> Option<Date> {
    match day {
        "today" => return Some(today),
        "yesterday" => return today.yesterday().ok(),
        _ => {}
    }
    if let Ok(d) = day.parse::<Date>() {
        return Some(d);
    }
    let name = day.strip_prefix("last ").unwrap_or(day).trim();
    let wd = weekday(name)?;
    // The most recent such day before today: on a Friday, "friday" is a week ago.
    let back = (today.weekday().to_monday_zero_offset() - wd.to_monday_zero_offset() + 6) % 7 + 1;
    today.checked_sub(Span::new().days(i64::from(back))).ok()
}

fn weekday(name: &str) -> Option<Weekday> {
    let all = [
        ("monday", Weekday::Monday),
        ("tuesday", Weekday::Tuesday),
        ("wednesday", Weekday::Wednesday),
        ("thursday", Weekday::Thursday),
        ("friday", Weekday::Friday),
        ("saturday", Weekday::Saturday),
        ("sunday", Weekday::Sunday),
    ];
    all.iter()
        .find(|(n, _)| *n == name || (name.len() >= 3 && n.starts_with(name)))
        .map(|(_, w)| *w)
}

/// `3h ago`, `2 days ago`, `1w`, `90 minutes`: None when `s` is not a duration.
fn relative(s: &str, now: &Zoned) -> Option<Result<Timestamp, String>> {
    let body = s.strip_suffix("ago").unwrap_or(s).trim();
    let digits = body
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(body.len());
    if digits == 0 {
        return None;
    }
    let n: i64 = body[..digits].parse().ok()?;
    let unit = body[digits..].trim();
    let span = match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => Span::new().try_seconds(n),
        "m" | "min" | "mins" | "minute" | "minutes" => Span::new().try_minutes(n),
        "h" | "hr" | "hrs" | "hour" | "hours" => Span::new().try_hours(n),
        "d" | "day" | "days" => Span::new().try_days(n),
        "w" | "week" | "weeks" => Span::new().try_weeks(n),
        "mo" | "month" | "months" => Span::new().try_months(n),
        "y" | "year" | "years" => Span::new().try_years(n),
        _ => return None,
    };
    Some(
        span.and_then(|sp| now.checked_sub(sp))
            .map(|z| z.timestamp())
            .map_err(|e| e.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;

    /// Central European time as a POSIX rule, so the tests need no tz database.
    fn berlin() -> TimeZone {
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
    }

    /// Saturday 2026-11-21 15:30 in Berlin (UTC+1).
    fn now() -> Zoned {
        "2026-11-21T14:30:00Z"
            .parse::<Timestamp>()
            .unwrap()
            .to_zoned(berlin())
    }

    fn at(s: &str) -> String {
        parse(s, &now())
            .unwrap()
            .to_zoned(berlin())
            .strftime("%Y-%m-%d %H:%M:%S%.f")
            .to_string()
    }

    #[test]
    fn named_days_mean_their_end() {
        assert_eq!(at("now"), "2026-11-21 15:30:00");
        assert_eq!(at("today"), "2026-11-21 23:59:59.999999999");
        assert_eq!(at("yesterday"), "2026-11-20 23:59:59.999999999");
        assert_eq!(at("Yesterday 14:00"), "2026-11-20 14:00:00");
        assert_eq!(at("friday"), "2026-11-20 23:59:59.999999999");
        assert_eq!(at("last monday"), "2026-11-16 23:59:59.999999999");
        // Today is a Saturday: "saturday" is a week ago.
        assert_eq!(at("saturday"), "2026-11-14 23:59:59.999999999");
        assert_eq!(at("sun"), "2026-11-15 23:59:59.999999999");
    }

    #[test]
    fn dates_are_local_unless_offset() {
        assert_eq!(at("2026-11-02"), "2026-11-02 23:59:59.999999999");
        assert_eq!(at("2026-11-02T14:00"), "2026-11-02 14:00:00");
        assert_eq!(at("2026-11-02 14:00:30"), "2026-11-02 14:00:30");
        assert_eq!(at("2026-11-02T14:00:00Z"), "2026-11-02 15:00:00");
        assert_eq!(at("2026-11-02T14:00:00+05:00"), "2026-11-02 10:00:00");
        // Summer time in Berlin is UTC+2.
        assert_eq!(
            parse("2026-07-01T12:00", &now()).unwrap().to_string(),
            "2026-07-01T10:00:00Z"
        );
    }

    #[test]
    fn durations_are_instants() {
        assert_eq!(at("3h ago"), "2026-11-21 12:30:00");
        assert_eq!(at("2 days ago"), "2026-11-19 15:30:00");
        assert_eq!(at("1w"), "2026-11-14 15:30:00");
        assert_eq!(at("90 minutes ago"), "2026-11-21 14:00:00");
        assert_eq!(at("1 month ago"), "2026-10-21 15:30:00");
    }

    #[test]
    fn rejects_nonsense() {
        for s in [
            "",
            "tomorrowish",
            "3 parsecs ago",
            "2026-13-01",
            "last blursday",
        ] {
            assert!(parse(s, &now()).is_err(), "{s}");
        }
    }
}
