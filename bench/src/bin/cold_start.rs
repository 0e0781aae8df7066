//! Cold start of each function binary: from exec to its first request to the Lambda Runtime API
//! (a local listener that speaks the API's first call), and the peak memory by then, against a
//! do-nothing Lambda binary built the same way, in one run.
//!
//! Usage: cold-start DIR [RUNS]   (DIR holds the release binaries; default 30 runs each)

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).cloned().unwrap_or_else(|| "target/release".into());
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(30);
    let binaries = ["hello-lambda", "grant", "revoke", "cleanup", "discovery", "webhook", "audit", "requests"];
    println!("cold start: exec -> first GET /runtime/invocation/next, {runs} runs each, median (p90), peak RSS, stripped size");
    let mut floor = None;
    for name in binaries {
        let path = format!("{dir}/{name}");
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut times = Vec::new();
        let mut peak_kb = 0;
        for _ in 0..runs {
            let (elapsed, kb) = one_start(&path);
            times.push(elapsed);
            peak_kb = peak_kb.max(kb);
        }
        times.sort();
        let median = times[times.len() / 2];
        let p90 = times[times.len() * 9 / 10];
        let floor_ms = *floor.get_or_insert(median.as_secs_f64() * 1000.0);
        println!(
            "{name:<13} {:>7.2} ms ({:>6.2})  x{:.2} of hello-lambda  peak {:>6.1} MB  size {:>5.2} MB",
            median.as_secs_f64() * 1000.0,
            p90.as_secs_f64() * 1000.0,
            median.as_secs_f64() * 1000.0 / floor_ms,
            peak_kb as f64 / 1024.0,
            size as f64 / 1_048_576.0
        );
    }
}

/// Starts the binary against a fresh listener and waits for its first Runtime API request.
fn one_start(path: &str) -> (Duration, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let api = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let mut child = Command::new(path)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut socket, _) = listener.accept().expect("first Runtime API request");
    let mut buf = [0u8; 512];
    let n = socket.read(&mut buf).unwrap_or(0);
    let elapsed = started.elapsed();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("/runtime/invocation/next"), "{path} did not ask for an invocation");
    let kb = peak_rss_kb(child.id());
    let _ = socket.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n");
    let _ = child.kill();
    let _ = child.wait();
    (elapsed, kb)
}

fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
