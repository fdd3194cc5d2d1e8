"""Suspensions survive a restart (issue 11's known limits): a [[rule]]'s suspension of a path,
and a timed `ringctl suspend`, are kept in the spool directory and restored at start, so a
restart (even a SIGKILL) never lets mail through before the suspension ends."""
import signal
import smtplib
import time

from conftest import wait_for
from test_shaping import TSS04, Sink, daemon


def send_one(rp, rcpt):
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.sendmail("a@x.test", [rcpt], b"Subject: t\r\n\r\nx\r\n")


def restart(rp):
    """SIGKILL (nothing is flushed on the way out) and start again on the same spool."""
    rp.stop(signal.SIGKILL)
    rp.start()


def test_a_rule_suspension_holds_across_a_restart_until_it_ends(tmp_path):
    sink = Sink("--reply", f"tss.test={TSS04}", "--duration", "16s")
    rp = daemon(tmp_path, sink.port, """
[[rule]]
name = "yahoo-tss04"
regex = '\\[TSS04\\]'
action = "suspend"
duration_s = 8
""")
    try:
        send_one(rp, "u@tss.test")
        wait_for(lambda: (tmp_path / "spool" / "holds.state").exists(), "the suspension on disk", timeout=5)
        restart(rp)
        def held():
            rc, q, _ = rp.ctl("queue")
            return [h for d in q["Queue"]["destinations"] for h in d["shaping"] if "suspended until" in h and "TSS04" in h]
        wait_for(held, "ringctl queue to show the restored suspension", timeout=5)
        times = sink.report(timeout=60)["scripted_attempts"]["tss.test"]
        gaps = [b - a for a, b in zip(times, times[1:])]
        # retry_first_s is 0.5 and the spool requeues the message at start: without the
        # saved suspension the sink would see the next attempt right after the restart.
        assert len(times) >= 2, times
        assert gaps[0] >= 7.9, f"an attempt during the suspension, after the restart: {gaps}"
        assert gaps[0] <= 10.0, f"it resumes by itself when the suspension ends: {gaps}"
    finally:
        rp.stop(signal.SIGKILL)
        sink.proc.kill()


def test_a_timed_ringctl_suspend_holds_across_a_restart_until_it_ends(tmp_path):
    sink = Sink("--reply", "held.test=451 4.3.0 later", "--duration", "14s")
    rp = daemon(tmp_path, sink.port, "")
    try:
        rc, _, err = rp.ctl("suspend", "held.test", "--for", "8")
        assert rc == 0, err
        t0 = time.time()
        send_one(rp, "u@held.test")
        wait_for(lambda: (tmp_path / "spool" / "holds.state").exists(), "the suspension on disk", timeout=5)
        restart(rp)
        rc, st, _ = rp.ctl("status")
        assert any(c["suspended"] == ["held.test"] for c in st["Status"]["cores"]), st
        times = sink.report(timeout=60)["scripted_attempts"].get("held.test", [])
        assert times, "it resumes by itself when the suspension ends"
        assert times[0] - t0 >= 7.9, f"first attempt {times[0] - t0:.2f} s after an 8 s suspension"
        assert times[0] - t0 <= 10.0, f"first attempt {times[0] - t0:.2f} s after an 8 s suspension"
    finally:
        rp.stop(signal.SIGKILL)
        sink.proc.kill()
