//! A WASI p2 context that gives the guest nothing.
//!
//! Ordinary toolchains (Rust `wasm32-wasip2`, componentize-py, jco) import
//! the whole of WASI p2 even for code that never touches a file, so every
//! interface is linked, but the context behind it is empty:
//!
//! - no arguments, no environment, no preopened directory: `wasi:filesystem`
//!   has nothing to open, so every path fails;
//! - sockets: TCP, UDP and name lookup disabled and every address denied, so
//!   no byte leaves the host;
//! - stdin is closed; stdout and stderr go into the job's bounded
//!   [`GuestLog`], which only administrators read (a submitter who could read
//!   stdout would have a channel for row values);
//! - the wall clock is frozen at the job's logical time and the monotonic
//!   clock is a counter that advances one microsecond per reading, so the
//!   guest can measure neither real time nor the duration of host work (a
//!   timing side channel on data);
//! - both random generators are ChaCha seeded from the job id: a rerun of the
//!   same job sees the same numbers, which makes results reproducible and
//!   denies the guest any entropy the host did not choose.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::pipe::ClosedInputStream;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// Build the locked-down context for one job.
pub fn locked_down_context(job_id: &str, logical_time: Duration, log: &GuestLog) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdin(ClosedInputStream)
        .stdout(log.stream("stdout"))
        .stderr(log.stream("stderr"))
        .wall_clock(FrozenWallClock(logical_time))
        .monotonic_clock(CountingMonotonicClock::default())
        .secure_random(StdRng::from_seed(seed(job_id, "secure")))
        .insecure_random(StdRng::from_seed(seed(job_id, "insecure")))
        .insecure_random_seed(u128::from_le_bytes(
            seed(job_id, "insecure-seed")[..16]
                .try_into()
                .expect("16 bytes"),
        ))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    builder.build()
}

fn seed(job_id: &str, purpose: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"datasandbox/wasi-random/")
        .chain_update(purpose.as_bytes())
        .chain_update([0])
        .chain_update(job_id.as_bytes())
        .finalize()
        .into()
}

/// `wasi:clocks/wall-clock` frozen at the job's logical time.
struct FrozenWallClock(Duration);

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// `wasi:clocks/monotonic-clock` as a counter: each reading is one
/// microsecond after the last, whatever the real time.
#[derive(Default)]
struct CountingMonotonicClock(AtomicU64);

impl HostMonotonicClock for CountingMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed) + 1_000
    }
}

/// The job's diagnostic log: guest `log` lines, stdout and stderr, in order,
/// up to a byte limit; what does not fit is dropped and flagged. Writing
/// never fails, so a chatty guest cannot make its own job fail (or tell
/// whether the log is full).
#[derive(Clone)]
pub struct GuestLog(Arc<Mutex<LogBuffer>>);

struct LogBuffer {
    text: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl GuestLog {
    pub fn new(limit: usize) -> Self {
        GuestLog(Arc::new(Mutex::new(LogBuffer {
            text: Vec::new(),
            limit,
            truncated: false,
        })))
    }

    /// Append raw bytes.
    pub fn append(&self, bytes: &[u8]) {
        let mut buffer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = buffer.limit.saturating_sub(buffer.text.len());
        if bytes.len() > room {
            buffer.truncated = true;
        }
        let take = bytes.len().min(room);
        buffer.text.extend_from_slice(&bytes[..take]);
    }

    /// Append one line from `source` (`log`, `stdout`, `stderr`).
    pub fn line(&self, source: &str, message: &str) {
        self.append(format!("[{source}] {message}\n").as_bytes());
    }

    /// The text so far (lossy UTF-8) and whether anything was cut.
    pub fn contents(&self) -> (String, bool) {
        let buffer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (
            String::from_utf8_lossy(&buffer.text).into_owned(),
            buffer.truncated,
        )
    }

    fn stream(&self, source: &'static str) -> LogStream {
        LogStream {
            log: self.clone(),
            source,
        }
    }
}

/// stdout or stderr into the [`GuestLog`].
#[derive(Clone)]
struct LogStream {
    log: GuestLog,
    source: &'static str,
}

impl LogStream {
    fn write_bytes(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines().filter(|l| !l.is_empty()) {
            self.log.line(self.source, line);
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_bounded_and_flags_truncation() {
        let log = GuestLog::new(16);
        log.line("log", "short");
        assert_eq!(log.contents(), ("[log] short\n".to_string(), false));
        log.line("log", "this line does not fit");
        let (text, truncated) = log.contents();
        assert_eq!(text.len(), 16);
        assert!(truncated);
    }

    #[test]
    fn seeds_differ_by_job_and_purpose_and_repeat_for_the_same_job() {
        assert_eq!(seed("job-1", "secure"), seed("job-1", "secure"));
        assert_ne!(seed("job-1", "secure"), seed("job-2", "secure"));
        assert_ne!(seed("job-1", "secure"), seed("job-1", "insecure"));
    }

    #[test]
    fn monotonic_clock_counts_instead_of_telling_time() {
        let clock = CountingMonotonicClock::default();
        assert_eq!(clock.now(), 1_000);
        assert_eq!(clock.now(), 2_000);
    }
}
