//! Protocol timer arithmetic, in integer microseconds.
//!
//! RFC 9568 renamed RFC 5798's `Master_Adver_Interval` and
//! `Master_Down_Interval` to `Active_Adver_Interval` and
//! `Active_Down_Interval`; this crate keeps the older names, which RFC 3768
//! (VRRPv2) and every deployed implementation use.

use core::time::Duration;

use vrrp_proto::{Interval, Priority, Version};

/// Microseconds in one second.
const SEC_US: u64 = 1_000_000;

/// `Skew_Time` for a router of `priority` that hears a Master advertising
/// every `master_interval`.
///
/// - VRRPv3 (RFC 9568 §6.1): `((256 - Priority) * Active_Adver_Interval) / 256`;
/// - VRRPv2 (RFC 3768 §6.1): `(256 - Priority) / 256` seconds, whatever the
///   interval.
///
/// Computed in microseconds and never zero: at a 1 cs interval the skew of
/// priority 255 is still 39 µs, so different priorities still expire at
/// different instants.
#[must_use]
pub fn skew_time(version: Version, priority: Priority, master_interval: Interval) -> Duration {
    let weight = 256 - u64::from(priority.get());
    let us = match version {
        Version::V2 => weight * SEC_US / 256,
        Version::V3 => weight * master_interval.as_micros() / 256,
    };
    Duration::from_micros(us.max(1))
}

/// `Master_Down_Interval` (RFC 9568: `Active_Down_Interval`):
/// `3 * Master_Adver_Interval + Skew_Time` (RFC 9568 §6.1, RFC 3768 §6.1).
#[must_use]
pub fn master_down_interval(
    version: Version,
    priority: Priority,
    master_interval: Interval,
) -> Duration {
    Duration::from_micros(3 * master_interval.as_micros())
        + skew_time(version, priority, master_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(n: u16) -> Interval {
        Interval::from_centis(n).unwrap()
    }

    #[test]
    fn v3_formulas() {
        // 1 s interval, priority 100: skew = 156/256 s = 609375 µs.
        assert_eq!(
            skew_time(Version::V3, Priority(100), cs(100)),
            Duration::from_micros(609_375)
        );
        assert_eq!(
            master_down_interval(Version::V3, Priority(100), cs(100)),
            Duration::from_micros(3_609_375)
        );
    }

    #[test]
    fn v2_skew_ignores_interval() {
        let i = Interval::from_secs(5).unwrap();
        assert_eq!(
            skew_time(Version::V2, Priority(100), i),
            Duration::from_micros(609_375)
        );
        assert_eq!(
            master_down_interval(Version::V2, Priority(100), i),
            Duration::from_micros(15_609_375)
        );
    }

    #[test]
    fn smallest_interval_still_separates_priorities() {
        let mut last = Duration::MAX;
        for p in 1..=255u8 {
            let s = skew_time(Version::V3, Priority(p), cs(1));
            assert!(s > Duration::ZERO);
            assert!(s < last, "priority {p} does not skew below {}", p - 1);
            last = s;
        }
    }
}
