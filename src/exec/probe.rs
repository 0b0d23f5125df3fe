//! Readiness and health probes: one rule for a service's readiness (`services`) and a deploy
//! region's health check (`deploy`). HTTP is ready on a 2xx answer, TCP when a connection is
//! accepted, a command when it exits 0, each within `timeout`. The caller fills placeholders
//! and runs commands its own way (a service's environment, a deploy's masked console).

use crate::model::Probe;
use std::time::Duration;

/// Check `probe` once; `Err` says what failed, naming the URL, address or command.
pub fn check(
    probe: &Probe,
    timeout: Duration,
    fill: impl Fn(&str) -> String,
    run_command: impl FnOnce(&str, Duration) -> Result<(), String>,
) -> Result<(), String> {
    match probe {
        Probe::Http(url) => {
            let url = fill(url);
            let answer = reqwest::blocking::Client::builder().timeout(timeout).build().and_then(|c| c.get(&url).send());
            match answer {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("{url} answered {}", r.status())),
                Err(e) => Err(format!("{url}: {e}")),
            }
        }
        Probe::Tcp(addr) => {
            use std::net::ToSocketAddrs;
            let addr = fill(addr);
            let target = addr.to_socket_addrs().ok().and_then(|mut a| a.next());
            match target {
                Some(a) if std::net::TcpStream::connect_timeout(&a, timeout).is_ok() => Ok(()),
                Some(_) => Err(format!("{addr} refused")),
                None => Err(format!("{addr} does not resolve")),
            }
        }
        Probe::Command(c) => {
            let c = fill(c);
            run_command(&c, timeout).map_err(|e| format!("`{c}` {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_command_probes_say_what_failed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let fill = |t: &str| t.replace("{addr}", &addr);
        let never = |_: &str, _: Duration| -> Result<(), String> { unreachable!() };
        assert_eq!(check(&Probe::Tcp("{addr}".into()), Duration::from_secs(1), fill, never), Ok(()));
        drop(l);
        let refused = check(&Probe::Tcp(addr.clone()), Duration::from_secs(1), |t| t.to_string(), never);
        assert_eq!(refused, Err(format!("{addr} refused")));
        let failed = check(
            &Probe::Command("false".into()),
            Duration::from_secs(1),
            |t| t.to_string(),
            |_, _| Err("exited with status 1".into()),
        );
        assert_eq!(failed, Err("`false` exited with status 1".into()));
    }
}
