//! blaster: the load generator (`send`) and instrumented receiver (`sink`) every ringpost
//! performance claim is measured with. Thread-per-core on glommio, like the engine; it reuses
//! the engine's sans-I/O SMTP parsers so both ends speak exactly the same protocol code paths
//! that are unit-tested there.
pub mod count_log;
pub mod report;
pub mod send;
pub mod sink;
pub mod workload;
