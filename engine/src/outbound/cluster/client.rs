//! The thin I/O driver: one RESP connection to Redis over glommio's `TcpStream` (io_uring, the
//! core never blocks), every call bounded by the configured timeout, scripts run by EVALSHA
//! with EVAL as the fallback when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH).
//!
//! Why this and not the `redis` crate's sync client on glommio's blocking pool: a call here
//! is one write and one read on the core's own reactor (a loopback round trip of gcra.lua measured
//! 69-108 µs on this 2-core machine under load,
//! see `engine/tests/cluster_redis.rs`), while the blocking pool adds two cross-thread hand-offs
//! per call and a thread per concurrent call; the codec is a maintained sans-I/O crate, so
//! the only code of ours is this driver.
use super::resp::{self, Decoder, Reply, RespError};
use crate::cluster_config::RedisAddr;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::time::Duration;

/// Why a Redis call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Connect, read or write failed.
    #[error("redis i/o: {0}")]
    Io(#[from] std::io::Error),
    /// No answer within the timeout.
    #[error("redis call timed out")]
    Timeout,
    /// Redis closed the connection.
    #[error("redis closed the connection")]
    Closed,
    /// A malformed, unexpected or error reply.
    #[error(transparent)]
    Resp(#[from] RespError),
    /// An answer, but too late to be of use: leased tokens would expire on arrival.
    #[error("redis answered in {0} ms, more than the {limit} ms a lease can wait", limit = super::lease::SLOW_CALL_MS)]
    Slow(u64),
}

/// A Lua script and its SHA-1 (the EVALSHA name).
pub struct Script {
    src: &'static str,
    sha: String,
}

impl Script {
    /// Wrap a script's source.
    pub fn new(src: &'static str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, src.as_bytes());
        let sha = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Self { src, sha }
    }
}

/// One connection to Redis.
pub struct RedisConn {
    stream: TcpStream,
    dec: Decoder,
    timeout: Duration,
}

impl RedisConn {
    /// Connect (bounded by `timeout`) and SELECT the database when it is not 0.
    pub async fn connect(addr: &RedisAddr, timeout: Duration) -> Result<Self, ClusterError> {
        let stream = TcpStream::connect_timeout(addr.addr.as_str(), timeout).await.map_err(|e| match e {
            glommio::GlommioError::IoError(io) => ClusterError::Io(io),
            _ => ClusterError::Timeout,
        })?;
        stream.set_nodelay(true).map_err(std::io::Error::from)?;
        let mut conn = Self { stream, dec: Decoder::default(), timeout };
        if addr.db != 0 {
            resp::check(conn.call(&[b"SELECT", addr.db.to_string().as_bytes()]).await?)?;
        }
        Ok(conn)
    }

    /// Send one command and read its reply, all within the timeout. After an error the
    /// connection must be dropped (a late reply would answer the next command).
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, ClusterError> {
        let bytes = resp::command(args);
        let timeout = self.timeout;
        let exchange = async {
            self.stream.write_all(&bytes).await?;
            self.read_reply().await
        };
        futures_lite::future::or(exchange, async {
            glommio::timer::sleep(timeout).await;
            Err(ClusterError::Timeout)
        })
        .await
    }

    async fn read_reply(&mut self) -> Result<Reply, ClusterError> {
        let mut buf = [0u8; 512];
        loop {
            if let Some(reply) = self.dec.next_reply()? {
                return Ok(reply);
            }
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                self.dec.clear();
                return Err(ClusterError::Closed);
            }
            self.dec.feed(&buf[..n]);
        }
    }

    /// Run `script` with `keys` and `args`: EVALSHA, and EVAL when Redis does not hold it.
    pub async fn run(&mut self, script: &Script, keys: &[&[u8]], args: &[&[u8]]) -> Result<Vec<i64>, ClusterError> {
        let nkeys = keys.len().to_string();
        let tail: Vec<&[u8]> = [nkeys.as_bytes()].into_iter().chain(keys.iter().copied()).chain(args.iter().copied()).collect();
        let evalsha: Vec<&[u8]> = [b"EVALSHA".as_slice(), script.sha.as_bytes()].into_iter().chain(tail.iter().copied()).collect();
        match resp::integers(self.call(&evalsha).await?) {
            Err(e) if resp::is_noscript(&e) => {
                let eval: Vec<&[u8]> = [b"EVAL".as_slice(), script.src.as_bytes()].into_iter().chain(tail.iter().copied()).collect();
                Ok(resp::integers(self.call(&eval).await?)?)
            }
            other => Ok(other?),
        }
    }
}
