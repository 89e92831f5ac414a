//! Bounded capture of a guest's stdout and stderr.
//!
//! wasmtime-wasi's `MemoryOutputPipe` fails the guest's write once it is full,
//! which turns a chatty but correct task into a trap. A task's logs must never
//! change its outcome, so this pipe keeps the first `capacity` bytes, counts
//! the rest, and always reports success to the guest.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Clone)]
pub struct CapturePipe {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    data: Vec<u8>,
    capacity: usize,
    dropped: u64,
}

impl CapturePipe {
    pub fn new(capacity: usize) -> Self {
        CapturePipe {
            inner: Arc::new(Mutex::new(Captured {
                capacity,
                ..Captured::default()
            })),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut c = self.inner.lock().unwrap();
        let room = c.capacity.saturating_sub(c.data.len());
        let keep = room.min(bytes.len());
        c.data.extend_from_slice(&bytes[..keep]);
        c.dropped += (bytes.len() - keep) as u64;
    }

    /// The captured text, storable (invalid UTF-8 and NUL replaced) and at
    /// most `capacity` bytes, with a marker when bytes were dropped.
    pub fn text(&self) -> String {
        let c = self.inner.lock().unwrap();
        // Replacements make the text longer than the bytes kept (NUL and an
        // invalid byte become 3 bytes each): cut again to the capacity.
        let mut s = crate::text::storable_bytes(&c.data, c.capacity);
        if c.dropped > 0 {
            s.push_str(&format!("\n[wasmq: {} more bytes dropped]", c.dropped));
        }
        s
    }
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturePipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept a full buffer's worth: excess is counted, not refused.
        Ok(64 * 1024)
    }
}

impl AsyncWrite for CapturePipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
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
    fn keeps_the_head_and_counts_the_rest() {
        let mut p = CapturePipe::new(4);
        p.write(Bytes::from_static(b"abc")).unwrap();
        p.write(Bytes::from_static(b"defg")).unwrap();
        assert_eq!(p.text(), "abcd\n[wasmq: 3 more bytes dropped]");
    }

    #[test]
    fn text_is_storable_and_within_the_capacity() {
        let mut p = CapturePipe::new(1000);
        p.write(Bytes::from(vec![0u8; 1000])).unwrap();
        p.write(Bytes::from_static(b"\0\xff")).unwrap();
        let text = p.text();
        assert!(!text.contains('\0'), "{text:?}");
        let (kept, marker) = text.split_once('\n').unwrap();
        assert!(kept.len() <= 1000, "{}", kept.len());
        assert!(kept.starts_with(crate::text::NUL_REPLACEMENT));
        assert!(kept.ends_with(crate::text::TRUNCATION_MARK));
        assert_eq!(marker, "[wasmq: 2 more bytes dropped]");

        let mut p = CapturePipe::new(100);
        p.write(Bytes::from_static(b"ok \xff\0")).unwrap();
        assert_eq!(p.text(), "ok \u{fffd}\u{2400}");
    }
}
