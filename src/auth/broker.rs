//! One owner per registry daemon's authorization: the manager.
//!
//! The manager keeps one [`OAuth`] per daemon with `auth = "oauth"` ([`Broker`]) and answers
//! its proxies over its authenticated loopback API (`POST /oauth`, [`BrokerRequest`] →
//! [`BrokerAnswer`]). A proxy ([`Managed`], its [`Authorizer`]) keeps the token it got in
//! memory and asks again only when it is about to expire or the server refused it; it names
//! the token it sent by its [`digest`], never the token itself. The manager answers each
//! refusal once for all: a newer token is handed out at once, and everything else (refresh,
//! step-up, a new authorization) runs as one job per daemon that every caller joins.
//!
//! A login waits for a person, so calls are long polls: while a login is under way the
//! manager answers `pending` (with the authorization URL, which the proxy shows on stderr
//! once, since the detached manager has no terminal) and the proxy asks again, until the
//! login timeout.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use url::Url;

use super::{now, OAuth, Settings, REFRESH_MARGIN};
use crate::config::OAuthSpec;
use crate::transport::{AuthFuture, Authorizer};

/// How long one long poll waits before it answers `pending`.
const POLL: Duration = Duration::from_secs(20);
/// After a failed refresh before expiry: how long a proxy uses its token before asking again.
const ASK_BACKOFF: Duration = Duration::from_secs(30);

/// What a proxy (or `mcpsm login`/`logout`) asks the manager about daemon `name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerRequest {
    pub name: String,
    /// `token`, `refused`, `login` or `logout`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The server's `WWW-Authenticate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    /// The [`digest`] of the `Authorization` header the refused request carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
    /// The caller showed the authorization URL already: do not answer `pending` for it.
    #[serde(default)]
    pub seen_url: bool,
}

/// The manager's answer.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum BrokerAnswer {
    /// The header to send, and when its token should be renewed.
    Ready {
        authorization: String,
        expires_at: Option<u64>,
    },
    /// No tokens, and no login under way.
    None,
    /// A login is under way at `url` (`opened`: a browser or opener was started for it).
    Pending {
        url: Option<String>,
        opened: bool,
    },
    Failed {
        error: String,
    },
    LoggedOut {
        forgot: bool,
    },
}

impl std::fmt::Debug for BrokerAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerAnswer::Ready { expires_at, .. } => write!(f, "Ready(…, {expires_at:?})"),
            BrokerAnswer::None => f.write_str("None"),
            BrokerAnswer::Pending { url, .. } => write!(f, "Pending({url:?})"),
            BrokerAnswer::Failed { error } => write!(f, "Failed({error})"),
            BrokerAnswer::LoggedOut { forgot } => write!(f, "LoggedOut({forgot})"),
        }
    }
}

/// Names a header without showing it: the first 16 bytes of its SHA-256, in hex.
pub fn digest(header: &HeaderValue) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, header.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

type Job = Shared<BoxFuture<'static, Result<(), String>>>;

/// One daemon's authorization in the manager.
struct Authority {
    url: Url,
    spec: OAuthSpec,
    oauth: Arc<OAuth>,
    /// The refresh, step-up or authorization under way; every caller joins it.
    job: Mutex<Option<Job>>,
}

impl Authority {
    fn ready(&self) -> BrokerAnswer {
        match self.oauth.current_header() {
            Some((header, expires_at)) => BrokerAnswer::Ready {
                authorization: header.to_str().unwrap_or_default().to_owned(),
                expires_at,
            },
            None => BrokerAnswer::None,
        }
    }

    fn running(&self) -> Option<Job> {
        let job = self.job.lock().unwrap_or_else(|e| e.into_inner());
        job.clone().filter(|j| j.peek().is_none())
    }

    /// The job under way, or `start`'s, begun now.
    fn join_or_start(
        &self,
        start: impl FnOnce(Arc<OAuth>) -> BoxFuture<'static, Result<(), String>>,
    ) -> Job {
        let mut slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = slot.as_ref().filter(|j| j.peek().is_none()) {
            return job.clone();
        }
        // A task of its own: the work goes on when the caller that started it goes away.
        let task = tokio::spawn(start(self.oauth.clone()));
        let job: Job = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("the authorization task failed: {e}")))
        }
        .boxed()
        .shared();
        *slot = Some(job.clone());
        job
    }

    /// Waits for `job` (at most [`POLL`]), answering `pending` early when a login URL
    /// appears that the caller has not shown.
    async fn wait(&self, job: Job, seen_url: bool) -> BrokerAnswer {
        let mut url = self.oauth.watch_login_url();
        let pending = |shown: &Option<(String, bool)>| BrokerAnswer::Pending {
            url: shown.as_ref().map(|(u, _)| u.clone()),
            opened: shown.as_ref().is_some_and(|(_, o)| *o),
        };
        let deadline = tokio::time::Instant::now() + POLL;
        let mut job = std::pin::pin!(job);
        loop {
            let shown = url.borrow_and_update().clone();
            if shown.is_some() && !seen_url {
                return pending(&shown);
            }
            tokio::select! {
                // Cancel-safe: a Shared future can be polled again; the watch loses nothing.
                result = &mut job => return match result {
                    Ok(()) => self.ready(),
                    Err(error) => BrokerAnswer::Failed { error },
                },
                changed = url.changed() => if changed.is_err() {
                    return pending(&None);
                },
                () = tokio::time::sleep_until(deadline) => return pending(&shown),
            }
        }
    }
}

/// The manager's authorizations, one per daemon, created on first use.
pub struct Broker {
    home: std::path::PathBuf,
    authorities: Mutex<HashMap<String, Arc<Authority>>>,
}

impl Broker {
    pub fn new(home: &std::path::Path) -> Broker {
        Broker {
            home: home.to_path_buf(),
            authorities: Mutex::new(HashMap::new()),
        }
    }

    /// Daemon `name`'s authority for `url` and `spec` as the registry has them now (a changed
    /// entry gets a new one).
    fn authority(&self, name: &str, url: &Url, spec: &OAuthSpec) -> Result<Arc<Authority>, String> {
        let mut map = self.authorities.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = map.get(name).filter(|a| a.url == *url && a.spec == *spec) {
            return Ok(found.clone());
        }
        let settings = Settings {
            login_timeout: login_timeout(),
            ..super::settings_of(spec)
        };
        let oauth = OAuth::new(
            url.clone(),
            format!("daemon \"{name}\" ({url})"),
            settings,
            &self.home,
            &super::daemon_key(name),
        )
        .map_err(|e| e.to_string())?;
        let authority = Arc::new(Authority {
            url: url.clone(),
            spec: spec.clone(),
            oauth: Arc::new(oauth),
            job: Mutex::new(None),
        });
        map.insert(name.to_owned(), authority.clone());
        Ok(authority)
    }

    /// Answers `request` for daemon `request.name`, whose registry entry is `url` + `spec`.
    pub async fn answer(
        &self,
        request: BrokerRequest,
        url: &Url,
        spec: &OAuthSpec,
    ) -> BrokerAnswer {
        let name = request.name.clone();
        if request.event == "logout" {
            self.authorities
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            return match super::forget(&self.home, &super::daemon_key(&name)) {
                Ok(forgot) => {
                    info!("daemon \"{name}\": logged out");
                    BrokerAnswer::LoggedOut { forgot }
                }
                Err(e) => BrokerAnswer::Failed {
                    error: e.to_string(),
                },
            };
        }
        let authority = match self.authority(&name, url, spec) {
            Ok(authority) => authority,
            Err(error) => return BrokerAnswer::Failed { error },
        };
        match request.event.as_str() {
            "login" => {
                let job = authority.join_or_start(|oauth| {
                    async move { oauth.login().await.map_err(|e| e.to_string()) }.boxed()
                });
                authority.wait(job, request.seen_url).await
            }
            "refused" => {
                let current = authority.oauth.current_header().map(|c| c.0);
                let current_digest = current.as_ref().map(digest);
                if current_digest.is_some() && current_digest != request.sent {
                    return authority.ready(); // a newer token than the refused one
                }
                let status = request.status.unwrap_or(401);
                let challenge = request.challenge.clone();
                let sent = current.filter(|_| request.sent.is_some());
                let job = authority.join_or_start(move |oauth| {
                    async move {
                        oauth
                            .refused(status, challenge.as_deref(), sent.as_ref())
                            .await
                    }
                    .boxed()
                });
                authority.wait(job, request.seen_url).await
            }
            _ => {
                // A proxy started during a login waits for it rather than being refused.
                if let Some(job) = authority.running() {
                    if authority.oauth.current_header().is_none() {
                        return authority.wait(job, request.seen_url).await;
                    }
                }
                // Refreshes a token about to expire, once for every caller.
                authority.oauth.authorization().await;
                authority.ready()
            }
        }
    }
}

/// How long a person has to finish a login in the browser.
pub fn login_timeout() -> Duration {
    Duration::from_secs(300)
}

/// Sends a request to the manager; `Err` when it cannot be reached.
pub type Ask = Arc<
    dyn Fn(BrokerRequest) -> Pin<Box<dyn Future<Output = Result<BrokerAnswer, String>> + Send>>
        + Send
        + Sync,
>;

/// A proxy's authorizer for a registry daemon whose authorization the manager owns.
pub struct Managed {
    name: String,
    label: String,
    ask: Ask,
    /// Used when the manager cannot be reached: the proxy-side flow, with the store's lock.
    fallback: Arc<dyn Authorizer>,
    cached: Mutex<Option<(HeaderValue, Option<u64>)>>,
    ask_not_before: Mutex<Option<Instant>>,
    url_shown: std::sync::atomic::AtomicBool,
}

impl Managed {
    pub fn new(name: String, label: String, ask: Ask, fallback: Arc<dyn Authorizer>) -> Managed {
        Managed {
            name,
            label,
            ask,
            fallback,
            cached: Mutex::new(None),
            ask_not_before: Mutex::new(None),
            url_shown: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn cached(&self) -> Option<(HeaderValue, Option<u64>)> {
        self.cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks until the manager answers something other than `pending`, showing a login URL
    /// once; bounded by the login timeout. `Err(None)`: the manager cannot be reached.
    async fn settle(&self, mut request: BrokerRequest) -> Result<BrokerAnswer, Option<String>> {
        let deadline = Instant::now() + login_timeout() + Duration::from_secs(30);
        loop {
            request.seen_url = self.url_shown.load(std::sync::atomic::Ordering::Relaxed);
            let answer = (self.ask)(request.clone()).await.map_err(|e| {
                warn!(
                    "{}: the manager cannot be asked for a token ({e}); authorizing here",
                    self.label
                );
                None
            })?;
            let BrokerAnswer::Pending { url, opened } = answer else {
                return Ok(answer);
            };
            if let Some(url) = url {
                if !self
                    .url_shown
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    show_url(&self.label, &url, opened);
                }
            }
            if Instant::now() > deadline {
                return Err(Some(format!(
                    "the login of daemon \"{}\" did not finish within {}s\nhint: run `mcpsm login {}` in a terminal",
                    self.name,
                    login_timeout().as_secs(),
                    self.name
                )));
            }
        }
    }

    fn take(&self, answer: &BrokerAnswer) -> Option<HeaderValue> {
        let fresh = match answer {
            BrokerAnswer::Ready {
                authorization,
                expires_at,
            } => HeaderValue::from_str(authorization).ok().map(|mut value| {
                value.set_sensitive(true);
                (value, *expires_at)
            }),
            _ => None,
        };
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        *cached = fresh.clone();
        fresh.map(|f| f.0)
    }
}

/// Where the person waiting sees it: the client shows a server's stderr.
fn show_url(label: &str, url: &str, opened: bool) {
    if opened {
        eprintln!("mcpsm: the browser was opened to authorize {label}; if it did not appear, open:\n  {url}");
    } else {
        eprintln!("mcpsm: to authorize {label}, open this URL in a browser:\n  {url}");
    }
}

fn expiring(expires_at: Option<u64>) -> bool {
    expires_at.is_some_and(|at| at <= now() + REFRESH_MARGIN)
}

impl Authorizer for Managed {
    /// DPoP proofs are made with the key beside the stored tokens, which the manager's
    /// authorization shares (see `dpop`).
    fn proof(&self, method: &str, url: &Url, header: &HeaderValue) -> Option<HeaderValue> {
        self.fallback.proof(method, url, header)
    }

    fn observe(&self, url: &Url, headers: &reqwest::header::HeaderMap) {
        self.fallback.observe(url, headers);
    }

    fn authorization(&self) -> AuthFuture<'_, Option<HeaderValue>> {
        Box::pin(async move {
            let cached = self.cached();
            let backing_off = self
                .ask_not_before
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| Instant::now() < at);
            if let Some((header, expires_at)) = &cached {
                if !expiring(*expires_at) || backing_off {
                    return Some(header.clone());
                }
            }
            let request = BrokerRequest {
                name: self.name.clone(),
                event: "token".into(),
                status: None,
                challenge: None,
                sent: None,
                seen_url: false,
            };
            match self.settle(request).await {
                Ok(BrokerAnswer::Failed { error }) => {
                    warn!("{}: {error}", self.label);
                    cached.map(|c| c.0)
                }
                Ok(answer) => {
                    let fresh = self.take(&answer);
                    if fresh.is_some() && fresh == cached.map(|c| c.0) {
                        *self
                            .ask_not_before
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now() + ASK_BACKOFF);
                    }
                    fresh
                }
                Err(Some(why)) => {
                    warn!("{why}");
                    None
                }
                Err(None) => self.fallback.authorization().await,
            }
        })
    }

    fn refused<'a>(
        &'a self,
        status: u16,
        challenge: Option<&'a str>,
        sent: Option<&'a HeaderValue>,
    ) -> AuthFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let request = BrokerRequest {
                name: self.name.clone(),
                event: "refused".into(),
                status: Some(status),
                challenge: challenge.map(str::to_owned),
                sent: sent.map(digest),
                seen_url: false,
            };
            match self.settle(request).await {
                Ok(BrokerAnswer::Failed { error }) => Err(error),
                Ok(answer) => match self.take(&answer) {
                    Some(_) => Ok(()),
                    None => Err("the manager has no token for it".into()),
                },
                Err(Some(why)) => Err(why),
                Err(None) => self.fallback.refused(status, challenge, sent).await,
            }
        })
    }
}
