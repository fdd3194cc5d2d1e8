//! CRC-32C of any range of one buffer, after one pass over it: what recovery's resync needs to
//! test many candidate frames cheaply.
//!
//! Why: after a bad frame, recovery looks for the next valid frame at every 8-byte boundary
//! that starts with the record magic, and a candidate is valid only if the checksum over the
//! payload length its header claims matches. A body chunk is arbitrary sender bytes, so a
//! sender can fill one with candidates that each claim a payload of many MiB, and a damaged
//! chunk or a torn commit round puts them in the resync's path (every candidate before the
//! next valid frame is checked). Checksumming each claim directly costs candidates × claimed
//! length: a 1 MiB chunk (the largest the server writes) of candidates 16 bytes apart, each
//! claiming 32 MiB, is 2 TiB of checksumming, minutes per damaged chunk at the 11 GB/s measured
//! here (recovery_tests: 8,192 candidates, 16.6 GB in 1.5 s). Here each candidate costs two
//! partial reads of at most [`STRIDE`] bytes and a multiplication by x^(8n), itself up to ~32
//! multiplications modulo the polynomial: about a microsecond (`scan_cost`: 262,144 candidates
//! in 307 ms).
//!
//! The algebra (CRC-32C, reflected, as the `crc32c` crate computes it): let `U(r, D)` be the
//! CRC register after feeding bytes `D` to register `r`, without the initial and final
//! inversions (`crc32c_append(c, D) == !U(!c, D)`). Feeding is linear over GF(2):
//! `U(r, A‖B) = shift(U(r, A), |B|) ^ U(0, B)`, where `shift(r, n)` feeds `n` zero bytes, that
//! is multiplies `r` by x^(8n) modulo the polynomial. With `P(i) = U(0, buf[..i])` known,
//! `U(0, buf[a..b]) = P(b) ^ shift(P(a), b - a)`, and so
//! `crc32c_append(c, buf[a..b]) = !(shift(!c ^ P(a), b - a) ^ P(b))`.
//! `P` is kept every [`STRIDE`] bytes and finished with at most `STRIDE` bytes of direct
//! checksumming. `shift` uses the table of x^(2^k) as zlib's `crc32_combine` does.

/// Bytes between the stored prefix registers: 4 bytes of memory per `STRIDE` of buffer (4 MiB
/// for a 1 GiB segment, while its scan runs), and at most `2 * STRIDE` bytes checksummed per
/// range. `scan_cost` took 307 ms with 1,024 against 468 ms with 4,096 for 262,144 candidates.
pub const STRIDE: usize = 1024;

/// The CRC-32C polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo the polynomial (reflected: bit 31 is x^0).
fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    // `a` is always a power of x here, never zero modulo the polynomial; zero would loop.
    debug_assert!(a != 0);
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// x^(2^k) modulo the polynomial, for k in 0..67: enough for any `usize` length in bytes
/// (exponent 8n < 2^67), without assuming anything about the polynomial's order.
fn x2n_table() -> [u32; 67] {
    let mut t = [0u32; 67];
    let mut p: u32 = 1 << 30; // x^1
    for e in t.iter_mut() {
        *e = p;
        p = mult_mod_p(p, p);
    }
    t
}

/// The register `r` after `n` zero bytes: `r * x^(8n)` modulo the polynomial.
fn shift(table: &[u32; 67], r: u32, n: usize) -> u32 {
    let mut op: u32 = 1 << 31; // x^0
    let (mut n, mut k) = (n, 3usize); // x^(8n) = x^(n * 2^3)
    while n != 0 {
        if n & 1 != 0 {
            op = mult_mod_p(table[k], op);
        }
        n >>= 1;
        k += 1;
    }
    mult_mod_p(op, r)
}

/// `U(r, data)`: the raw register after feeding `data` (no inversions).
fn feed(r: u32, data: &[u8]) -> u32 {
    #[cfg(test)]
    crate::record::CHECKSUMMED.with(|c| c.set(c.get() + data.len() as u64));
    !crc32c::crc32c_append(!r, data)
}

/// Range checksums over `buf[base..]`.
pub struct RangeCrc<'a> {
    buf: &'a [u8],
    base: usize,
    /// `prefix[j] = U(0, buf[base .. base + j * STRIDE])`.
    prefix: Vec<u32>,
    table: [u32; 67],
}

impl<'a> RangeCrc<'a> {
    /// One pass over `buf[base..]`.
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        let base = base.min(buf.len());
        let mut prefix = Vec::with_capacity((buf.len() - base) / STRIDE + 1);
        let mut r = 0u32;
        prefix.push(r);
        for block in buf[base..].chunks_exact(STRIDE) {
            r = feed(r, block);
            prefix.push(r);
        }
        Self { buf, base, prefix, table: x2n_table() }
    }

    /// Bytes the construction's pass covered, at most (the last partial stride is read only
    /// when a range ends in it). For cost accounting.
    pub fn built_over(&self) -> usize {
        self.buf.len() - self.base
    }

    /// `P(i)` relative to `base`, and the bytes checksummed to get it.
    fn at(&self, i: usize) -> (u32, usize) {
        let j = (i - self.base) / STRIDE;
        let from = self.base + j * STRIDE;
        (feed(self.prefix[j], &self.buf[from..i]), i - from)
    }

    /// `crc32c_append(crc, &buf[a..b])`, and the bytes checksummed for it (at most
    /// `2 * STRIDE`). Needs `base <= a <= b <= buf.len()`.
    pub fn append(&self, crc: u32, a: usize, b: usize) -> (u32, usize) {
        assert!(self.base <= a && a <= b && b <= self.buf.len(), "range {a}..{b} outside {}..{}", self.base, self.buf.len());
        let (pa, ca) = self.at(a);
        let (pb, cb) = self.at(b);
        (!(shift(&self.table, !crc ^ pa, b - a) ^ pb), ca + cb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic byte stream (xorshift), so failures reproduce.
    fn bytes(n: usize, mut s: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    #[test]
    fn shifting_a_register_equals_feeding_it_zero_bytes() {
        let t = x2n_table();
        for (i, n) in [0usize, 1, 2, 3, 7, 8, 255, 4096, 65_537, 1 << 20].into_iter().enumerate() {
            let r = 0x1234_5678u32.rotate_left(i as u32) ^ 0xdead_beef;
            assert_eq!(shift(&t, r, n), feed(r, &vec![0u8; n]), "n = {n}");
        }
    }

    #[test]
    fn shifts_compose_for_lengths_past_what_can_be_fed_directly() {
        // Lengths of 512 MiB and more use table entries past x^(2^31); they must still agree
        // with shifting in steps.
        let t = x2n_table();
        let r = 0x0bad_cafe;
        for (a, b) in [(3usize << 30, 5usize << 29), (1 << 33, 12_345), ((1 << 31) - 1, 1), (7 << 36, 1 << 40)] {
            assert_eq!(shift(&t, shift(&t, r, a), b), shift(&t, r, a + b), "{a} + {b}");
        }
        assert_eq!(shift(&t, r, 0), r);
    }

    #[test]
    fn a_range_checksum_equals_the_direct_one_for_any_range_and_start() {
        let buf = bytes(3 * STRIDE + 777, 42);
        for base in [0usize, 8, STRIDE, 2 * STRIDE + 16] {
            let rc = RangeCrc::new(&buf, base);
            let points = [base, base + 1, base + 8, STRIDE + 5, 2 * STRIDE, 2 * STRIDE + 1, 3 * STRIDE + 100, buf.len()];
            for &a in points.iter().filter(|&&a| a >= base) {
                for &b in points.iter().filter(|&&b| b >= a) {
                    for crc in [0u32, 0xffff_ffff, 0x5eed_1234] {
                        let (got, cost) = rc.append(crc, a, b);
                        assert_eq!(got, crc32c::crc32c_append(crc, &buf[a..b]), "base {base} range {a}..{b} crc {crc:#x}");
                        assert!(cost <= 2 * STRIDE);
                    }
                }
            }
        }
    }
}
