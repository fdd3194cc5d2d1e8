"""ringpost sending with BDAT (RFC 3030): a message up to `[delivery] bdat_max_octets` goes as one
`BDAT <n> LAST` chunk in the same write as MAIL and RCPT when the receiver offers CHUNKING and
PIPELINING; larger ones, and every message when the limit is 0, go with DATA.

Two receivers: Postfix's smtpd (a BDAT implementation no one here wrote; it logs how many BDAT
and DATA commands each session used) relaying to aiosmtpd, so what arrives can be compared
byte for byte with what was sent; and blaster's sink, which checks each body's digest, counts
the messages that came by BDAT and injects refusals at RCPT and at the end of the message.
"""
import json
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, Ringpost, assert_every_recipient_closed_once, free_port, wait_for

BLASTER = ROOT / "target" / "release" / "blaster"


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
    # Over bdat_max_octets (128 KiB by default): DATA, as before.
    "big": b"Subject: big\r\n\r\n" + (b".0123456789abcdef0123456789abcdef\r\n" * 6000),
}


def test_postfix_receives_bdat_byte_exact_and_data_above_the_limit(tmp_path, sink, postfix_receiver):
    pf = postfix_receiver
    rp = Ringpost(tmp_path, pf.port).start()
    try:
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
    sessions = wait_for(lambda: pf.command_counts(), "Postfix to log ringpost's sessions")
    total = {k: sum(s.get(k, 0) for s in sessions) for k in ("mail", "rcpt", "bdat", "data")}
    # Eight transactions: three small messages, the mixed one, the refused one and the two
    # DSNs by BDAT; the big one by DATA. Nine RCPTs: one each, two in the mixed one.
    assert total == {"mail": 8, "rcpt": 9, "bdat": 7, "data": 1}, sessions
    assert_every_recipient_closed_once([e for e in rp.events() if e.get("sender") != ""])


def start_blaster_sink(*args):
    port = free_port()
    p = subprocess.Popen([str(BLASTER), "sink", "--listen", f"127.0.0.1:{port}", "--json", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: _accepts(port), "blaster's sink to listen")
    return p, port


def blaster_send(port, *args):
    r = subprocess.run([str(BLASTER), "send", "--to", f"127.0.0.1:{port}", "--json", "-q", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def stop_sink(p):
    p.send_signal(2)
    out, _ = p.communicate(timeout=60)
    return json.loads(out)


@pytest.mark.parametrize("limit, size, by_bdat", [(8000, "1000", 300), (8000, "20000", 0), (0, "1000", 0)])
def test_bdat_is_used_up_to_bdat_max_octets(tmp_path, limit, size, by_bdat):
    sink, sink_port = start_blaster_sink("--duration", "120s")
    rp = Ringpost(tmp_path, sink_port, delivery_extra=f"bdat_max_octets = {limit}").start()
    try:
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
""").start()
    try:
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
    assert f["rcpt_451"] > 0 and f["data_451"] > 0, "temporary refusals were retried"
    assert_every_recipient_closed_once([e for e in rp.events() if e.get("sender") != ""])
