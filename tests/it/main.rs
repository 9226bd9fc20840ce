//! Integration tests: the real `mcpsm` binary against real MCP servers and clients, plus
//! in-process fakes for faults. One test binary, so linking happens once.

mod support;

mod faults;
mod real;
mod stdio;
