//! The clock and the machine's time zone: the only place cairn asks what time it is in words.
//! The formatting itself is pure ([`cairn_core::time::rfc3339`]).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The machine's UTC offset (seconds east) at `ms`; it follows `TZ` and daylight saving time.
pub fn local_offset(ms: i64) -> i64 {
    let t = ms.div_euclid(1000) as libc::time_t;
    // SAFETY: localtime_r writes into the tm we pass; a zeroed tm is a valid initial value.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}

/// `ms` as RFC 3339 in the machine's time zone.
pub fn rfc3339_local(ms: i64) -> String {
    cairn_core::time::rfc3339(ms, local_offset(ms))
}
