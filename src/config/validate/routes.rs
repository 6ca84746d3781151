//! The checks of `[[route]]`s and `[routing]`: peers, interfaces, queues, schedules.

use super::*;

impl Config {
    /// Each route's number (another route for it only after one with hours or days), its
    /// queue and overflow, and the peers it names (on one interface).
    pub(super) fn check_routes(
        &self,
        invalid: Invalid,
        names: &HashSet<&str>,
    ) -> Result<(), ConfigError> {
        self.check_routing(invalid)?;
        // Numbers whose routes so far all have hours or days: another may follow.
        let mut numbers = HashSet::new();
        let mut always = HashSet::new();
        for (index, route) in self.routes.iter().enumerate() {
            let number = route.number.text();
            if always.contains(number) {
                return Err(invalid(
                    format!("route[{index}].number"),
                    format!(
                        "duplicate route for {number:?}: an earlier one applies at all times, so this one never would (give the earlier one hours or days)"
                    ),
                ));
            }
            if route
                .queue_secs
                .is_some_and(|secs| !(1..=3600).contains(&secs))
            {
                return Err(invalid(
                    format!("route[{index}].queue_secs"),
                    "must be 1 to 3600".into(),
                ));
            }
            if route.queue_max == Some(0) {
                return Err(invalid(
                    format!("route[{index}].queue_max"),
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
            if route.queue_max.is_some() && route.queue_secs.is_none() {
                return Err(invalid(
                    format!("route[{index}].queue_max"),
                    "needs queue_secs: it bounds the route's queue".into(),
                ));
            }
            if !route.overflow.is_empty() && route.queue_secs.is_none() {
                return Err(invalid(
                    format!("route[{index}].overflow"),
                    "needs queue_secs: a call overflows once its wait is over".into(),
                ));
            }
            for (peer_index, name) in route.overflow.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    return Err(invalid(
                        format!("route[{index}].overflow[{peer_index}]"),
                        format!("no [[peer]] is named {name:?}"),
                    ));
                }
                // The call's leg toward the route has its media address on the route's
                // interface: an overflow peer must reach it too.
                let first = route.peers.first().map(|p| self.peer_interface(p));
                if first.is_some_and(|first| first != self.peer_interface(name)) {
                    return Err(invalid(
                        format!("route[{index}].overflow[{peer_index}]"),
                        format!("peer {name:?} is on another interface than the route's peers: a route's peers and overflow share one interface"),
                    ));
                }
            }
            if !(1..=60).contains(&route.queue_retry_secs) {
                return Err(invalid(
                    format!("route[{index}].queue_retry_secs"),
                    "must be 1 to 60".into(),
                ));
            }
            numbers.insert(number);
            if route.hours.is_empty() && route.days.is_empty() {
                always.insert(number);
            }
            if route.peers.is_empty() {
                return Err(invalid(
                    format!("route[{index}].peers"),
                    "must name at least one peer".into(),
                ));
            }
            for (peer_index, name) in route.peers.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    return Err(invalid(
                        format!("route[{index}].peers[{peer_index}]"),
                        format!("no [[peer]] is named {name:?}"),
                    ));
                }
                // The call's leg toward the route is offered one media address before the
                // route's first peer answers: every peer it may fail over to must reach it.
                let (first, this) = (
                    self.peer_interface(&route.peers[0]),
                    self.peer_interface(name),
                );
                if first != this {
                    return Err(invalid(
                        format!("route[{index}].peers[{peer_index}]"),
                        format!(
                            "peer {name:?} is on interface {this:?}, the route's first peer on {first:?}: a route's peers share one interface"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks `[routing]`: the offset and the dates read.
    fn check_routing(&self, invalid: Invalid) -> Result<(), ConfigError> {
        let routing = &self.routing;
        if convert::utc_offset_minutes(&routing.utc_offset).is_none() {
            return Err(invalid(
                "routing.utc_offset".into(),
                format!("{:?} is not an offset like \"+08:00\"", routing.utc_offset),
            ));
        }
        for (key, dates) in [
            ("routing.holidays", &routing.holidays),
            ("routing.workdays", &routing.workdays),
        ] {
            if let Some(date) = dates.iter().find(|date| convert::date_days(date).is_none()) {
                return Err(invalid(
                    key.into(),
                    format!("{date:?} is not a date like \"2026-10-01\""),
                ));
            }
        }
        Ok(())
    }
}
