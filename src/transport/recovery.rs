//! Keeping the client's session alive when the daemon goes away.
//!
//! A message that never reached a live daemon session (connection refused, 404 or a
//! "session"-400 for the session id, a closed legacy stream) is held instead of failed, and
//! the recovery task starts: it asks the manager to ensure the daemon (when there is a
//! manager), waits with backoff up to the reconnect timeout, opens a new daemon session by
//! replaying the client's cached `initialize` (under an id of mcpsm's own, so the client never
//! sees a second answer) and `notifications/initialized`, checks that the protocol version is
//! the one the client negotiated, and then resends the held messages and those that arrived
//! meanwhile (queued, bounded). A new session its own `notifications/initialized` does not find
//! (a balancer hashing the session id sent that to another replica) is made again, soon. The
//! client is told `*/list_changed` so it refreshes what it cached. Requests that were in flight
//! when the daemon died get an error with their id; answers the client gives to server requests
//! of the dead session are dropped. Sessionless (2026-07-28) clients have nothing to replay:
//! their requests just wait for the daemon.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use url::Url;

use super::{Failure, Shared, Upstream};
use crate::jsonrpc::{method, Id, Kind, Message};

/// Messages that may wait for a recovering daemon.
const QUEUE_LIMIT: usize = 1024;
/// How often one request may be held for a resend before it is failed.
const MAX_HOLDS: u8 = 3;
/// How long the replayed `initialize` may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct State {
    /// A recovery has been asked for: new messages are queued from now on.
    needed: bool,
    /// A recovery is running.
    recovering: bool,
    /// Messages that failed to reach a live session, to resend in order.
    held: Vec<Message>,
    /// Messages that arrived during the recovery.
    queued: VecDeque<Message>,
    /// Set when the daemon came back speaking another protocol version: nothing will work.
    broken: Option<String>,
    /// A `notifications/initialized` found no session: the one just made is unusable already
    /// (a balancer that hashes the session id routed it to a replica that does not know it).
    initialized_lost: bool,
}

pub(super) enum Queued {
    No(Message),
    Yes,
    Refused(Message, String),
}

impl Shared {
    /// Holds `message` for a resend after recovery; `Err` when it must fail instead, with
    /// the reason recovery cannot help when there is one.
    pub(super) fn hold(&self, message: &Message) -> Result<(), Option<String>> {
        if self.options.reconnect_timeout.is_none()
            || message.kind() == Kind::Response
            || self.is_internal(message.id())
        {
            return Err(None);
        }
        if let Some(why) = &Self::lock(&self.recovery).broken {
            return Err(Some(why.clone()));
        }
        if message.method() == Some(method::INITIALIZED) {
            // Never resent: every recovery replays the client's own after its `initialize`.
            let mut state = Self::lock(&self.recovery);
            state.initialized_lost = true;
            state.needed = true;
            drop(state);
            self.wake_recovery.notify_one();
            return Ok(());
        }
        if let (Kind::Request, Some(id)) = (message.kind(), message.id()) {
            let mut pending = self.pending();
            match pending.get_mut(id) {
                Some(p) if p.holds < MAX_HOLDS => {
                    p.holds += 1;
                    p.parked = true;
                }
                _ => return Err(None),
            }
        }
        {
            let mut state = Self::lock(&self.recovery);
            debug!(
                method = message.method().unwrap_or("?"),
                "held until the daemon is back"
            );
            state.held.push(message.clone());
            state.needed = true;
        }
        self.wake_recovery.notify_one();
        Ok(())
    }

    /// Asks for a recovery without a message to resend (a stream noticed the daemon is gone).
    pub(super) fn trigger_recovery(&self) {
        if self.options.reconnect_timeout.is_none() || !self.established.load(Ordering::Acquire) {
            return;
        }
        Self::lock(&self.recovery).needed = true;
        self.wake_recovery.notify_one();
    }

    pub(super) fn queue_if_recovering(&self, message: Message) -> Queued {
        let mut state = Self::lock(&self.recovery);
        if let Some(why) = &state.broken {
            return Queued::Refused(message, why.clone());
        }
        // Once a recovery is asked for, a message sent now would meet the lost session too.
        if !state.recovering && !state.needed {
            return Queued::No(message);
        }
        if state.queued.len() >= QUEUE_LIMIT {
            return Queued::Refused(
                message,
                format!("{QUEUE_LIMIT} messages are already waiting for the daemon to come back"),
            );
        }
        if let Some(id) = message.id().filter(|_| message.is_request()) {
            if let Some(p) = self.pending().get_mut(id) {
                p.parked = true;
            }
        }
        state.queued.push_back(message);
        Queued::Yes
    }

    /// False for the client's answer to a server request of a daemon session that is gone.
    pub(super) fn answers_current_session(&self, response: &Message) -> bool {
        let Some(id) = response.id() else {
            return true;
        };
        let asked_in = Self::lock(&self.server_requests).remove(id);
        match asked_in {
            Some(generation) if generation < self.generation.load(Ordering::Acquire) => {
                debug!(%id, "dropping the client's answer to a request of a daemon session that is gone");
                false
            }
            _ => true,
        }
    }

    fn unpark(&self, message: &Message) {
        if let Some(id) = message.id().filter(|_| message.is_request()) {
            if let Some(p) = self.pending().get_mut(id) {
                p.parked = false;
            }
        }
    }

    /// Registers mcpsm's own request `id`; its answer goes to the returned receiver.
    fn expect_internal(&self, id: &Id) -> oneshot::Receiver<Message> {
        let (tx, rx) = oneshot::channel();
        Self::lock(&self.internal).insert(id.clone(), tx);
        self.internal_count.fetch_add(1, Ordering::AcqRel);
        rx
    }

    fn forget_internal(&self, id: &Id) {
        if Self::lock(&self.internal).remove(id).is_some() {
            self.internal_count.fetch_sub(1, Ordering::AcqRel);
        }
        self.pending().remove(id);
    }
}

/// The recovery task: one recovery at a time, whenever one is needed.
pub(super) async fn run(upstream: Weak<Upstream>, shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = shared.wake_recovery.notified() => {}
            () = shared.shutdown.cancelled() => return,
        }
        {
            let mut state = Shared::lock(&shared.recovery);
            if !state.needed || state.recovering {
                continue;
            }
            state.needed = false;
            state.recovering = true;
        }
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        upstream.recover().await;
    }
}

enum Attempt {
    /// Try again after a pause, longer each time.
    Retry(String),
    /// The daemon answered but its new session was routed away: try again after a short
    /// pause (a balancer hashing the session id lands it right 1 time in N).
    Misrouted(String),
    /// Give up: nothing will work with this daemon.
    Fatal(String),
}

impl Upstream {
    async fn recover(self: &Arc<Self>) {
        let shared = &self.shared;
        let limit = shared.options.reconnect_timeout.unwrap_or_default();
        let label = shared.options.label.clone();
        info!("{label} went away; reconnecting (for at most {limit:?})");
        let started = Instant::now();
        let mut pause = PAUSE_MIN;
        let outcome = loop {
            let attempt = match &shared.hooks.ensure {
                Some(ensure) => match ensure().await {
                    Ok(()) => self.reestablish().await,
                    Err(why) => Err(Attempt::Retry(why)),
                },
                None => self.reestablish().await,
            };
            let (why, backoff) = match attempt {
                Ok(()) => break Ok(()),
                Err(Attempt::Fatal(why)) => break Err((why, true)),
                Err(Attempt::Retry(why)) => (why, true),
                Err(Attempt::Misrouted(why)) => (why, false),
            };
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                break Err((
                    format!("it did not come back within {limit:?}; last: {why}"),
                    false,
                ));
            }
            debug!("{label} not back yet: {why}");
            let wait = if backoff { pause } else { PAUSE_MIN };
            tokio::select! {
                () = tokio::time::sleep(wait.min(left)) => {}
                () = shared.shutdown.cancelled() => return,
            }
            if backoff {
                pause = (pause * 2).min(PAUSE_MAX);
            }
        };
        let messages: Vec<Message> = {
            let mut state = Shared::lock(&shared.recovery);
            state.recovering = false;
            state.needed = false;
            if let Err((why, true)) = &outcome {
                state.broken = Some(why.clone());
            }
            let mut messages = std::mem::take(&mut state.held);
            messages.extend(state.queued.drain(..));
            messages
        };
        match outcome {
            Ok(()) => {
                shared.generation.fetch_add(1, Ordering::AcqRel);
                info!(
                    "{label} is back after {:?}; resending {} messages",
                    started.elapsed(),
                    messages.len()
                );
                let notifications = Shared::lock(&shared.session).list_changed.clone();
                for method in notifications {
                    let text = format!(r#"{{"jsonrpc":"2.0","method":"{method}"}}"#);
                    let _ = shared.out.send(Bytes::from(text)).await;
                }
                if let Some(recovered) = &shared.hooks.recovered {
                    recovered();
                }
                for message in messages {
                    shared.unpark(&message);
                    self.dispatch(message).await;
                }
            }
            Err((why, _)) => {
                warn!("{label}: {why}");
                let failure = Failure::Recovery(why);
                for message in messages {
                    shared.unpark(&message);
                    shared.report(&message, &failure).await;
                }
            }
        }
    }

    /// One attempt at a new daemon session that continues the client's.
    async fn reestablish(self: &Arc<Self>) -> Result<(), Attempt> {
        let shared = &self.shared;
        if let Some(mode) = self.mode.get() {
            mode.reset().await;
        }
        let replayable = {
            let session = Shared::lock(&shared.session);
            session.established.then(|| {
                (
                    session.initialize.clone(),
                    session.initialized.clone(),
                    session.protocol_version.clone(),
                )
            })
        };
        let Some((initialize, initialized, version)) = replayable else {
            // Nothing to replay (no session yet, or a sessionless client): the daemon just has
            // to take connections again.
            return reachable(&shared.options.url).await.map_err(Attempt::Retry);
        };
        let generation = shared.generation.load(Ordering::Acquire);
        let id = Id::from_json(&format!("\"mcpsm-recovery-{generation}\""));
        let Some(replay) = initialize.and_then(|init| init.with_id(&id)) else {
            return Ok(());
        };
        let answer = shared.expect_internal(&id);
        shared.track(&replay);
        self.dispatch(replay).await;
        let response = match tokio::time::timeout(REPLAY_TIMEOUT, answer).await {
            Ok(Ok(response)) => response,
            _ => {
                shared.forget_internal(&id);
                return Err(Attempt::Retry(
                    "no answer to the replayed initialize".to_owned(),
                ));
            }
        };
        let Some(negotiated) = response.initialize_protocol_version() else {
            let value: serde_json::Value =
                serde_json::from_slice(response.bytes()).unwrap_or_default();
            let why = value["error"]["message"]
                .as_str()
                .unwrap_or("an error")
                .to_owned();
            return Err(Attempt::Retry(
                why.split(". hint: ").next().unwrap_or(&why).to_owned(),
            ));
        };
        if Some(&negotiated) != version.as_ref() {
            return Err(Attempt::Fatal(format!(
                "it came back speaking MCP protocol {negotiated}, but this session negotiated {}; restart the MCP session in your client",
                version.as_deref().unwrap_or("?")
            )));
        }
        if let Some(initialized) = initialized {
            Shared::lock(&shared.recovery).initialized_lost = false;
            self.dispatch(initialized).await;
            if std::mem::take(&mut Shared::lock(&shared.recovery).initialized_lost) {
                // Resending now would meet the same 404: make another session instead.
                return Err(Attempt::Misrouted(
                    "the new session was unknown to its next request (HTTP 404; a load balancer routing it to another replica?)".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// Whether the URL's host and port accept a TCP connection.
async fn reachable(url: &Url) -> Result<(), String> {
    let host = url
        .host_str()
        .unwrap_or("127.0.0.1")
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    match tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{host}:{port}: {e}")),
        Err(_) => Err(format!("{host}:{port}: connection timed out")),
    }
}

/// The `*/list_changed` notifications a recovered client should get: tools always, prompts
/// and resources when the server declared `listChanged` for them.
pub(super) fn list_changed_notifications(initialize_result: &Message) -> Vec<&'static str> {
    let value: serde_json::Value =
        serde_json::from_slice(initialize_result.bytes()).unwrap_or_default();
    let capabilities = &value["result"]["capabilities"];
    let mut methods = vec!["notifications/tools/list_changed"];
    if capabilities["prompts"]["listChanged"] == true {
        methods.push("notifications/prompts/list_changed");
    }
    if capabilities["resources"]["listChanged"] == true {
        methods.push("notifications/resources/list_changed");
    }
    methods
}
