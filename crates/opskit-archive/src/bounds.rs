//! The half-open bounds of one month, as strings in the writers' time zone and as instants,
//! and which months may be archived at all.
//!
//! A month may be archived once it has ended in the writers' zone plus
//! `archive.month_grace_minutes`, and only within [`FIRST_MONTH`] .. the last month that has
//! ended: the bound strings always have a 4-digit year, so they never wrap.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use opskit_core::config::value::Month;
use opskit_core::error::usage;
use serde::{Deserialize, Serialize};

/// The first month that can be archived (the year Month values start at).
pub const FIRST_MONTH: Month = Month {
    year: 1970,
    month: 1,
};

/// The last month whose bounds can be written with 4-digit years (its upper bound is
/// `9999-12-01 00:00:00`).
pub const LAST_MONTH: Month = Month {
    year: 9999,
    month: 11,
};

/// `[lower, upper)` of one calendar month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthBounds {
    /// The month.
    pub month: Month,
    /// Inclusive lower bound, `YYYY-MM-01 00:00:00` in the writers' zone.
    pub lower: String,
    /// Exclusive upper bound, the first second of the next month.
    pub upper: String,
    /// The writers' zone the strings are in.
    pub zone: String,
    /// The first instant of the month (see [`first_instant`]).
    pub lower_instant: DateTime<Utc>,
    /// The first instant of the next month.
    pub upper_instant: DateTime<Utc>,
}

impl MonthBounds {
    /// The bounds of `month` in `tz`. Strings are built directly, never via UTC round trips.
    /// A month outside [`FIRST_MONTH`] ..= [`LAST_MONTH`] is a usage error (exit 2).
    pub fn new(month: Month, tz: chrono_tz::Tz) -> anyhow::Result<MonthBounds> {
        if month < FIRST_MONTH || month > LAST_MONTH {
            return Err(usage(format!(
                "month {month} is outside the range that can be archived ({FIRST_MONTH} to {LAST_MONTH}, and only months that have ended)"
            )));
        }
        let next = month.next();
        Ok(MonthBounds {
            month,
            lower: format!("{:04}-{:02}-01 00:00:00", month.year, month.month),
            upper: format!("{:04}-{:02}-01 00:00:00", next.year, next.month),
            zone: tz.name().to_string(),
            lower_instant: first_instant(first_day(month), tz),
            upper_instant: first_instant(first_day(next), tz),
        })
    }
}

fn first_day(m: Month) -> NaiveDate {
    // Month values are validated: 1-12, and the year is within chrono's range.
    NaiveDate::from_ymd_opt(m.year, m.month, 1).unwrap_or(NaiveDate::MIN)
}

/// The first instant whose local date in `tz` is `day`: midnight, or the end of the gap when
/// a daylight-saving change skips midnight (America/Asuncion on 2023-10-01 starts at 01:00),
/// or the earlier of two midnights when it repeats.
pub fn first_instant(day: NaiveDate, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    // Gaps are at most a few hours; a day always has a first minute.
    for minute in 0..24 * 60 {
        let local = midnight + Duration::minutes(minute);
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return t.with_timezone(&Utc);
        }
    }
    Utc.from_utc_datetime(&midnight)
}

/// `Ok` when `month` has ended in `tz` at least `grace` before `now`; otherwise a usage error
/// (exit 2) that says when it may run.
pub fn check_month_ended(
    month: Month,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
    grace: Duration,
) -> anyhow::Result<()> {
    let bounds = MonthBounds::new(month, tz)?;
    let allowed_from = bounds.upper_instant + grace;
    if now < allowed_from {
        return Err(usage(format!(
            "month {month} has not ended long enough in {tz} to be archived: it ends at {} and may run from {} (archive.month_grace_minutes = {}); \
             only months that have ended can be archived",
            bounds
                .upper_instant
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M %Z"),
            allowed_from.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z"),
            grace.num_minutes()
        )));
    }
    Ok(())
}

/// True when `s` is exactly `YYYY-MM-DD HH:MM:SS` with digits in every numeric position
/// (the only shape whose lexicographic order is chronological).
pub fn is_well_formed_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opskit_core::ExitStatus;

    fn m(s: &str) -> Month {
        s.parse().unwrap()
    }

    #[test]
    fn bounds_are_half_open_strings_in_the_zone() {
        let b = MonthBounds::new(m("2024-12"), "Asia/Shanghai".parse().unwrap()).unwrap();
        assert_eq!(b.lower, "2024-12-01 00:00:00");
        assert_eq!(b.upper, "2025-01-01 00:00:00");
        assert_eq!(b.lower_instant.to_rfc3339(), "2024-11-30T16:00:00+00:00");
    }

    #[test]
    fn a_day_whose_midnight_does_not_exist_starts_after_the_gap() {
        // Paraguay moved its clocks from 00:00 to 01:00 on 2023-10-01.
        let tz: chrono_tz::Tz = "America/Asuncion".parse().unwrap();
        let b = MonthBounds::new(m("2023-09"), tz).unwrap();
        assert_eq!(b.upper, "2023-10-01 00:00:00");
        assert_eq!(b.upper_instant.to_rfc3339(), "2023-10-01T04:00:00+00:00");
        assert_eq!(
            b.upper_instant.with_timezone(&tz).to_rfc3339(),
            "2023-10-01T01:00:00-03:00"
        );
        // Shanghai skipped midnight on 1940-06-01 (what `status --months 1000` walks over).
        let sh: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
        let b = MonthBounds::new(
            Month {
                year: 1940,
                month: 5,
            },
            sh,
        );
        assert!(b.is_err(), "before 1970: outside the range");
        assert_eq!(
            first_instant(NaiveDate::from_ymd_opt(1940, 6, 1).unwrap(), sh)
                .with_timezone(&sh)
                .format("%H:%M")
                .to_string(),
            "01:00"
        );
    }

    #[test]
    fn bounds_never_wrap_and_months_are_limited_to_a_documented_range() {
        let tz = chrono_tz::UTC;
        for bad in ["9999-12", "1970-01"] {
            let r = MonthBounds::new(m(bad), tz);
            if bad == "9999-12" {
                let e = r.unwrap_err();
                assert_eq!(ExitStatus::of(&e), ExitStatus::Usage);
                assert!(e.to_string().contains("outside the range"), "{e}");
            } else {
                r.unwrap();
            }
        }
        let b = MonthBounds::new(LAST_MONTH, tz).unwrap();
        assert!(b.lower < b.upper, "{b:?}");
    }

    #[test]
    fn only_months_that_have_ended_plus_the_grace_may_run() {
        let tz: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let grace = Duration::minutes(30);
        // 2024-02-01 00:10 in Shanghai: January ended 10 minutes ago.
        let now = at("2024-01-31T16:10:00Z");
        let e = check_month_ended(m("2024-01"), tz, now, grace).unwrap_err();
        assert_eq!(ExitStatus::of(&e), ExitStatus::Usage);
        assert!(
            e.to_string().contains("may run from 2024-02-01 00:30 CST"),
            "{e}"
        );
        check_month_ended(m("2023-12"), tz, now, grace).unwrap();
        check_month_ended(m("2024-01"), tz, at("2024-01-31T16:30:00Z"), grace).unwrap();
        for future in ["2024-02", "2031-05", "9999-12"] {
            let e = check_month_ended(m(future), tz, now, grace).unwrap_err();
            assert_eq!(ExitStatus::of(&e), ExitStatus::Usage, "{future}: {e}");
        }
    }

    #[test]
    fn date_shapes() {
        assert!(is_well_formed_date("2024-01-01 03:33:11"));
        assert!(!is_well_formed_date("2024-1-1 3:33:11"));
        assert!(!is_well_formed_date("2024-01-01T03:33:11"));
        assert!(!is_well_formed_date("2024-01-01 03:33:11.5"));
        assert!(!is_well_formed_date(""));
    }
}
