"""Injection by other people's SMTP clients: swaks and Postfix's smtp-source."""
import shutil
import subprocess

import pytest

from conftest import assert_every_recipient_closed_once, strip_trace


def test_swaks_pipelined_injection(ringpost, sink):
    rp = ringpost()
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{rp.port}", "--pipeline", "--from", "a@b.test",
                        "--to", "one@example.org,two@other.test", "--header", "Subject: swaks",
                        "--body", "line one\n.dot line\n"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.0.0 Ok: queued as" in r.stdout
    rp.wait_final(2)
    got = sink.snapshot()
    assert sorted(x for m in got for x in m[1]) == ["one@example.org", "two@other.test"]
    assert b"\r\n.dot line\r\n" in strip_trace(got[0][2])
    assert_every_recipient_closed_once(rp.events())


def test_postfix_smtp_source_injection(ringpost, sink):
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    rp = ringpost()
    r = subprocess.run([source, "-c", "-s", "10", "-m", "200", "-l", "1024", "-f", "a@b.test", "-t", "r@example.org",
                        f"127.0.0.1:{rp.port}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rp.wait_final(200, timeout=60)
    assert len(sink.snapshot()) == 200
    assert_every_recipient_closed_once(rp.events())
