#![warn(missing_docs)]
//! Sans-I/O SMTP: parsers, replies and state machines that take bytes and return events.
pub mod address;
pub mod auth;
pub mod chunk;
pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod server;
#[cfg(test)]
mod server_bdat_tests;
#[cfg(test)]
mod server_tests;
