//! The scrape endpoint: a small HTTP/1.1 server on the admin executor (control plane, never a
//! core's). One request per connection, answered with `Connection: close`.
//!
//! A scraper cannot hold anything up: every connection is its own task; the request must
//! arrive whole within [`READ_TIMEOUT`] and [`REQUEST_BYTES_MAX`]; the reply must be taken
//! within [`WRITE_TIMEOUT`]; at most [`CONNECTIONS_MAX`] are open at once (more are closed at
//! once). The cores are asked exactly as `ringctl status` asks them — over their admin
//! channels, through [`Admin::ask_all`], with the admin's core timeout — and answer from their
//! own task with a copy of their counters, so a scrape costs a core one short message.
use crate::admin::Admin;
use crate::shard::admin_ops::{CoreAnswer, CoreOp};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Most bytes of a request (line and headers); a bigger one gets 431.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// The whole request must arrive within this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The reply must be taken within this.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrape connections open at once.
pub const CONNECTIONS_MAX: usize = 16;
/// Headers parsed per request.
const HEADERS_MAX: usize = 32;

/// Serve scrapes on `listener` until shutdown; `top` destinations get a queue gauge each.
pub async fn serve(admin: Rc<Admin>, listener: TcpListener, top: usize) {
    let open = Rc::new(Cell::new(0usize));
    let started = Instant::now();
    loop {
        let stop = async {
            while !admin.stopping() {
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
            None
        };
        let Some(accepted) = futures_lite::future::or(async { Some(listener.accept().await) }, stop).await else { return };
        let Ok(stream) = accepted else { continue };
        if open.get() >= CONNECTIONS_MAX {
            continue; // dropped: closed at once
        }
        open.set(open.get() + 1);
        let (admin, open) = (admin.clone(), open.clone());
        glommio::spawn_local(async move {
            serve_one(&admin, stream, started, top).await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// A parsed request: what the reply depends on.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics`; `openmetrics` when the client accepts that format.
    Metrics {
        /// Answer in OpenMetrics rather than text 0.0.4.
        openmetrics: bool,
    },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not HTTP.
    Bad,
    /// Line and headers over [`REQUEST_BYTES_MAX`].
    TooLarge,
}

/// Parse what was read so far: `None` while the headers are incomplete.
pub fn parse(buf: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= REQUEST_BYTES_MAX => Some(Request::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Request::TooLarge),
        Err(_) => Some(Request::Bad),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
            Some(match (req.method, path) {
                (Some("GET"), "/metrics") => {
                    let accept = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("accept"));
                    let openmetrics = accept.into_iter().any(|h| String::from_utf8_lossy(h.value).contains("application/openmetrics-text"));
                    Request::Metrics { openmetrics }
                }
                (Some("GET"), _) => Request::NotFound,
                _ => Request::MethodNotAllowed,
            })
        }
    }
}

/// Read one request within the deadline and the size bound.
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = async {
            glommio::timer::sleep(left).await;
            Ok(0)
        };
        let n = futures_lite::future::or(stream.read(&mut chunk), timeout).await.unwrap_or(0);
        if n == 0 {
            return None; // closed, failed or too slow: nothing to answer
        }
        buf.extend_from_slice(&chunk[..n.min(REQUEST_BYTES_MAX + 1 - buf.len().min(REQUEST_BYTES_MAX))]);
        if let Some(r) = parse(&buf) {
            return Some(r);
        }
    }
}

async fn serve_one(admin: &Admin, mut stream: TcpStream, started: Instant, top: usize) {
    let Some(request) = read_request(&mut stream).await else { return };
    let (status, content_type, body) = match request {
        Request::Metrics { openmetrics } => match scrape(admin, openmetrics, started.elapsed().as_secs(), top).await {
            Ok((t, b)) => ("200 OK", t, b),
            Err(why) => ("503 Service Unavailable", "text/plain; charset=utf-8", why + "\n"),
        },
        Request::NotFound => ("404 Not Found", "text/plain; charset=utf-8", "only /metrics is served here\n".into()),
        Request::MethodNotAllowed => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".into()),
        Request::Bad => ("400 Bad Request", "text/plain; charset=utf-8", "not an HTTP/1.x request\n".into()),
        Request::TooLarge => ("431 Request Header Fields Too Large", "text/plain; charset=utf-8", "request too large\n".into()),
    };
    let allow = if request == Request::MethodNotAllowed { "Allow: GET\r\n" } else { "" };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n", body.len());
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.close().await
    };
    let timeout = async {
        glommio::timer::sleep(WRITE_TIMEOUT).await;
        Err(std::io::ErrorKind::TimedOut.into())
    };
    let _ = futures_lite::future::or(write, timeout).await;
}

/// Ask every core for its sample (as `status` does) and render them.
async fn scrape(admin: &Admin, openmetrics: bool, uptime_s: u64, top: usize) -> Result<(&'static str, String), String> {
    let answers = admin.ask_all(|| CoreOp::Metrics).await.map_err(|reply| match reply {
        ringpost_admin_proto::Reply::Error(e) => format!("cores did not answer: {}", e.message),
        other => format!("cores did not answer: {other:?}"),
    })?;
    let samples: Vec<_> = answers.into_iter().filter_map(|a| if let CoreAnswer::Metrics(m) = a { Some(*m) } else { None }).collect();
    Ok(if openmetrics {
        (super::exposition::OPENMETRICS_TYPE, super::exposition::render_openmetrics(&samples, uptime_s, top))
    } else {
        (super::exposition::TEXT_TYPE, super::exposition::render(&samples, uptime_s, top))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_to_what_the_reply_depends_on() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Request::Metrics { openmetrics: false }));
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Some(Request::Metrics { openmetrics: false }));
        let om = b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n";
        assert_eq!(parse(om), Some(Request::Metrics { openmetrics: true }));
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost"), None);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Some(Request::MethodNotAllowed));
        assert_eq!(parse(b"\x16\x03\x01 hello\r\n\r\n"), Some(Request::Bad));
        let big = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(REQUEST_BYTES_MAX));
        assert_eq!(parse(big.as_bytes()), Some(Request::TooLarge));
    }
}
