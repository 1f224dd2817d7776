//! Validated value types used in the configuration and on the command line.
//!
//! Each type checks its value when it is parsed, so a config that deserializes is a config
//! whose values are safe to render into nginx configs, shell commands, SQL and file paths.
//! The error text names what was wrong; the loader adds the file, line and key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Defines a string newtype that validates on parse and (de)serializes as a string.
macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $check:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $check(&s)?;
                Ok($name(s))
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::try_from(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn check_domain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!(
            "`{s}` is not a domain name: it must be 1 to 253 characters"
        ));
    }
    for label in s.trim_end_matches('.').split('.') {
        let ok_chars = label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if label.is_empty()
            || label.len() > 63
            || !ok_chars
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "`{s}` is not a domain name: each dot-separated label must be 1-63 letters, \
                 digits or '-' (no spaces, ';', braces or quotes)"
            ));
        }
    }
    Ok(())
}

validated_string!(
    /// A DNS name such as `ipo.com`: letters, digits, `-` and dots only.
    DomainName,
    check_domain
);

/// Characters that would break out of an nginx directive, a shell word or a TOML/SQL string.
const UNSAFE_CHARS: &[char] = &[';', '{', '}', '"', '\'', '`', '$', '\\', '#'];

fn check_token(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || UNSAFE_CHARS.contains(c))
    {
        return Err(format!(
            "{what} `{s}` contains {c:?}: whitespace, control characters and any of ; {{ }} \" ' ` $ \\ # are not allowed"
        ));
    }
    Ok(())
}

fn check_name(s: &str) -> Result<(), String> {
    check_token("the name", s)?;
    if s.starts_with('-') {
        return Err(format!("the name `{s}` must not start with '-'"));
    }
    Ok(())
}

validated_string!(
    /// A plain identifier (an SSH host alias, a database or table name, a container name):
    /// no whitespace, quotes, `;`, braces or `$`, and not starting with `-`.
    Name,
    check_name
);

fn check_ident(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "`{s}` is not a valid identifier: use 1-64 ASCII letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

validated_string!(
    /// A database, collection, table, column or zone identifier: `[A-Za-z0-9_-]{1,64}`.
    Ident,
    check_ident
);

fn check_tz(s: &str) -> Result<(), String> {
    s.parse::<chrono_tz::Tz>().map(|_| ()).map_err(|_| {
        format!("`{s}` is not an IANA time zone name (for example Asia/Shanghai or UTC)")
    })
}

validated_string!(
    /// An IANA time zone name such as `Asia/Shanghai`.
    TimeZoneName,
    check_tz
);

impl TimeZoneName {
    /// The parsed zone.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.0.parse().expect("validated on construction")
    }
}

fn check_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("`{s}` is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{s}` contains {c:?}"));
    }
    Ok(())
}

validated_string!(
    /// An `http://` or `https://` URL with a host.
    HttpUrl,
    check_url
);

impl HttpUrl {
    /// The URL without path, query or credentials: safe to print in logs.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        format!("{scheme}://{host}/…")
    }
}

fn check_cron_field(field: &str, min: u32, max: u32) -> bool {
    field.split(',').all(|part| {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(step) = step
            && !matches!(step.parse::<u32>(), Ok(n) if n >= 1)
        {
            return false;
        }
        if range == "*" {
            return true;
        }
        let in_range = |v: &str| matches!(v.parse::<u32>(), Ok(n) if (min..=max).contains(&n));
        match range.split_once('-') {
            Some((a, b)) => in_range(a) && in_range(b),
            None => in_range(range),
        }
    })
}

fn check_cron(s: &str) -> Result<(), String> {
    let fields: Vec<&str> = s.split_whitespace().collect();
    let limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    if fields.len() != 5 {
        return Err(format!(
            "`{s}` is not a 5-field cron schedule (minute hour day-of-month month day-of-week)"
        ));
    }
    for (f, (lo, hi)) in fields.iter().zip(limits) {
        if !check_cron_field(f, lo, hi) {
            return Err(format!(
                "`{s}`: cron field `{f}` is not valid (numbers {lo}-{hi}, *, ranges, lists, steps)"
            ));
        }
    }
    Ok(())
}

validated_string!(
    /// A 5-field cron schedule such as `0 1 1 * *`.
    CronSchedule,
    check_cron
);

fn check_calendar(s: &str) -> Result<(), String> {
    check_token_allow_space("the OnCalendar expression", s)
}

fn check_token_allow_space(what: &str, s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() || UNSAFE_CHARS.contains(c))
    {
        return Err(format!("{what} `{s}` contains {c:?}"));
    }
    Ok(())
}

validated_string!(
    /// A systemd `OnCalendar=` expression such as `*-*-01 01:00:00`.
    CalendarSpec,
    check_calendar
);

/// A calendar month, `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Month {
    /// The year, 1970-9999.
    pub year: i32,
    /// The month, 1-12.
    pub month: u32,
}

impl Month {
    /// The month after this one.
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month before this one.
    pub fn prev(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The calendar month before the one that contains `now` in `tz`.
    pub fn previous_in(tz: chrono_tz::Tz, now: chrono::DateTime<chrono::Utc>) -> Month {
        use chrono::Datelike;
        let local = now.with_timezone(&tz);
        Month {
            year: local.year(),
            month: local.month(),
        }
        .prev()
    }
}

impl FromStr for Month {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a month: use YYYY-MM, for example 2024-01");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) {
            return Err(format!("`{s}` is not a month: the month must be 01 to 12"));
        }
        if year < 1970 {
            return Err(format!(
                "`{s}` is not a month: the year must be 1970 or later"
            ));
        }
        Ok(Month { year, month })
    }
}

impl TryFrom<String> for Month {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Month> for String {
    fn from(m: Month) -> String {
        m.to_string()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// An absolute filesystem path that is safe to render into configs and commands.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AbsPath(PathBuf);

impl AbsPath {
    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// This path joined with a relative component (validated like the original).
    pub fn join(&self, rel: &str) -> AbsPath {
        AbsPath(self.0.join(rel))
    }
}

impl TryFrom<String> for AbsPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!(
                "`{s}` is not an absolute path (it must start with '/')"
            ));
        }
        check_token("the path", &s)?;
        if s.split('/').any(|c| c == "..") {
            return Err(format!("the path `{s}` must not contain '..'"));
        }
        Ok(AbsPath(PathBuf::from(s)))
    }
}

impl FromStr for AbsPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_string())
    }
}

impl From<AbsPath> for String {
    fn from(p: AbsPath) -> String {
        p.0.to_string_lossy().into_owned()
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

impl AsRef<Path> for AbsPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// A request rate in requests per second; finite and greater than zero.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Rate(f64);

impl Rate {
    /// Requests per second.
    pub fn per_second(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Rate {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if !v.is_finite() || v <= 0.0 {
            return Err(format!(
                "the rate {v} must be a number of requests per second greater than 0"
            ));
        }
        if v > 1_000_000.0 {
            return Err(format!("the rate {v} is above 1000000 requests per second"));
        }
        Ok(Rate(v))
    }
}

impl From<Rate> for f64 {
    fn from(r: Rate) -> f64 {
        r.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} r/s", self.0)
    }
}

/// A positive whole number (counts, sizes, seconds) that must not be 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u64")]
pub struct Positive(u64);

impl Positive {
    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// A constant; panics on 0 (for defaults written in code).
    pub const fn new(v: u64) -> Positive {
        assert!(v > 0);
        Positive(v)
    }
}

impl TryFrom<i64> for Positive {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if v <= 0 {
            return Err(format!("{v} must be greater than 0"));
        }
        Ok(Positive(v as u64))
    }
}

impl From<Positive> for u64 {
    fn from(p: Positive) -> u64 {
        p.0
    }
}

impl fmt::Display for Positive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(DomainName::from_str("ipo.com").is_ok());
        assert!(DomainName::from_str("bot.ipo.com").is_ok());
        assert!(DomainName::from_str("ipo .com").is_err());
        assert!(DomainName::from_str("ipo.com;").is_err());
        assert!(DomainName::from_str("ipo.com{").is_err());
        assert!(DomainName::from_str("").is_err());
        assert!(DomainName::from_str("-a.com").is_err());
    }

    #[test]
    fn months() {
        assert_eq!(
            Month::from_str("2024-01").unwrap(),
            Month {
                year: 2024,
                month: 1
            }
        );
        assert!(Month::from_str("2024-13").unwrap_err().contains("01 to 12"));
        assert!(Month::from_str("2024-1").is_err());
        assert!(Month::from_str("24-01").is_err());
        assert_eq!(
            Month::from_str("2024-01").unwrap().prev().to_string(),
            "2023-12"
        );
        assert_eq!(
            Month::from_str("2024-12").unwrap().next().to_string(),
            "2025-01"
        );
    }

    #[test]
    fn previous_month_uses_the_writers_zone() {
        use chrono::TimeZone;
        // 2024-03-01 00:30 in Shanghai is still 2024-02-29 16:30 UTC.
        let now = chrono::Utc
            .with_ymd_and_hms(2024, 2, 29, 16, 30, 0)
            .unwrap();
        let sh: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(Month::previous_in(sh, now).to_string(), "2024-02");
        assert_eq!(
            Month::previous_in(chrono_tz::UTC, now).to_string(),
            "2024-01"
        );
    }

    #[test]
    fn paths() {
        assert!(AbsPath::from_str("/www/ipo").is_ok());
        assert!(
            AbsPath::from_str("www/ipo")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(AbsPath::from_str("/www/ipo;rm").is_err());
        assert!(AbsPath::from_str("/www/../etc").is_err());
        assert!(AbsPath::from_str("/www/a b").is_err());
    }

    #[test]
    fn rates_and_counts() {
        assert!(Rate::try_from(1.5).is_ok());
        assert!(Rate::try_from(0.0).is_err());
        assert!(Rate::try_from(-1.0).is_err());
        assert!(Positive::try_from(0).is_err());
        assert_eq!(Positive::try_from(3).unwrap().get(), 3);
    }

    #[test]
    fn cron_and_urls() {
        assert!(CronSchedule::from_str("0 1 1 * *").is_ok());
        assert!(CronSchedule::from_str("*/5 0-6 1,15 * 1-5").is_ok());
        assert!(CronSchedule::from_str("0 24 1 * *").is_err());
        assert!(CronSchedule::from_str("0 1 1 *").is_err());
        assert!(HttpUrl::from_str("https://monitor.ipo.com/webhook/mongodb").is_ok());
        assert!(HttpUrl::from_str("ftp://x").is_err());
        assert_eq!(
            HttpUrl::from_str("https://u:secret@monitor.ipo.com/hook?token=abc")
                .unwrap()
                .redacted(),
            "https://monitor.ipo.com/…"
        );
        assert!(TimeZoneName::from_str("Asia/Shanghai").is_ok());
        assert!(TimeZoneName::from_str("Mars/Base").is_err());
    }
}
