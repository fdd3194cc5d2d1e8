"""CHUNKING/BDAT (RFC 3030) end to end: a raw-socket BDAT client -> ringpost -> aiosmtpd.

No SMTP client on this machine speaks BDAT (swaks 20201014 does not; Postfix's smtp client
never sends it), so the client is written here, on a plain socket, pipelining its commands
and chunks the way RFC 3030 with RFC 2920 allows. The sink (aiosmtpd, DATA only) receives what
ringpost relays: it must be the sender's message byte for byte, after ringpost's Received
header, exactly as if it had been sent with DATA.
"""
import json
import smtplib
import socket
import subprocess
import time

from conftest import ROOT, Ringpost, assert_every_recipient_closed_once, free_port, strip_trace
from test_dkim import signing_ringpost  # noqa: F401 (the fixture)


class BdatClient:
    """A minimal pipelining BDAT client on a raw socket."""

    def __init__(self, port, src="127.0.0.1"):
        self.s = socket.create_connection(("127.0.0.1", port), source_address=(src, 0), timeout=20)
        self.buf = b""
        assert self.reply()[0].startswith("220")

    def reply(self):
        """One reply (all its lines)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.s.recv(65536)
                assert chunk, f"connection closed; got {lines}"
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return lines

    def replies(self, n):
        return [self.reply()[-1] for _ in range(n)]

    def ehlo(self):
        self.s.sendall(b"EHLO client.test\r\n")
        return self.reply()

    def send_chunks(self, sender, rcpts, chunks):
        """MAIL, RCPTs and every `BDAT n [LAST]` with its octets in ONE write; returns the
        replies: MAIL, each RCPT, each chunk."""
        out = f"MAIL FROM:<{sender}>\r\n".encode()
        out += b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts)
        for i, c in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            out += f"BDAT {len(c)}{last}\r\n".encode() + c
        self.s.sendall(out)
        return self.replies(1 + len(rcpts) + len(chunks))

    def close(self):
        self.s.sendall(b"QUIT\r\n")
        assert self.reply()[-1].startswith("221")
        self.s.close()


def split(data: bytes, cuts):
    """`data` cut at the given offsets."""
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


MESSAGES = {
    # CRLF text with dot lines (the chunk boundaries fall inside "\r\n" and before a dot).
    "dots": (b"From: a@b.test\r\nSubject: bdat dots\r\n\r\n.\r\n..two\r\n.leading\r\nmid.dle\r\nend\r\n", [37, 40, 41]),
    "eightbit": ("Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße aus Köln\r\n".encode(), [5]),
    "empty": (b"", []),
    "big": (b"Subject: big\r\n\r\n" + (b"0123456789abcdef" * 4 + b"\r\n") * 40000, [100000, 1500000, 1500001]),
}


def test_bdat_messages_are_relayed_byte_exact(ringpost, sink):
    rp = ringpost()
    c = BdatClient(rp.port)
    ehlo = c.ehlo()
    assert "250-CHUNKING" in ehlo or "250 CHUNKING" in ehlo, ehlo
    assert not any("BINARYMIME" in l for l in ehlo)
    for name, (body, cuts) in MESSAGES.items():
        chunks = split(body, cuts) if body else [b""]
        replies = c.send_chunks("a@b.test", [f"{name}@example.org"], chunks)
        assert [r[:3] for r in replies] == ["250"] * len(replies), (name, replies)
        assert replies[2:-1] == [f"250 2.0.0 {len(x)} octets received" for x in chunks[:-1]], name
        assert replies[-1].startswith("250 2.0.0 Ok: queued as"), name
    c.close()
    rp.wait_final(len(MESSAGES))
    got = {m[1][0].split("@")[0]: m[2] for m in sink.snapshot()}
    for name, (body, _) in MESSAGES.items():
        assert strip_trace(got[name]) == body, name
    assert_every_recipient_closed_once(rp.events())


def test_bdat_and_data_store_the_same_message(ringpost, sink):
    """Bare LFs and a missing final line end are the client's business: normalised to CRLF,
    relayed intact; the same text sent with DATA (CRLF) arrives identical."""
    rp = ringpost()
    raw = b"Subject: lf\n\n.dot after LF\nline\rtwo\n.\nno final newline"
    normalised = b"Subject: lf\r\n\r\n.dot after LF\r\nline\r\ntwo\r\n.\r\nno final newline\r\n"
    c = BdatClient(rp.port)
    c.ehlo()
    replies = c.send_chunks("a@b.test", ["bdat@example.org"], split(raw, [14, 15, 33]))
    assert replies[-1].startswith("250 2.0.0 Ok: queued as"), replies
    c.close()
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        assert s.sendmail("a@b.test", ["data@example.org"], normalised) == {}
    rp.wait_final(2)
    got = {m[1][0].split("@")[0]: m[2] for m in sink.snapshot()}
    assert strip_trace(got["bdat"]) == normalised
    assert strip_trace(got["data"]) == strip_trace(got["bdat"])


def test_refused_and_reset_bdat_transactions_relay_nothing(ringpost, sink):
    rp = ringpost(extra="max_message_size = 4096")
    c = BdatClient(rp.port)
    c.ehlo()
    # Over the limit in the second chunk: 552 after its octets, the third chunk 503 (reset);
    # the octets of both look like commands and must not be taken for any.
    chunks = [b"Subject: big\r\n\r\n" + (b"a" * 68 + b"\r\n") * 40, b"QUIT\r\n" + (b"b" * 48 + b"\r\n") * 40, b"RSET\r\nQUIT\r\n"]
    replies = c.send_chunks("a@b.test", ["big@example.org"], chunks)
    assert [r[:9] for r in replies] == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "552 5.3.4", "503 5.5.1"], replies
    # RSET between chunks drops the message; BDAT without a transaction is 503, data eaten.
    c.s.sendall(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<reset@example.org>\r\nBDAT 6\r\nfirst\nRSET\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert [r[:9] for r in c.replies(6)] == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "503 5.5.1", "250 2.0.0"]
    # The session is still usable: a good message goes through.
    replies = c.send_chunks("a@b.test", ["good@example.org"], [b"Subject: ok\r\n\r\nok\r\n"])
    assert replies[-1].startswith("250 2.0.0 Ok: queued as"), replies
    c.close()
    rp.wait_final(1)
    assert [m[1] for m in sink.snapshot()] == [["good@example.org"]]
    assert [e["recipient"] for e in rp.events() if e["type"] == "Reception"] == ["good@example.org"]


def test_blaster_sends_bdat_to_ringpost_and_every_message_arrives_intact(tmp_path):
    """blaster uses BDAT by default now that ringpost offers CHUNKING; its sink checks each
    relayed message's digest (dot lines, 8-bit text, sizes over several spool chunks)."""
    blaster = ROOT / "target" / "release" / "blaster"
    n = 500
    for mode, args in (("bdat", []), ("data", ["--no-chunking"])):
        sink_port = free_port()
        sink = subprocess.Popen([str(blaster), "sink", "--listen", f"127.0.0.1:{sink_port}", "--json", "--exit-after", str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        (tmp_path / mode).mkdir()
        rp = Ringpost(tmp_path / mode, sink_port).start()
        try:
            r = subprocess.run([str(blaster), "send", "--to", f"127.0.0.1:{rp.port}", "--json", "-q", "-n", str(n), "-c", "20",
                                "--size", "200-200000", "--dot-lines", "--eight-bit", *args],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            sent = json.loads(r.stdout)
            assert (sent["accepted"], sent["errors"]) == (n, 0), sent
            assert sent["sent_bdat"] == (n if mode == "bdat" else 0), sent
            out, _ = sink.communicate(timeout=120)
            got = json.loads(out)
            assert (got["received"], got["corrupted"], got["duplicates"], got["unstamped"]) == (n, 0, 0, 0), (mode, got)
        finally:
            sink.kill()
            rp.stop()


def test_bdat_messages_are_dkim_signed_like_data_ones(signing_ringpost, sink):
    """The body hash is computed over the stored (normalised) BDAT body: the first message of
    a session and the next one in the same session both carry signatures dkimpy verifies."""
    from test_dkim import dnsfunc_for, received, signatures

    rp, records = signing_ringpost
    c = BdatClient(rp.port)
    c.ehlo()
    for name, body in (("first", b"\r\n.dot\r\nline one\r\n"), ("second", b"\n.bare LF body\nno final newline")):
        msg = (f"From: Sender <news@signer.test>\r\nTo: <r@example.org>\r\nSubject: bdat {name}\r\n"
               f"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{name}@test>\r\n").encode() + body
        replies = c.send_chunks("news@signer.test", [f"{name}@example.org"], split(msg, [30, len(msg) - 3]))
        assert replies[-1].startswith("250 2.0.0 Ok: queued as"), replies
    c.close()
    for name in ("first", "second"):
        d, sigs = signatures(received(sink, name))
        assert len(sigs) == 2, name
        for idx in range(2):
            assert d.verify(idx=idx, dnsfunc=dnsfunc_for(records)), (name, idx)
