//! The contracts pgjit keeps with the outside: an operator's integration and access flows, the
//! approval tools' events, who people are, and the functions' configuration from the
//! environment. Parsing, validation and decisions only: no I/O.

pub mod config;
pub mod connect;
pub mod events;
pub mod flow;
pub mod identity;
pub mod integration;
pub mod requests;
