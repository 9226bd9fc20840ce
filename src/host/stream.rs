//! Resumable SSE streams for the host's stateful sessions (2025-03-26 to 2025-11-25).
//!
//! Every event of a request's answer stream carries an id (`STREAM-SEQ`) and is kept (a
//! bounded number per stream) until the answer is complete, whether or not the client's
//! connection is still there. A client whose stream broke resumes with a GET carrying
//! `Last-Event-ID`: it gets the events after that one, then the rest of the stream as it
//! comes. Sessions of 2025-11-25 also get a priming event first (an id and empty data) with a
//! `retry` hint, as that revision asks, so a client can resume even before the first message.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Events queued for a connection before it counts as not reading.
const LIVE_BUFFER: usize = 256;
/// Events kept per stream for a resumption.
const KEPT_EVENTS: usize = 256;
/// Finished streams kept per session for a late resumption.
const KEPT_STREAMS: usize = 32;
/// How long a client waits before it resumes a closed stream (the SSE `retry` field).
pub const RETRY_MS: u64 = 1000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One SSE event: `id` and one `data` line (the message is on one line already).
pub fn event(id: Option<&str>, data: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(data.len() + 48);
    if let Some(id) = id {
        event.extend_from_slice(b"id: ");
        event.extend_from_slice(id.as_bytes());
        event.push(b'\n');
    }
    event.extend_from_slice(b"event: message\ndata: ");
    event.extend_from_slice(data);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// The priming event: an id, a retry hint and empty data.
fn priming(id: &str) -> Bytes {
    Bytes::from(format!("id: {id}\nretry: {RETRY_MS}\ndata: \n\n"))
}

struct Stream {
    /// Events after the priming one: (sequence number, event bytes).
    kept: VecDeque<(u64, Bytes)>,
    /// The client's connection, while it is there.
    live: Option<mpsc::Sender<Bytes>>,
    done: bool,
}

/// A session's answer streams, by number.
#[derive(Default)]
pub struct Streams {
    next: AtomicU64,
    streams: Mutex<HashMap<u64, Arc<Mutex<Stream>>>>,
    finished: Mutex<VecDeque<u64>>,
}

impl Streams {
    /// Starts a stream fed by `messages`; returns the client's side (already primed when
    /// `prime`). Events go on being kept when the client goes away.
    pub fn open(
        self: &Arc<Self>,
        mut messages: mpsc::Receiver<Bytes>,
        prime: bool,
    ) -> mpsc::Receiver<Bytes> {
        let number = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (live, body) = mpsc::channel::<Bytes>(LIVE_BUFFER);
        if prime {
            let _ = live.try_send(priming(&format!("{number}-0")));
        }
        let stream = Arc::new(Mutex::new(Stream {
            kept: VecDeque::new(),
            live: Some(live),
            done: false,
        }));
        lock(&self.streams).insert(number, stream.clone());
        let streams = self.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while let Some(message) = messages.recv().await {
                seq += 1;
                let bytes = event(Some(&format!("{number}-{seq}")), &message);
                let live = {
                    let mut stream = lock(&stream);
                    stream.kept.push_back((seq, bytes.clone()));
                    if stream.kept.len() > KEPT_EVENTS {
                        stream.kept.pop_front();
                    }
                    stream.live.clone()
                };
                if let Some(live) = live {
                    if live.try_send(bytes).is_err() {
                        // Gone, or reading nothing (its buffer is full): the client resumes
                        // from the kept events. Unless a resumption has put another
                        // connection there meanwhile.
                        let mut stream = lock(&stream);
                        if stream.live.as_ref().is_some_and(|l| l.same_channel(&live)) {
                            stream.live = None;
                        }
                    }
                }
            }
            {
                let mut stream = lock(&stream);
                stream.done = true;
                stream.live = None;
            }
            streams.finish(number);
        });
        body
    }

    fn finish(&self, number: u64) {
        let mut finished = lock(&self.finished);
        finished.push_back(number);
        while finished.len() > KEPT_STREAMS {
            if let Some(old) = finished.pop_front() {
                lock(&self.streams).remove(&old);
            }
        }
    }

    /// A resumption after event `last` (`STREAM-SEQ`): the events after it, then the rest of
    /// the stream. `None` when mcpsm knows no such stream.
    pub fn resume(&self, last: &str) -> Option<mpsc::Receiver<Bytes>> {
        let (number, seq) = last.split_once('-')?;
        let (number, seq): (u64, u64) = (number.parse().ok()?, seq.parse().ok()?);
        let stream = lock(&self.streams).get(&number)?.clone();
        let mut stream = lock(&stream);
        let missed: Vec<Bytes> = stream
            .kept
            .iter()
            .filter(|(s, _)| *s > seq)
            .map(|(_, e)| e.clone())
            .collect();
        let (live, body) = mpsc::channel::<Bytes>(missed.len() + LIVE_BUFFER);
        for event in missed {
            let _ = live.try_send(event);
        }
        if !stream.done {
            stream.live = Some(live);
        }
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(rx: &mut mpsc::Receiver<Bytes>) -> String {
        String::from_utf8_lossy(&rx.recv().await.expect("an event")).into_owned()
    }

    #[tokio::test]
    async fn a_broken_stream_resumes_after_the_last_event_seen() {
        let streams = Arc::new(Streams::default());
        let (tx, rx) = mpsc::channel(8);
        let mut body = streams.open(rx, true);
        assert!(next(&mut body)
            .await
            .starts_with("id: 1-0\nretry: 1000\ndata: \n"));
        tx.send(Bytes::from_static(b"{\"a\":1}"))
            .await
            .expect("send");
        assert!(next(&mut body).await.starts_with("id: 1-1\n"));
        drop(body);
        tx.send(Bytes::from_static(b"{\"a\":2}"))
            .await
            .expect("send");
        tx.send(Bytes::from_static(b"{\"a\":3}"))
            .await
            .expect("send");
        tokio::task::yield_now().await;
        let mut resumed = None;
        for _ in 0..100 {
            resumed = streams.resume("1-1");
            if resumed.is_some() {
                break;
            }
        }
        let mut resumed = resumed.expect("a known stream");
        let first = next(&mut resumed).await;
        assert!(first.contains("{\"a\":2}"), "{first}");
        assert!(next(&mut resumed).await.contains("{\"a\":3}"));
        tx.send(Bytes::from_static(b"{\"a\":4}"))
            .await
            .expect("send");
        assert!(next(&mut resumed).await.contains("{\"a\":4}"));
        drop(tx);
        assert!(
            resumed.recv().await.is_none(),
            "the stream ends with its messages"
        );
        assert!(streams.resume("9-1").is_none());
    }
}
