//! mirror-receiver: a receiver for AWS VPC Traffic Mirroring.
//!
//! Mirrored packets arrive VXLAN-encapsulated on UDP 4789. The pipeline, one module per stage, each
//! importing only the stages before it:
//!
//! ```text
//! wire (VXLAN, Ethernet/VLAN, IPv4/IPv6, TCP decode)
//!   -> flow (flow table, per-direction TCP reassembly)
//!   -> http (HTTP/1.x framing, request/response pairing, content decoding)
//!   -> record (Akto JSON)
//!   -> sink (Kafka, JSON lines)
//! ```
//!
//! `wire`, `flow`, `http`, `record` and `pipeline` are pure: bytes and `now` in, values out. IO
//! lives in `ingest` (sockets), `capture` (files), `sink`, `admin` and `app`: the daemon
//! (`app::worker`, `app::sink_thread`, `app::status`) and the offline subcommands
//! (`app::replay`, `app::send`). `counters` is the one table of the counters' names, read by
//! `admin` for `/metrics` and by `app` for the summary log line.

pub mod admin;
pub mod admission;
pub mod app;
pub mod capture;
pub mod config;
pub mod counters;
pub mod filter;
pub mod flow;
pub mod http;
pub mod http2;
pub mod ingest;
pub mod pipeline;
pub mod record;
pub mod sink;
pub mod spare;
#[doc(hidden)]
pub mod testkit;
pub mod wire;
