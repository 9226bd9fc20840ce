//! Supervision: the manager owns every daemon process.
//!
//! Theory of operation. One manager runs per `MCPSM_HOME` (it holds `manager.lock` for its
//! whole life) and serves a loopback HTTP API. Each daemon in use has one actor
//! ([`daemon`]) that alone owns its process: it spawns it in a session of its own
//! ([`process`]) with a defined environment and cwd ([`environment`]), declares it ready when it answers an MCP `initialize` over its transport
//! ([`probe`]), probes it at an interval, restarts it with backoff when it dies or hangs, and
//! stops it by process group. [`manager`] maps names to actors, re-reading the registry on
//! each request; [`state`] records running daemons in `manager.json` so that a manager
//! started after a crash adopts them (pid + start time + an MCP answer, never the pid
//! alone). [`idle`] counts each daemon's open client sessions (proxy leases) and says when
//! one with none is stopped. [`client`] is the API's client, and starts a detached manager when none answers.
//! [`activity`] adds up the request figures proxies and stdio hosts count.

pub mod activity;
pub mod client;
pub mod daemon;
pub mod environment;
pub mod idle;
pub mod log_writer;
pub mod logs;
pub mod manager;
pub mod probe;
pub mod process;
pub mod secret;
pub mod state;
