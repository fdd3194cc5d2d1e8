"""A restart resumes where each recipient stood: its attempts, its next attempt time, and the
failures its message already had, so the one DSN still lists every failed recipient.

Before recipient state was persisted in the spool, a restart retried every deferred recipient
at once with attempts back at 0, and the DSN sent after the restart named only the recipients
that failed after it.
"""
import json
import re
import signal
import smtplib
import subprocess
import time
from pathlib import Path

from conftest import Ringpost, free_port, wait_for

BLASTER = Path(__file__).resolve().parents[1] / "target" / "release" / "blaster"


def configure(rp: Ringpost, retry_s: float, max_age_s: float):
    text = rp.config.read_text()
    for old, new in [("retry_first_s = 0.5", f"retry_first_s = {retry_s}"),
                     ("retry_max_s = 0.5", f"retry_max_s = {retry_s}")]:
        assert old in text, old
        text = text.replace(old, new)
    rp.config.write_text(text + f"\n")
    text = rp.config.read_text().replace("[delivery]\n", f"[delivery]\nmax_age_s = {max_age_s}\n", 1)
    rp.config.write_text(text)


def test_restart_keeps_attempts_schedule_and_earlier_failures_for_the_dsn(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2)
    configure(rp, retry_s=4.0, max_age_s=7.0)
    rp.start()
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("sender@b.test", ["reject-1@example.org", "defer-1@example.org"],
                       b"Subject: half bounces now, half later\r\nMessage-ID: <r1@b.test>\r\n\r\nbody\r\n")
        first = wait_for(lambda: [e for e in rp.events() if e["type"] == "TransientFailure"], "the first deferral", timeout=10)
        wait_for(lambda: [e for e in rp.events() if e["type"] == "Bounce"], "the bounce", timeout=10)
        assert first[0]["attempts"] == 1
        first_attempt_ms = first[0]["time_ms"]
        time.sleep(0.5)  # the disposition and retry-state records reach the next commit round
        assert rp.stop(signal.SIGKILL) == -9
        lifetime_one = len(rp.events())

        rp.start()
        expired = wait_for(lambda: [e for e in rp.events() if e["type"] == "Expiration"], "the expiry", timeout=20)
        after = rp.events()[lifetime_one:]
        retries = [e for e in after if e["recipient"] == "defer-1@example.org" and e["type"] in ("TransientFailure", "Expiration")]
        # The schedule survived: attempt 2 came no earlier than its persisted time (4 s after the
        # first), then the last one at max_age; attempts continued from 1, not from 0.
        assert [e["attempts"] for e in retries] == [2, 3], retries
        assert retries[0]["time_ms"] >= first_attempt_ms + 3900, (retries[0]["time_ms"] - first_attempt_ms)
        assert expired[0]["recipient"] == "defer-1@example.org"
        assert [e for e in after if e["type"] == "Bounce"] == [], "the bounce before the restart is not redone"

        dsns = wait_for(lambda: [m for m in sink.snapshot() if m[0] in ("<>", "")], "the DSN", timeout=10)
        time.sleep(1.0)
        dsns = [m for m in sink.snapshot() if m[0] in ("<>", "")]
        assert len(dsns) == 1, f"exactly one DSN, got {len(dsns)}"
        text = dsns[0][2].decode()
        assert "Final-Recipient: rfc822; reject-1@example.org" in text, "the failure from before the restart is listed"
        assert "Final-Recipient: rfc822; defer-1@example.org" in text
        assert "Status: 5.1.1" in text and "Status: 4.4.7" in text
        assert "Message-ID: <r1@b.test>" in text
    finally:
        rp.stop(signal.SIGKILL)


def test_a_restart_with_more_due_than_one_release_batch_delivers_every_message_once(tmp_path, sink):
    """The restart's backlog goes through the schedule and leaves in the retry timer's batches
    (engine `RELEASE_BATCH`, 1,024): with 2,600 due on one core the timer must come back for the
    rest until none is left, each message delivered once. One core: its requeue runs to the
    end before the timer's first pass, so that pass finds all 2,600 due."""
    n = 2600
    dead = free_port()  # nothing listens: every attempt is refused
    rp = Ringpost(tmp_path, dead, cores=1)
    configure(rp, retry_s=2.0, max_age_s=600.0)
    rp.start()
    try:
        sent = subprocess.run([str(BLASTER), "send", "--to", f"127.0.0.1:{rp.port}", "-n", str(n), "-c", "10",
                               "--size", "512", "--domains", "1", "-q", "--json"],
                              check=True, capture_output=True, timeout=120)
        assert json.loads(sent.stdout)["accepted"] == n
        deferred = lambda: {e["id"] for e in rp.events() if e["type"] == "TransientFailure"}
        wait_for(lambda: len(deferred()) == n, f"a deferral of each of the {n} messages", timeout=60)
        time.sleep(0.5)  # their retry states reach a commit round
        assert rp.stop(signal.SIGKILL) == -9
        time.sleep(2.5)  # every retry is due when the spool is recovered
        rp.config.write_text(rp.config.read_text().replace(f"127.0.0.1:{dead}", f"127.0.0.1:{sink.port}"))
        rp.start()
        wait_for(lambda: len(sink.snapshot()) >= n, f"{n} messages at the sink", timeout=90)
        time.sleep(1)
        ids = [re.search(rb"Message-ID: *<([^>]*)>", m[2], re.I).group(1) for m in sink.snapshot()]
        assert (len(ids), len(set(ids))) == (n, n), "each message exactly once"
    finally:
        rp.stop()
