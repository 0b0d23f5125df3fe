//! Times as people read them: RFC 3339 with an offset the caller supplies.

/// `2026-12-01T21:13:30+09:00` for `ms` milliseconds since the epoch, at `offset_s` seconds
/// east of UTC (`Z` for UTC).
pub fn rfc3339(ms: i64, offset_s: i64) -> String {
    let local = ms.div_euclid(1000) + offset_s;
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let zone = if offset_s == 0 {
        "Z".to_string()
    } else {
        let a = offset_s.abs();
        format!("{}{:02}:{:02}", if offset_s < 0 { '-' } else { '+' }, a / 3600, (a % 3600) / 60)
    };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{zone}", secs / 3600, (secs % 3600) / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_in_a_zone() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_737_600_000, 9 * 3600), "2026-11-27T09:00:00+09:00");
        assert_eq!(rfc3339(1_795_737_600_000, -(5 * 3600 + 30 * 60)), "2026-11-26T18:30:00-05:30");
        assert_eq!(rfc3339(951_782_400_000, 0), "2000-02-29T00:00:00Z");
    }
}
