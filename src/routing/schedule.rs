//! When a route applies: windows of the operator's local time (专席 hours, a night overflow to
//! the main pool or another city) on classes of days, with the holiday list and the make-up
//! working days of China's calendar (调休). Pure: the time is passed in.
//!
//! The local time is UTC plus a fixed offset (`[routing] utc_offset`, China Standard Time
//! `+08:00` by default: China keeps no daylight saving time). A window `22:00-06:00` runs over
//! midnight; both of its parts are judged on the date they fall on.

use std::collections::HashSet;
use std::fmt;

/// Where the router reads the time (Unix ms): the system clock, or a test's.
#[derive(Clone)]
pub(super) struct Clock(pub(super) std::sync::Arc<dyn Fn() -> i64 + Send + Sync>);

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// Minutes in a day.
const DAY_MINUTES: u16 = 24 * 60;

/// `HH:MM-HH:MM`, local time, the end not included; an end before the start runs past
/// midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct TimeWindow {
    from: u16,
    to: u16,
}

/// A class of days a route applies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Day {
    /// `mon` ... `sun`, by the calendar alone.
    Weekday(u8),
    /// `workday`: Monday to Friday unless a holiday, and the make-up working days.
    Workday,
    /// `restday`: every other day (weekends, holidays).
    Restday,
}

/// The operator's calendar: the offset of local time and the listed days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calendar {
    offset_minutes: i32,
    /// Days (since 1970-01-01, local) off although weekdays (国庆, 春节 ...).
    holidays: HashSet<i64>,
    /// Days worked although at a weekend (调休).
    workdays: HashSet<i64>,
}

/// When a route applies; no hours and no days: always.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    hours: Vec<TimeWindow>,
    days: Vec<Day>,
}

/// A local moment: the day (since 1970-01-01), its minute, and its weekday (0 Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Local {
    day: i64,
    minute: u16,
    weekday: u8,
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl TryFrom<String> for TimeWindow {
    type Error = String;

    fn try_from(text: String) -> Result<TimeWindow, String> {
        let minute = |part: &str| -> Option<u16> {
            let (hours, minutes) = part.trim().split_once(':')?;
            let (hours, minutes): (u16, u16) = (hours.parse().ok()?, minutes.parse().ok()?);
            // 24:00 ends a day.
            (minutes < 60 && (hours < 24 || (hours == 24 && minutes == 0)))
                .then_some(hours * 60 + minutes)
        };
        let invalid = || format!("{text:?} is not a window like \"08:30-17:30\"");
        let (from, to) = text.split_once('-').ok_or_else(invalid)?;
        let (from, to) = (
            minute(from).ok_or_else(invalid)?,
            minute(to).ok_or_else(invalid)?,
        );
        if from == to || from == DAY_MINUTES {
            return Err(invalid());
        }
        Ok(TimeWindow { from, to })
    }
}

impl TimeWindow {
    fn contains(self, minute: u16) -> bool {
        if self.from < self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        }
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", part(self.from), part(self.to))
    }
}

impl TryFrom<String> for Day {
    type Error = String;

    fn try_from(text: String) -> Result<Day, String> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.as_str() {
            "workday" => Ok(Day::Workday),
            "restday" => Ok(Day::Restday),
            _ => WEEKDAYS
                .iter()
                .position(|d| *d == lower)
                .map(|index| Day::Weekday(index as u8))
                .ok_or_else(|| format!("{text:?} is no day: mon ... sun, workday or restday")),
        }
    }
}

impl Calendar {
    /// `offset_minutes` east of UTC; `holidays` and `workdays` as days since 1970-01-01.
    pub fn new(
        offset_minutes: i32,
        holidays: impl IntoIterator<Item = i64>,
        workdays: impl IntoIterator<Item = i64>,
    ) -> Calendar {
        Calendar {
            offset_minutes,
            holidays: holidays.into_iter().collect(),
            workdays: workdays.into_iter().collect(),
        }
    }

    fn local(&self, unix_ms: i64) -> Local {
        let minutes = unix_ms.div_euclid(60_000) + i64::from(self.offset_minutes);
        let day = minutes.div_euclid(i64::from(DAY_MINUTES));
        Local {
            day,
            minute: minutes.rem_euclid(i64::from(DAY_MINUTES)) as u16,
            // 1970-01-01 was a Thursday.
            weekday: (day + 3).rem_euclid(7) as u8,
        }
    }

    fn is_workday(&self, local: Local) -> bool {
        if self.workdays.contains(&local.day) {
            return true;
        }
        local.weekday < 5 && !self.holidays.contains(&local.day)
    }
}

impl Schedule {
    pub fn new(hours: Vec<TimeWindow>, days: Vec<Day>) -> Schedule {
        Schedule { hours, days }
    }

    /// Always applies: no hours, no days.
    pub fn is_always(&self) -> bool {
        self.hours.is_empty() && self.days.is_empty()
    }

    /// Whether the route applies at `unix_ms`.
    pub fn is_open(&self, calendar: &Calendar, unix_ms: i64) -> bool {
        let local = calendar.local(unix_ms);
        let hours = self.hours.is_empty() || self.hours.iter().any(|w| w.contains(local.minute));
        let days = self.days.is_empty()
            || self.days.iter().any(|day| match day {
                Day::Weekday(weekday) => *weekday == local.weekday,
                Day::Workday => calendar.is_workday(local),
                Day::Restday => !calendar.is_workday(local),
            });
        hours && days
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a Beijing (UTC+8) local date and time.
    fn beijing(year: i64, month: u32, day: u32, hour: i64, minute: i64) -> i64 {
        let days = crate::calendar::days_from_civil(year, month, day).unwrap();
        ((days * 24 + hour) * 60 + minute - 8 * 60) * 60_000
    }

    fn day(year: i64, month: u32, day: u32) -> i64 {
        crate::calendar::days_from_civil(year, month, day).unwrap()
    }

    fn window(text: &str) -> TimeWindow {
        TimeWindow::try_from(text.to_string()).unwrap()
    }

    #[test]
    fn dedicated_seat_hours_on_workdays_with_the_national_holiday_and_its_make_up_day() {
        // 2026-10-01 (Thursday) to 10-07 off; Saturday 10-10 worked instead.
        let calendar = Calendar::new(
            8 * 60,
            (1..=7).map(|d| day(2026, 10, d)),
            [day(2026, 10, 10)],
        );
        let seats = Schedule::new(
            vec![window("08:30-12:00"), window("13:30-17:30")],
            vec![Day::Workday],
        );
        // Wednesday 2026-09-30.
        assert!(seats.is_open(&calendar, beijing(2026, 9, 30, 8, 30)));
        assert!(seats.is_open(&calendar, beijing(2026, 9, 30, 11, 59)));
        assert!(
            !seats.is_open(&calendar, beijing(2026, 9, 30, 12, 0)),
            "lunch"
        );
        assert!(seats.is_open(&calendar, beijing(2026, 9, 30, 17, 29)));
        assert!(!seats.is_open(&calendar, beijing(2026, 9, 30, 17, 30)));
        // Thursday 10-01, a holiday; Saturday 10-10, worked.
        assert!(!seats.is_open(&calendar, beijing(2026, 10, 1, 9, 0)));
        assert!(seats.is_open(&calendar, beijing(2026, 10, 10, 9, 0)));
        // An ordinary Sunday.
        assert!(!seats.is_open(&calendar, beijing(2026, 10, 18, 9, 0)));
        let rest = Schedule::new(Vec::new(), vec![Day::Restday]);
        assert!(rest.is_open(&calendar, beijing(2026, 10, 1, 9, 0)));
        assert!(!rest.is_open(&calendar, beijing(2026, 10, 10, 9, 0)));
        // 08:30 in Beijing is 00:30 UTC: the offset counts.
        let utc = Calendar::new(0, [], []);
        assert!(!seats.is_open(&utc, beijing(2026, 9, 30, 8, 30)));
    }

    #[test]
    fn a_night_window_runs_over_midnight_and_weekdays_are_the_calendars() {
        let calendar = Calendar::new(8 * 60, [], []);
        let night = Schedule::new(vec![window("22:00-06:00")], Vec::new());
        assert!(night.is_open(&calendar, beijing(2026, 12, 4, 23, 0)));
        assert!(night.is_open(&calendar, beijing(2026, 12, 5, 5, 59)));
        assert!(!night.is_open(&calendar, beijing(2026, 12, 5, 6, 0)));
        assert!(!night.is_open(&calendar, beijing(2026, 12, 4, 21, 59)));
        // 2026-12-04 is a Friday.
        let friday = Schedule::new(Vec::new(), vec![Day::Weekday(4)]);
        assert!(friday.is_open(&calendar, beijing(2026, 12, 4, 0, 0)));
        assert!(!friday.is_open(&calendar, beijing(2026, 12, 5, 0, 0)));
        assert!(Schedule::default().is_always());
    }

    #[test]
    fn windows_and_days_are_read_or_refused_with_the_reason() {
        assert_eq!(window("8:30-24:00").to_string(), "08:30-24:00");
        for bad in [
            "0830-1730",
            "08:30",
            "25:00-26:00",
            "08:60-09:00",
            "09:00-09:00",
        ] {
            let error = TimeWindow::try_from(bad.to_string())
                .err()
                .unwrap_or_default();
            assert!(error.contains("08:30-17:30"), "{bad}: {error}");
        }
        assert_eq!(Day::try_from("Sat".to_string()), Ok(Day::Weekday(5)));
        assert_eq!(Day::try_from("workday".to_string()), Ok(Day::Workday));
        assert!(Day::try_from("weekend".to_string())
            .err()
            .is_some_and(|e| e.contains("restday")));
    }

    /// A router on a fake clock: 12345 goes to the dedicated seats in their hours, to the main
    /// pool at night and on holidays; as the clock moves, so does the route.
    #[test]
    fn the_route_follows_the_clock() {
        use crate::routing::{NumberPattern, Peer, Route, Router, TransportKind};
        use std::sync::atomic::{AtomicI64, Ordering};
        use std::sync::Arc;
        let peer = |name: &str, port: u16| {
            Peer::new(
                name,
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Some("12345".into()),
                TransportKind::Udp,
            )
        };
        let route = |to: &str, schedule: Schedule| Route {
            number: NumberPattern::Exact("12345".into()),
            peers: vec![to.into()],
            record: true,
            schedule,
            queue: None,
        };
        let now = Arc::new(AtomicI64::new(beijing(2026, 12, 4, 9, 0)));
        let clock = Arc::clone(&now);
        let router = Router::new(
            vec![peer("seats", 5080), peer("pool", 5081)],
            vec![
                route(
                    "seats",
                    Schedule::new(vec![window("08:30-17:30")], vec![Day::Workday]),
                ),
                route("pool", Schedule::default()),
            ],
        )
        .with_calendar(Calendar::new(8 * 60, [day(2026, 12, 7)], []))
        .with_clock(Arc::new(move || clock.load(Ordering::Relaxed)));
        let first = |router: &Router| {
            router
                .route("12345")
                .and_then(|peers| peers.first().map(|p| p.name.clone()))
        };
        assert_eq!(first(&router).as_deref(), Some("seats"), "Friday 09:00");
        now.store(beijing(2026, 12, 4, 18, 0), Ordering::Relaxed);
        assert_eq!(first(&router).as_deref(), Some("pool"), "Friday 18:00");
        now.store(beijing(2026, 12, 7, 9, 0), Ordering::Relaxed);
        assert_eq!(
            first(&router).as_deref(),
            Some("pool"),
            "a Monday made a holiday"
        );
        now.store(beijing(2026, 12, 8, 9, 0), Ordering::Relaxed);
        assert_eq!(first(&router).as_deref(), Some("seats"), "Tuesday 09:00");
    }
}
