//! The half-open bounds of one month, as strings in the writers' time zone and as instants.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use opskit_core::config::value::Month;
use serde::{Deserialize, Serialize};

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
    /// `lower` as an instant.
    pub lower_instant: DateTime<Utc>,
    /// `upper` as an instant.
    pub upper_instant: DateTime<Utc>,
}

impl MonthBounds {
    /// The bounds of `month` in `tz`. Strings are built directly, never via UTC round trips.
    pub fn new(month: Month, tz: chrono_tz::Tz) -> MonthBounds {
        let next = month.next();
        let instant = |m: Month| {
            let midnight = NaiveDate::from_ymd_opt(m.year, m.month, 1)
                .expect("valid month")
                .and_hms_opt(0, 0, 0)
                .expect("valid time");
            tz.from_local_datetime(&midnight)
                .earliest()
                .expect("midnight on the 1st exists in every zone")
                .with_timezone(&Utc)
        };
        MonthBounds {
            month,
            lower: format!("{:04}-{:02}-01 00:00:00", month.year, month.month),
            upper: format!("{:04}-{:02}-01 00:00:00", next.year, next.month),
            zone: tz.name().to_string(),
            lower_instant: instant(month),
            upper_instant: instant(next),
        }
    }
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

    #[test]
    fn bounds_are_half_open_strings_in_the_zone() {
        let b = MonthBounds::new("2024-12".parse().unwrap(), "Asia/Shanghai".parse().unwrap());
        assert_eq!(b.lower, "2024-12-01 00:00:00");
        assert_eq!(b.upper, "2025-01-01 00:00:00");
        assert_eq!(b.lower_instant.to_rfc3339(), "2024-11-30T16:00:00+00:00");
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
