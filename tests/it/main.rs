//! Integration tests: the real `mcpsm` binary against real MCP servers and clients, plus
//! in-process fakes for faults. One test binary, so linking happens once.

mod support;

mod cli;
mod clients;
mod conformance;
mod deploy;
mod detection;
mod doctor;
mod environment;
mod faults;
mod hardening;
mod host;
mod ids;
mod lifecycle;
mod link_order;
mod manager;
mod oauth;
mod properties;
mod real;
mod recovery;
mod status_page;
mod stdio;
mod team;
