"""ringpost sending with BDAT (RFC 3030): a message up to `[delivery] bdat_max_octets` goes as one
`BDAT <n> LAST` chunk in the same write as MAIL and RCPT when the receiver offers CHUNKING and
PIPELINING; larger ones, and every message when the limit is 0, go with DATA.

Two receivers: Postfix's smtpd (a BDAT implementation no one here wrote; it logs how many BDAT
and DATA commands each session used) relaying to aiosmtpd, so what arrives can be compared
byte for byte with what was sent; and blaster's sink, which checks each body's digest, counts
the messages that came by BDAT and injects refusals at RCPT and at the end of the message.
"""
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Ringpost, assert_every_recipient_closed_once, free_port, wait_for
from test_blaster import finish, send as blaster_send, start_sink as start_blaster_sink

class PostfixReceiver:
    """A Postfix instance of its own (config, queue and log in a temporary directory, no
    chroot) whose smtpd listens on a loopback port and relays everything to `relay_port`.
    `refused` recipients get `550 5.1.1` at RCPT."""

    def __init__(self, relay_port, refused=()):
        # Postfix's daemons run as `postfix` and chdir into the queue: every parent directory
        # must be searchable by that user, which pytest's tmp_path (0700) is not.
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-postfix-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.port = free_port()
        etc = self.dir / "etc"
        etc.mkdir()
        (self.dir / "queue").mkdir()
        (self.dir / "data").mkdir()
        shutil.chown(self.dir / "data", "postfix")
        self.log = self.dir / "maillog"
        access = ", ".join(f"{{{r} = 550 5.1.1 <{r}>: no such user here}}" for r in refused)
        (etc / "main.cf").write_text(f"""compatibility_level = 3.6
myhostname = postfix.test
queue_directory = {self.dir / 'queue'}
data_directory = {self.dir / 'data'}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relayhost = [127.0.0.1]:{relay_port}
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = check_recipient_access inline:{{ {access} }}, permit
maillog_file_prefixes = /tmp
maillog_file = {self.log}
smtp_dns_support_level = disabled
# Relay what comes in as it is: no header rewriting for local clients (loopback is one), no
# 8-bit to quoted-printable conversion on the way out.
local_header_rewrite_clients =
disable_mime_output_conversion = yes
""")
        # Debian's master.cf with smtpd on our port and every service out of chroot (a chroot
        # would need copies of /etc files under the queue directory).
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            f = line.split()
            if line[:1].isalnum() and len(f) >= 8:
                if f[0] == "smtp" and f[1] == "inet":
                    f[0] = f"127.0.0.1:{self.port}"
                f[4] = "n"
                line = " ".join(f)
            lines.append(line)
        (etc / "master.cf").write_text("\n".join(lines) + "\n")
        self.etc = etc

    def postfix(self, *args):
        # Postfix reports a fatal error on stderr only when it is a terminal (else syslog,
        # which this machine may not run): its own log file says why instead.
        r = subprocess.run(["postfix", "-c", str(self.etc), *args], capture_output=True, text=True, timeout=60)
        log = self.log.read_text() if self.log.exists() else "(no log)"
        assert r.returncode == 0, f"postfix {' '.join(args)}: {r.stderr}\n{log[-2000:]}"

    def start(self):
        self.postfix("start")
        wait_for(lambda: _accepts(self.port), "Postfix's smtpd to listen")
        return self

    def stop(self):
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True, timeout=60)
        if not os.environ.get("KEEP_POSTFIX_DIR"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def command_counts(self):
        """Per smtpd session, from its `disconnect` line: {command: times sent} (Postfix
        writes `rcpt=1/2` for one accepted of two sent)."""
        text = self.log.read_text() if self.log.exists() else ""
        sessions = re.findall(r"disconnect from \S+ (.*commands=\d+(?:/\d+)?)", text)
        return [dict((k, int(v.split("/")[-1])) for k, v in (w.split("=") for w in s.split())) for s in sessions]


def _accepts(port):
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


@pytest.fixture
def postfix_receiver(sink):
    if not shutil.which("postfix"):
        pytest.fail("Debian's postfix package is needed (.ci/run installs it)")
    pf = PostfixReceiver(sink.port, refused=("refused1@example.org", "refused2@example.org")).start()
    yield pf
    pf.stop()


def without_received(content: bytes) -> bytes:
    """The message after every leading Received field (Postfix's and ringpost's)."""
    lines = content.split(b"\r\n")
    i = 0
    while lines[i].startswith(b"Received:"):
        i += 1
        while lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\r\n".join(lines[i:])


# What smtplib sends with DATA (CRLF text; it dot-stuffs) and ringpost must deliver byte for byte.
MESSAGES = {
    "dots": b"From: a@b.test\r\nSubject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nmid.dle\r\n...\r\nend\r\n",
    "eightbit": "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\u00fc\u00dfe aus K\u00f6ln\r\n.\u00e9\r\n".encode(),
    "headers-only": b"Subject: nothing below\r\n\r\n",
    # Over bdat_max_octets (64 KiB by default): DATA, as before.
    "big": b"Subject: big\r\n\r\n" + (b".0123456789abcdef0123456789abcdef\r\n" * 3000),
}


def test_postfix_receives_bdat_byte_exact_and_data_above_the_limit(tmp_path, sink, postfix_receiver):
    pf = postfix_receiver
    rp = Ringpost(tmp_path, pf.port)
    try:
        rp.start()
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
            for name, body in MESSAGES.items():
                assert s.sendmail("a@b.test", [f"{name}@example.org"], body) == {}, name
            # One recipient Postfix refuses beside one it takes, then only the refused one:
            # the chunk is sent with the envelope either way.
            # (Two refused addresses: a bounce puts its address on the suppression list.)
            assert s.sendmail("a@b.test", ["mixed@example.org", "refused1@example.org"], b"Subject: mixed\r\n\r\n.x\r\n") == {}
            assert s.sendmail("a@b.test", ["refused2@example.org"], b"Subject: alone\r\n\r\nx\r\n") == {}
        finals = rp.wait_final(len(MESSAGES) + 3)
        by_rcpt = {}
        for e in finals:
            by_rcpt.setdefault(e["recipient"], []).append(e)
        for name in [*MESSAGES, "mixed"]:
            [e] = by_rcpt[f"{name}@example.org"]
            assert e["type"] == "Delivery", e
        for r in ("refused1", "refused2"):
            [e] = by_rcpt[f"{r}@example.org"]
            assert e["type"] == "Bounce", e
            assert e["response"].startswith("550 5.1.1 ") and e["response"].endswith("no such user here"), e
        # Every message, the mixed one, and ringpost's two DSNs to the sender (by BDAT too).
        got = wait_for(lambda: (len(sink.snapshot()) == len(MESSAGES) + 3) and sink.snapshot(), "Postfix to relay every message")
        content = {m[1][0].split("@")[0]: m[2] for m in got if m[1] != ["a@b.test"]}
        for name, body in MESSAGES.items():
            assert without_received(content[name]) == body, name
        assert without_received(content["mixed"]) == b"Subject: mixed\r\n\r\n.x\r\n"
        assert [m[1] for m in got if m[1][0].startswith("mixed")] == [["mixed@example.org"]]
        dsns = sorted(m[2] for m in got if m[1] == ["a@b.test"])
        assert len(dsns) == 2 and b"refused1@example.org" in dsns[0] + dsns[1] and b"refused2@example.org" in dsns[0] + dsns[1]
        for d in dsns:
            assert b"Content-Type: multipart/report; report-type=delivery-status" in d and d.endswith(b"--\r\n"), d[-200:]
    finally:
        rp.stop()  # its idle connections QUIT: Postfix logs each session's command counts
    def totals():
        sessions = pf.command_counts()
        return {k: sum(s.get(k, 0) for s in sessions) for k in ("mail", "rcpt", "bdat", "data")}

    # Ringpost's sessions end (and are logged) one by one: wait for all eight transactions.
    total = wait_for(lambda: (lambda t: t["mail"] >= 8 and t)(totals()), "Postfix to log ringpost's sessions")
    time.sleep(0.5)
    sessions = pf.command_counts()
    assert totals() == total, "nothing more after the eighth transaction"
    # Eight transactions: three small messages, the mixed one, the refused one and the two
    # DSNs by BDAT; the big one by DATA. Nine RCPTs: one each, two in the mixed one.
    assert total == {"mail": 8, "rcpt": 9, "bdat": 7, "data": 1}, sessions
    assert_every_recipient_closed_once([e for e in rp.events() if e.get("sender") != ""])


def stop_sink(p):
    p.send_signal(2)
    return finish(p)[0]


@pytest.mark.parametrize("limit, route_limit, size, by_bdat",
                         [(8000, None, "1000", 300), (8000, None, "20000", 0), (0, None, "1000", 0),
                          (8000, 0, "1000", 0), (0, 8000, "1000", 300)])
def test_bdat_is_used_up_to_bdat_max_octets(tmp_path, limit, route_limit, size, by_bdat):
    """`[delivery] bdat_max_octets`, and a `[[route]]`'s own, which wins."""
    sink, sink_port = start_blaster_sink("--duration", "120s")
    route = f"""[[route]]
domain = "*"
hosts = ["127.0.0.1:{sink_port}"]
""" + ("" if route_limit is None else f"bdat_max_octets = {route_limit}\n")
    rp = Ringpost(tmp_path, sink_port, delivery_extra=f"bdat_max_octets = {limit}", route_all=False, tail=route)
    try:
        rp.start()
        sent = blaster_send(rp.port, "-n", "300", "-c", "10", "--size", size, "--dot-lines", "--eight-bit")
        assert (sent["accepted"], sent["errors"]) == (300, 0), sent
        rp.wait_final(300)
    finally:
        rp.stop()
        got = stop_sink(sink)
    assert (got["received"], got["received_bdat"], got["corrupted"], got["duplicates"]) == (300, by_bdat, 0, 0), got


def test_refusals_at_rcpt_and_at_the_chunk_end_as_they_do_with_data(tmp_path, sink):
    """The sink refuses at RCPT (550, 451) and after the message (554, 451) at random. With
    BDAT a refused RCPT is followed by the chunk anyway, which the sink reads and answers 503:
    the recipient must bounce with the RCPT's reply, never the 503; a refused chunk bounces
    or retries with its own reply; everything else arrives once, by BDAT."""
    n = 1000
    faulty, faulty_port = start_blaster_sink("--rcpt-perm", "0.15", "--rcpt-temp", "0.1", "--data-perm", "0.1",
                                         "--data-temp", "0.1", "--duration", "120s")
    # Recipients repeat (blaster draws from 1,000 names): none may be suppressed by a bounce.
    # The DSNs to blaster's sender go to aiosmtpd, so the faulty sink's counts are the
    # messages' own.
    rp = Ringpost(tmp_path, faulty_port, tail=f"""[[route]]
domain = "blaster.test"
hosts = ["127.0.0.1:{sink.port}"]
[suppression]
enabled = false
""")
    try:
        rp.start()
        sent = blaster_send(rp.port, "-n", str(n), "-c", "10", "--size", "1000", "--dot-lines")
        assert (sent["accepted"], sent["errors"]) == (n, 0), sent
        # Final events of the messages themselves (the DSNs have the null sender).
        finals = wait_for(lambda: (lambda f: len(f) == n and f)(
            [e for e in rp.events() if e["type"] in ("Delivery", "Bounce", "Expiration") and e["sender"] != ""]),
            "every message's final event", timeout=60)
    finally:
        rp.stop()
        got = stop_sink(faulty)
    f = got["faults"]
    bounces = [e for e in finals if e["type"] == "Bounce"]
    deliveries = [e for e in finals if e["type"] == "Delivery"]
    bounce_text = [e["response"] for e in bounces]
    assert bounce_text.count("550 5.1.1 User unknown (injected)") == f["rcpt_550"], (f, bounce_text[:3])
    assert bounce_text.count("554 5.6.0 Message refused (injected)") == f["data_554"], (f, bounce_text[:3])
    assert len(bounces) == f["rcpt_550"] + f["data_554"], (f, sorted(set(bounce_text)))
    assert len(deliveries) == n - len(bounces) == got["received"] == got["received_bdat"], (len(deliveries), got)
    assert (got["corrupted"], got["duplicates"]) == (0, 0), got
    # Both temporary refusals were injected (and, by the counts above, retried to an end).
    assert f["rcpt_451"] > 0 and f["data_451"] > 0, f
    assert_every_recipient_closed_once([e for e in rp.events() if e.get("sender") != ""])


class RefusingReceiver:
    """A receiver offering PIPELINING and CHUNKING that answers MAIL and closes at once,
    without reading what follows (so the close is a reset when bytes are left unread): `554
    5.7.1` for senders starting with `perm`, `250` to MAIL, RCPT and BDAT for `liar` (before
    reading the chunk), `421 4.7.0 [TSS04]` for the others. A chunk larger
    than what the socket buffers can hold then fails to write while the reply sits unread.
    `mails` records each MAIL line and whether a BDAT command had arrived behind it."""

    def __init__(self):
        import socket
        import threading
        self.srv = socket.socket()
        # A small window (inherited by accepted sockets): the chunk cannot all fit in buffers.
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.mails = []
        self.threads = threading
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.threads.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        try:
            with c:
                c.sendall(b"220 refuser.test ESMTP\r\n")
                buf = b""
                while True:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                    if buf.upper().startswith(b"EHLO") and b"\r\n" in buf:
                        c.sendall(b"250-refuser.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n")
                        buf = buf.split(b"\r\n", 1)[1]
                    if buf.upper().startswith(b"MAIL") and b"\r\n" in buf:
                        # MAIL, RCPT and BDAT came in one write: wait (briefly) for the BDAT line.
                        c.settimeout(2)
                        while b"\r\nBDAT " not in buf and len(buf) < 4096:
                            more = c.recv(4096)
                            if not more:
                                break
                            buf += more
                        line = buf.split(b"\r\n", 1)[0].decode()
                        self.mails.append((line, b"\r\nBDAT " in buf))
                        who = line.upper()[len("MAIL FROM:<"):][:4]
                        c.sendall({"PERM": b"554 5.7.1 sender blocked here\r\n",
                                   # Takes MAIL, RCPT and the chunk before it has read it.
                                   "LIAR": b"250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n"}.get(who, b"421 4.7.0 [TSS04] deferred, try later\r\n"))
                        return
        except OSError:
            return  # reset by the other side: nothing to answer

    def close(self):
        import socket
        try:
            self.srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.srv.close()


def test_a_refused_mail_before_a_close_is_the_answer_even_when_the_chunk_write_fails(tmp_path):
    # Larger than the most a loopback socket's send buffer can grow to (tcp_wmem's maximum), so
    # the write of the chunk cannot complete once the receiver has stopped reading.
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    lines = wmem_max // 80 + 25000
    rx = RefusingReceiver()
    rp = Ringpost(tmp_path, rx.port, extra=f"max_message_size = {lines * 80 + 65536}",
                  delivery_extra=f"bdat_max_octets = {lines * 80 + 65536}")
    try:
        rp.start()
        big = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * lines
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=60) as s:
            for sender in ("perm-small@b.test", "perm-big@b.test", "temp-small@b.test", "temp-big@b.test", "liar-big@b.test"):
                body = big if "big" in sender else b"Subject: small\r\n\r\nsmall\r\n"
                assert s.sendmail(sender, [f"{sender.split('@')[0]}@example.org"], body) == {}

        def first_outcome():
            seen = {}
            for e in rp.events():
                if e["type"] in ("Bounce", "TransientFailure", "Delivery") and e["sender"]:
                    seen.setdefault(e["recipient"].split("@")[0], e)
            return len(seen) == 5 and seen
        seen = wait_for(first_outcome, "an outcome for every message", timeout=60)
    finally:
        rp.stop(signal.SIGKILL)
        rx.close()
    for who in ("perm-small", "perm-big"):
        assert (seen[who]["type"], seen[who]["response"]) == ("Bounce", "554 5.7.1 sender blocked here"), seen[who]
    for who in ("temp-small", "temp-big"):
        assert (seen[who]["type"], seen[who]["response"]) == ("TransientFailure", "421 4.7.0 [TSS04] deferred, try later"), seen[who]
    # A 250 to a chunk the write could not finish is not believed: retried, never delivered.
    assert seen["liar-big"]["type"] == "TransientFailure", seen["liar-big"]
    assert "reset by peer" in seen["liar-big"]["response"] or "Broken pipe" in seen["liar-big"]["response"], seen["liar-big"]
    # Every attempt was a chunk behind its envelope (retries included).
    assert rx.mails and all(bdat for _, bdat in rx.mails), rx.mails
