//! What `blaster send` sends: recipient domains (uniform or weighted), message sizes (fixed,
//! a range, or a weighted list), and bodies (plain, 8-bit, dot-lines) with the headers the sink
//! reconciles on: a unique id, the intended send time and a body digest.
use rand::Rng;

/// Weighted choice over values.
#[derive(Debug, Clone)]
pub struct Weighted<T> {
    items: Vec<(T, u32)>,
    total: u32,
}

impl<T: Clone> Weighted<T> {
    /// From (value, weight) pairs; weights must not all be zero.
    pub fn new(items: Vec<(T, u32)>) -> Result<Self, String> {
        let total = items.iter().map(|(_, w)| *w).sum();
        if total == 0 {
            return Err("weights must not all be zero".into());
        }
        Ok(Self { items, total })
    }

    /// Draw one value.
    pub fn pick(&self, rng: &mut impl Rng) -> T {
        let mut x = rng.gen_range(0..self.total);
        for (v, w) in &self.items {
            if x < *w {
                return v.clone();
            }
            x -= w;
        }
        unreachable!("weights sum to total")
    }
}

/// Parse `--domains`: a count (`10` → d0.test..d9.test, uniform) or `name=weight,...`.
pub fn parse_domains(s: &str) -> Result<Weighted<String>, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Weighted::new((0..n.max(1)).map(|i| (format!("d{i}.test"), 1)).collect());
    }
    let items = s
        .split(',')
        .map(|p| {
            let (d, w) = p.split_once('=').ok_or_else(|| format!("{p:?}: expected domain=weight"))?;
            Ok((d.trim().to_string(), w.trim().parse::<u32>().map_err(|e| format!("{p:?}: {e}"))?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Weighted::new(items)
}

/// Message size distribution.
#[derive(Debug, Clone)]
pub enum SizeDist {
    /// Always this many bytes.
    Fixed(usize),
    /// Uniform in `[lo, hi]`.
    Range(usize, usize),
    /// Weighted sizes.
    Weighted(Weighted<usize>),
}

/// Parse `--size`: `1024`, `1k-64k` or `1k=50,10k=30,100k=20`.
pub fn parse_size(s: &str) -> Result<SizeDist, String> {
    fn bytes(v: &str) -> Result<usize, String> {
        let v = v.trim().to_ascii_lowercase();
        let (num, mul) = match v.chars().last() {
            Some('k') => (&v[..v.len() - 1], 1024),
            Some('m') => (&v[..v.len() - 1], 1024 * 1024),
            _ => (&v[..], 1),
        };
        num.parse::<usize>().map(|n| n * mul).map_err(|e| format!("{v:?}: {e}"))
    }
    if s.contains('=') {
        let items = s
            .split(',')
            .map(|p| {
                let (a, w) = p.split_once('=').ok_or("expected size=weight")?;
                Ok((bytes(a)?, w.trim().parse::<u32>().map_err(|e| e.to_string())?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        return Weighted::new(items).map(SizeDist::Weighted);
    }
    if let Some((a, b)) = s.split_once('-') {
        let (lo, hi) = (bytes(a)?, bytes(b)?);
        return if lo <= hi { Ok(SizeDist::Range(lo, hi)) } else { Err("range low > high".into()) };
    }
    bytes(s).map(SizeDist::Fixed)
}

impl SizeDist {
    /// Draw a size.
    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        match self {
            SizeDist::Fixed(n) => *n,
            SizeDist::Range(lo, hi) => rng.gen_range(*lo..=*hi),
            SizeDist::Weighted(w) => w.pick(rng),
        }
    }
}

/// Body flavour switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyStyle {
    /// Include UTF-8 (8-bit) text; the transaction uses BODY=8BITMIME.
    pub eight_bit: bool,
    /// Include lines that start with a dot (exercises dot-stuffing).
    pub dot_lines: bool,
}

/// A pre-built body in wire form (CRLF, dot-stuffed) and its digest.
#[derive(Debug, Clone)]
pub struct Body {
    /// Wire bytes, ending in CRLF (or empty).
    pub wire: Vec<u8>,
    /// The same body unstuffed, as BDAT sends it.
    pub plain: Vec<u8>,
    /// CRC32C of the unstuffed body, as the sink will compute it.
    pub digest: u32,
}

/// Build a body of about `size` bytes (unstuffed) with the given style.
pub fn make_body(size: usize, style: BodyStyle, seed: u64) -> Body {
    let mut plain = Vec::with_capacity(size + 80);
    let mut line_no = seed;
    while plain.len() + 2 < size {
        line_no += 1;
        let mut line = Vec::with_capacity(78);
        if style.dot_lines && line_no.is_multiple_of(7) {
            line.push(b'.');
        }
        if style.eight_bit && line_no.is_multiple_of(5) {
            line.extend_from_slice("Grüße, naïve café — ".as_bytes());
        }
        let mut x = line_no.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        while line.len() < 76 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            line.push(b"abcdefghijklmnopqrstuvwxyz0123456789 "[(x % 37) as usize]);
        }
        let room = size - plain.len() - 2;
        line.truncate(room.max(1));
        plain.extend_from_slice(&line);
        plain.extend_from_slice(b"\r\n");
    }
    let digest = crc32c::crc32c(&plain);
    Body { wire: stuff(&plain), plain, digest }
}

/// Dot-stuff CRLF text (the engine's own function, so both ends agree byte for byte).
pub use ringpost_smtp::data::dot_stuff as stuff;

/// Remove dot-stuffing (the sink's view of the body).
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    let mut at_start = true;
    for &b in wire {
        if at_start && b == b'.' {
            at_start = false;
            continue;
        }
        out.push(b);
        at_start = b == b'\n';
    }
    out
}

/// The reconciliation headers of one message, in wire form.
pub fn headers(id: &str, sent_ns: u128, digest: u32, from: &str, to: &str, eight_bit: bool) -> Vec<u8> {
    let mut h = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: blaster {id}\r\nMessage-ID: <{id}@blaster.test>\r\nX-Blaster-Id: {id}\r\nX-Blaster-Sent: {sent_ns}\r\nX-Blaster-Digest: {digest:08x}\r\nMIME-Version: 1.0\r\n"
    );
    h.push_str(if eight_bit {
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    } else {
        "Content-Type: text/plain\r\n"
    });
    h.push_str("\r\n");
    h.into_bytes()
}

/// What the sink reads back out of a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The message id.
    pub id: String,
    /// Intended send time (ns since the epoch).
    pub sent_ns: u128,
    /// Whether the body digest matched.
    pub intact: bool,
}

/// Parse a received message (wire form, as it arrived, possibly with trace headers on top).
pub fn read_stamp(wire: &[u8]) -> Option<Stamp> {
    read_stamp_plain(&unstuff(wire))
}

/// Parse a received message that is not dot-stuffed (it came by BDAT).
pub fn read_stamp_plain(plain: &[u8]) -> Option<Stamp> {
    let split = plain.windows(4).position(|w| w == b"\r\n\r\n")?;
    let (head, body) = (&plain[..split + 2], &plain[split + 4..]);
    let head = String::from_utf8_lossy(head);
    let field = |name: &str| head.split("\r\n").find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    let id = field("X-Blaster-Id:")?;
    let sent_ns = field("X-Blaster-Sent:")?.parse().ok()?;
    let digest = u32::from_str_radix(&field("X-Blaster-Digest:")?, 16).ok()?;
    Some(Stamp { id, sent_ns, intact: crc32c::crc32c(body) == digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_through_stuffing_and_stamp() {
        for style in [BodyStyle::default(), BodyStyle { eight_bit: true, dot_lines: true }] {
            for size in [0, 1, 100, 5000] {
                let b = make_body(size, style, 3);
                let mut msg = headers("c0-1-7", 42, b.digest, "a@b", "c@d", style.eight_bit);
                msg.extend_from_slice(&b.wire);
                let mut relayed = b"Received: from x\r\n\tby y; date\r\n".to_vec();
                relayed.extend_from_slice(&msg);
                let s = read_stamp(&relayed).unwrap();
                assert_eq!(s, Stamp { id: "c0-1-7".into(), sent_ns: 42, intact: true });
                if style.dot_lines && size > 600 {
                    assert!(b.wire.windows(3).any(|w| w == b"\n.."), "dot lines are stuffed");
                }
            }
        }
    }

    #[test]
    fn corruption_is_detected() {
        let b = make_body(500, BodyStyle::default(), 1);
        let mut msg = headers("x", 1, b.digest, "a@b", "c@d", false);
        msg.extend_from_slice(&b.wire);
        let n = msg.len();
        msg[n - 10] ^= 1;
        assert!(!read_stamp(&msg).unwrap().intact);
    }

    #[test]
    fn parses_distributions() {
        assert!(matches!(parse_size("1k").unwrap(), SizeDist::Fixed(1024)));
        assert!(matches!(parse_size("1k-64k").unwrap(), SizeDist::Range(1024, 65536)));
        assert!(matches!(parse_size("1k=50,10k=50").unwrap(), SizeDist::Weighted(_)));
        let d = parse_domains("gmail.test=40,yahoo.test=20").unwrap();
        let mut rng = rand::thread_rng();
        let n = (0..10_000).filter(|_| d.pick(&mut rng) == "gmail.test").count();
        assert!((6_300..7_000).contains(&n), "{n}");
        assert!(parse_domains("x=0").is_err());
    }
}
