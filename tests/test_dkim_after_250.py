"""DKIM signing after the 250 (issue 9 item 3), checked with dkimpy's verifier:

- the 250 does not wait for the signer: with signing made slow on purpose (64 RSA-4096 keys
  for one domain, about 0.1 s of CPU per message with aws-lc), the reply comes back long before the
  signed message reaches the sink;
- a message is signed once: its retry reuses the lines, and so does a restart (they are in
  the spool), counted by `ringpost_dkim_signed`;
- Ed25519 alone is still signed in the session (no Signature record: cheaper than the trip);
- a signature lost before it was written (its spool record damaged here, as a crash between
  the 250 and the write would leave it) is made again at recovery, and verifies.
"""
import base64
import re
import smtplib
import subprocess
import time
import urllib.request
from pathlib import Path

import dkim

from conftest import Ringpost, free_port, wait_for
from test_dkim import dnsfunc_for, make_keys, received, signatures


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{name}(?:_total)? (\d+)", text, re.M)
    assert m, f"{name} not in the exposition"
    return int(m.group(1))


def message(from_domain, name):
    return (f"From: News <news@{from_domain}>\r\nTo: <r@example.org>\r\nSubject: {name}\r\n"
            f"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{name}@test>\r\n\r\nbody of {name}\r\n").encode()


def dkim_config(domain, selector, key):
    return f'[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\nalgorithm = "rsa-sha256"\nkey_file = "{key}"\n'


def slow_signer(tmp_path, sink, keys=64, extra=""):
    """A one-core daemon whose domain slow.test has `keys` RSA-4096 keys (one key file, one
    selector each): about 1.5 ms of signing per key and message (aws-lc with AVX-512 IFMA; 4 ms
    with ring or without IFMA); `extra` is added to its
    config. Returns it, the selectors and the verifier's records."""
    pem = tmp_path / "rsa4096.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096", "-out", str(pem)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(pem), "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    selectors = [f"s{i}" for i in range(keys)]
    rp = Ringpost(tmp_path, sink.port, cores=1, tail=extra + "".join(dkim_config("slow.test", s, pem) for s in selectors)).start()
    return rp, selectors, {f"{sel}._domainkey.slow.test.".encode(): txt for sel in selectors}


def verify_slow(content, selectors, records):
    d, sigs = signatures(content)
    assert [s[b"s"] for s in sigs] == [s.encode() for s in selectors], "one signature per key, in the configured order"
    assert d.verify(idx=0, dnsfunc=dnsfunc_for(records)) and d.verify(idx=len(selectors) - 1, dnsfunc=dnsfunc_for(records))


def test_the_250_does_not_wait_for_the_signature(tmp_path, sink):
    rp, selectors, records = slow_signer(tmp_path, sink)
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.ehlo("client.test")
            s.mail("news@slow.test")
            s.rcpt("slow@example.org")
            start = time.monotonic()
            code, _ = s.data(message("slow.test", "slow"))
            replied = time.monotonic()
        assert code == 250
        content = received(sink, "slow")
        arrived = sink.timed_snapshot()[-1][0]
        verify_slow(content, selectors, records)
        # Signing in the session would put its time before the 250 and leave only the
        # delivery after it; here the signing is what comes after.
        assert replied - start < arrived - replied, (replied - start, arrived - replied)
    finally:
        rp.stop()


def test_a_stop_while_signing_loses_nothing_and_the_restart_signs(tmp_path, sink):
    """SIGTERM right after the 250, while the message is being signed (64 RSA-4096 keys: about
    0.1 s, longer than a stop takes; more would pass the spool's 64 KiB bound for signature
    lines and go unsigned): it is not lost, the restart signs it again, and it is
    delivered once, signed."""
    rp, selectors, records = slow_signer(tmp_path, sink, keys=64)
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("news@slow.test", ["stopped@example.org"], message("slow.test", "stopped"))
        assert rp.stop() == 0
        assert not sink.snapshot(), "delivered before the stop: the stop did not land during signing"
        rp.start()
        verify_slow(received(sink, "stopped", timeout=20), selectors, records)
        # The stop landed while it was being signed: the restart signed it again.
        assert re.findall(r"signed again (\d+) recovered", rp.stderr.read_text()) == ["1"]
        time.sleep(1)
        assert [r for _, r, _ in sink.snapshot()] == [["stopped@example.org"]], "delivered once"
    finally:
        rp.stop()


def routes(down_port, sink_port):
    return (f'[[route]]\ndomain = "down.test"\nhosts = ["127.0.0.1:{down_port}"]\n'
            f'[[route]]\ndomain = "*"\nhosts = ["127.0.0.1:{sink_port}"]\n')


def queue_then_restart(tmp_path, sink, damage=lambda spool: None):
    """Queue three signed messages for a destination that is down, stop, apply `damage` to the
    spool, point the destination at the sink and start again. Returns (daemon, metrics port,
    signatures made before the stop, the verifier's DNS records)."""
    keys = make_keys(tmp_path)
    mport = free_port()
    key = dkim_config("signer.test", "rsa2026", keys["rsa"][0])
    down = free_port()
    rp = Ringpost(tmp_path, sink.port, route_all=False, tail=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n' + key + routes(down, sink.port))
    rp.start()
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        for i in range(3):
            s.sendmail("news@signer.test", [f"q{i}@down.test"], message("signer.test", f"q{i}"))
        # A retry reuses the lines: tempfail- is refused once, then delivered.
        s.sendmail("news@signer.test", ["tempfail-once@example.org"], message("signer.test", "retried"))
    wait_for(lambda: metric(mport, "ringpost_dkim_signed") == 4, "four messages signed")
    retried = delivered_to(sink, "tempfail-once@example.org")
    made_before = metric(mport, "ringpost_dkim_signed")
    rp.stop()
    damage(tmp_path / "spool")
    rp.config.write_text(rp.config.read_text().replace(f"127.0.0.1:{down}", f"127.0.0.1:{sink.port}"))
    rp.start()
    return rp, mport, made_before, {b"rsa2026._domainkey.signer.test.": keys["rsa"][1]}, retried


def delivered_to(sink, rcpt, timeout=20):
    wait_for(lambda: any(r == [rcpt] for _, r, _ in sink.snapshot()), f"delivery to {rcpt}", timeout=timeout)
    got = [c for _, r, c in sink.snapshot() if r == [rcpt]]
    assert len(got) == 1, f"{rcpt} delivered {len(got)} times"
    return got[0]


def check_delivered(sink, records):
    for i in range(3):
        content = delivered_to(sink, f"q{i}@down.test")
        d, sigs = signatures(content)
        assert len(sigs) == 1 and sigs[0][b"s"] == b"rsa2026", sigs
        assert d.verify(idx=0, dnsfunc=dnsfunc_for(records)), content[:600]


def test_a_message_is_signed_once_across_its_retry_and_a_restart(tmp_path, sink):
    rp, mport, made_before, records, retried = queue_then_restart(tmp_path, sink)
    try:
        assert made_before == 4, "one signature per message, none for the retry"
        assert dkim.DKIM(retried).verify(idx=0, dnsfunc=dnsfunc_for(records))
        check_delivered(sink, records)
        assert metric(mport, "ringpost_dkim_signed") == 0, "the restarted daemon read the lines from its spool"
    finally:
        rp.stop()


def damage_signature_records(spool: Path):
    """Flip a byte inside every Signature frame (kind 7): its checksum fails, recovery skips it."""
    hit = 0
    for seg in spool.glob("core-*/*"):
        data = bytearray(seg.read_bytes())
        for m in re.finditer(re.escape(b"RPR1\x07\x00\x00\x00"), bytes(data)):
            data[m.start() + 16 + 20] ^= 0xFF
            hit += 1
        seg.write_bytes(bytes(data))
    assert hit == 4, f"{hit} Signature records found"


def test_a_signature_lost_before_it_was_written_is_made_again_at_recovery(tmp_path, sink):
    rp, mport, made_before, records, _ = queue_then_restart(tmp_path, sink, damage_signature_records)
    try:
        assert made_before == 4
        check_delivered(sink, records)
        assert metric(mport, "ringpost_dkim_signed") == 3, "the three queued messages were signed again"
        said = re.findall(r"signed again (\d+) recovered messages", rp.stderr.read_text())
        assert sum(map(int, said)) == 3, said
    finally:
        rp.stop()


def signature_records(spool: Path):
    return sum(seg.read_bytes().count(b"RPR1\x07\x00\x00\x00") for seg in spool.glob("core-*/*"))


def test_ed25519_alone_is_signed_in_the_session_and_rsa_after_the_250(tmp_path, sink):
    keys = make_keys(tmp_path)
    tail = ('[[dkim]]\ndomain = "ed.test"\nselector = "ed2026"\nalgorithm = "ed25519-sha256"\n'
            f'key_file = "{keys["ed"][0]}"\n' + dkim_config("rsa.test", "rsa2026", keys["rsa"][0]))
    rp = Ringpost(tmp_path, sink.port, cores=1, tail=tail).start()
    try:
        records = {b"ed2026._domainkey.ed.test.": keys["ed"][1], b"rsa2026._domainkey.rsa.test.": keys["rsa"][1]}
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("news@ed.test", ["ed@example.org"], message("ed.test", "ed"))
        d, sigs = signatures(received(sink, "ed"))
        assert [s[b"a"] for s in sigs] == [b"ed25519-sha256"] and d.verify(idx=0, dnsfunc=dnsfunc_for(records))
        assert signature_records(tmp_path / "spool") == 0, "an Ed25519-only message went through the signing pool"
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("news@rsa.test", ["rsa@example.org"], message("rsa.test", "rsa"))
        d, sigs = signatures(received(sink, "rsa"))
        assert [s[b"a"] for s in sigs] == [b"rsa-sha256"] and d.verify(idx=0, dnsfunc=dnsfunc_for(records))
        assert signature_records(tmp_path / "spool") == 1
    finally:
        rp.stop()


def test_pipelined_bdat_past_the_signing_slots_is_each_signed_once(tmp_path, sink):
    """100 messages pipelined over BDAT in one write to a one-core daemon whose signing is slow
    (16 RSA-4096 keys: the blocking pool, about 25 ms a message), so the session commits faster
    than it signs: all 64 signing slots fill (the gauge reaches exactly 64), the session flushes
    the 250s it owes and waits for a slot. Every message gets its 250, arrives once, carries
    signatures that verify, and was signed once (one Signature record each)."""
    import threading
    from test_bdat import BdatClient
    mport = free_port()
    rp, selectors, records = slow_signer(tmp_path, sink, keys=16, extra=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    n, peak, stop = 100, [0], threading.Event()

    def watch():
        while not stop.is_set():
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
                m = re.search(r'^ringpost_dkim_signing\{core="0"\} (\d+)', r.read().decode(), re.M)
            peak[0] = max(peak[0], int(m.group(1)) if m else -1)
            time.sleep(0.01)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        c = BdatClient(rp.port)
        c.ehlo()
        out = b""
        for i in range(n):
            body = message("slow.test", f"p{i}")
            out += f"MAIL FROM:<news@slow.test>\r\nRCPT TO:<p{i}@example.org>\r\nBDAT {len(body)} LAST\r\n".encode() + body
        c.s.sendall(out)
        replies = c.replies(3 * n)
        c.close()
        queued = [r for r in replies if r.startswith("250 2.0.0 Ok: queued as")]
        assert len(queued) == n, [r for r in replies if not r.startswith("250")][:5]
        for i in range(n):
            verify_slow(received(sink, f"p{i}", timeout=60), selectors, records)
        rp.wait_final(n)
        stop.set()
        watcher.join()
        assert peak[0] == 64, f"signing slots in use peaked at {peak[0]}"
        assert len(sink.snapshot()) == n, "each message arrives once"
        assert signature_records(tmp_path / "spool") == n
    finally:
        stop.set()
        rp.stop()
