//! Bounded transfers: no download may hold a build. An idle timeout, a minimum rate per
//! second, a size cap, and Ctrl-C, checked while a reader thread does the blocking reads.

use super::RemoteError;
use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

/// How a download is kept honest. A remote that stalls, trickles or lies about sizes costs
/// about a second, then a miss with reason `remote-error`, and the step runs.
#[derive(Debug, Clone, Copy)]
pub struct TransferLimits {
    /// No byte for this long: the transfer is given up (and the remote with it).
    pub idle: Duration,
    /// Fewer bytes than this per second, measured over each [`RATE_WINDOW`]: given up.
    pub min_rate: u64,
    /// No archive larger than this is fetched, whatever its envelope says.
    pub max_archive: u64,
    /// No envelope larger than this is read (a manifest of 100,000 inputs is ~15 MB).
    pub max_envelope: u64,
}

/// The window over which [`TransferLimits::min_rate`] is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

impl TransferLimits {
    /// From the environment (`CAIRN_REMOTE_MIN_RATE` bytes per second,
    /// `CAIRN_REMOTE_MAX_BYTES`), with the idle timeout the client's read timeout.
    pub fn from_env(idle: Duration) -> TransferLimits {
        let num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        TransferLimits {
            idle,
            min_rate: num("CAIRN_REMOTE_MIN_RATE", 64 << 10),
            max_archive: num("CAIRN_REMOTE_MAX_BYTES", 4 << 30),
            max_envelope: 64 << 20,
        }
    }
}

/// The minimum-rate check every download makes: bytes counted over each [`RATE_WINDOW`].
pub struct RateWindow {
    start: std::time::Instant,
    bytes: u64,
}

impl Default for RateWindow {
    /// A window starting now.
    fn default() -> RateWindow {
        RateWindow { start: std::time::Instant::now(), bytes: 0 }
    }
}

impl RateWindow {
    pub fn add(&mut self, n: u64) {
        self.bytes += n;
    }

    /// When a window has passed: its rate in bytes a second as the error if under
    /// `min_rate`, else a new window starts.
    pub fn check(&mut self, min_rate: u64) -> Result<(), f64> {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.start);
        if elapsed >= RATE_WINDOW {
            let rate = self.bytes as f64 / elapsed.as_secs_f64();
            if (rate as u64) < min_rate {
                return Err(rate);
            }
            (self.start, self.bytes) = (now, 0);
        }
        Ok(())
    }
}

/// Copy at most `max` bytes from `reader` to `sink`, giving up when the reader stalls for
/// `limits.idle`, moves fewer than `limits.min_rate` bytes a second, sends more than `max`,
/// or the run is interrupted. The reading happens on a thread of its own, so none of these
/// waits on a blocked `read`; a thread left blocked ends with the request's own timeout.
pub fn copy_bounded(
    reader: impl Read + Send + 'static,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    max: u64,
    limits: &TransferLimits,
) -> Result<u64, RemoteError> {
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<Vec<u8>>>(8);
    std::thread::spawn(move || {
        let mut reader = reader;
        loop {
            let mut buf = vec![0u8; 256 << 10];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let (mut total, mut last_byte) = (0u64, std::time::Instant::now());
    let mut window = RateWindow::default();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(chunk)) => {
                total += chunk.len() as u64;
                window.add(chunk.len() as u64);
                last_byte = std::time::Instant::now();
                if total > max {
                    return Err(RemoteError::Tampered(format!(
                        "the remote sent more than the {max} bytes it announced (or than CAIRN_REMOTE_MAX_BYTES allows)"
                    )));
                }
                sink(&chunk).map_err(|e| RemoteError::Other(format!("saving the download: {e}")))?;
            }
            Ok(Err(e)) => return Err(RemoteError::Unavailable(format!("downloading: {e}"))),
            Err(RecvTimeoutError::Disconnected) => return Ok(total),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if crate::interrupt::interrupted() {
            return Err(RemoteError::Unavailable("interrupted".into()));
        }
        if last_byte.elapsed() >= limits.idle {
            return Err(RemoteError::Unavailable(format!(
                "the download stalled: no data for {:.1}s after {total} bytes",
                limits.idle.as_secs_f64()
            )));
        }
        window.check(limits.min_rate).map_err(|rate| {
            RemoteError::Unavailable(format!(
                "the download is too slow ({rate:.0} bytes/s, under the minimum of {} bytes/s; CAIRN_REMOTE_MIN_RATE)",
                limits.min_rate
            ))
        })?;
    }
}
