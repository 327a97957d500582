//! A small built-in DHCPv4 server for Vessel's managed networks.
//!
//! The daemon owns address management: every VM NIC has its IPv4 address before the VM starts.
//! So this server hands out *static* bindings only: it answers clients whose MAC it knows, with
//! the address bound to that MAC, and stays silent to everyone else, so that several servers on
//! one L2 segment, each knowing different MACs, never fight.
//!
//! - [`packet`]: the message format, parsing and encoding (pure, never panics on input).
//! - [`decide`](mod@decide): which reply a request gets (pure).
//! - [`server`]: the tokio task, one UDP socket on port 67 bound to one bridge.

pub mod decide;
pub mod packet;
pub mod server;

pub use decide::{Binding, Decision, Destination, Ignored, Reply, ServerParams};
pub use packet::{DhcpMessage, DhcpOptions, MessageType, ParseError};
pub use server::{Bindings, DhcpHandle, DhcpServer, Error, ServerConfig, Stats};
