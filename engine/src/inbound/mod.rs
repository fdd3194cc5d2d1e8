//! Inbound: where a message enters. The listener accepts connections within the connection
//! limits, the session drives the sans-I/O SMTP server over a socket, and the commit makes a
//! received message durable before its 250.
pub mod commit;
pub mod listener;
pub mod session;
pub mod signing;
