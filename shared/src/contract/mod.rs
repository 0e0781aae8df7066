//! The contracts pgjit keeps with the outside: an operator's integration, the approval tools'
//! events, and the functions' configuration from the environment. Parsing and validation only.

pub mod config;
pub mod events;
pub mod integration;
