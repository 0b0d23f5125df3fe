//! Load generator for remote caches speaking the Turborepo API v8: CLIENTS concurrent clients,
//! each storing fresh 1 MiB artifacts and fetching them back. Prints one JSON line with the
//! throughput and latency percentiles. Driven by `benches/remote.sh`, which runs `cairn serve`
//! and `turborepo-remote-cache` side by side.
//!
//! Usage: cargo bench --bench remote_load -- URL TOKEN [CLIENTS] [ROUNDS] [LABEL]

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.len() < 2 {
        eprintln!("usage: remote_load URL TOKEN [CLIENTS] [ROUNDS] [LABEL]");
        std::process::exit(2);
    }
    let url = args[0].trim_end_matches('/').to_string();
    let token = args[1].clone();
    let clients: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let label = args.get(4).cloned().unwrap_or_else(|| "server".into());
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, Vec<Duration>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (url, token) = (url.clone(), token.clone());
                s.spawn(move || {
                    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
                    let (mut puts, mut gets, mut errors) = (Vec::new(), Vec::new(), 0);
                    for r in 0..rounds {
                        // Deterministic, incompressible-enough content per artifact.
                        let mut body = vec![0u8; 1 << 20];
                        let mut x: u64 = (c as u64) << 32 | r as u64 | 1;
                        for b in body.iter_mut() {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            *b = x as u8;
                        }
                        let hash = format!("b{run_id:x}c{c}r{r}");
                        let art = format!("{url}/v8/artifacts/{hash}?slug=bench");
                        let t = Instant::now();
                        let ok = http
                            .put(&art)
                            .bearer_auth(&token)
                            .header("content-type", "application/octet-stream")
                            .header("x-artifact-duration", "100")
                            .body(body)
                            .send()
                            .map(|r| r.status().is_success())
                            .unwrap_or(false);
                        puts.push(t.elapsed());
                        if !ok {
                            errors += 1;
                            continue;
                        }
                        let t = Instant::now();
                        let got = http
                            .get(&art)
                            .bearer_auth(&token)
                            .send()
                            .and_then(|r| r.bytes())
                            .map(|b| b.len())
                            .unwrap_or(0);
                        gets.push(t.elapsed());
                        if got != 1 << 20 {
                            errors += 1;
                        }
                    }
                    (puts, gets, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = started.elapsed();
    let mut puts: Vec<Duration> = results.iter().flat_map(|r| r.0.clone()).collect();
    let mut gets: Vec<Duration> = results.iter().flat_map(|r| r.1.clone()).collect();
    let errors: usize = results.iter().map(|r| r.2).sum();
    puts.sort();
    gets.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1)).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
    };
    let mib = (puts.len() + gets.len()) as f64;
    println!(
        "{{\"label\":\"{label}\",\"clients\":{clients},\"requests\":{},\"errors\":{errors},\"wall_s\":{:.3},\"mib_per_s\":{:.1},\"put_p50_ms\":{:.1},\"put_p99_ms\":{:.1},\"get_p50_ms\":{:.1},\"get_p99_ms\":{:.1}}}",
        puts.len() + gets.len(),
        wall.as_secs_f64(),
        mib / wall.as_secs_f64(),
        pct(&puts, 0.5),
        pct(&puts, 0.99),
        pct(&gets, 0.5),
        pct(&gets, 0.99)
    );
}
