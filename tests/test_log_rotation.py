"""The delivery log rotates by size ([log] rotate_bytes, keep) while both cores write to it.

Every recipient is still closed exactly once across the live file and the rotated ones (no line
lost or split at a rotation), no rotated file beyond `keep` is left, and each rotated file
reached the bound before it was rotated (one core rotates a given file).
"""
import json
import smtplib

from conftest import Ringpost, assert_every_recipient_closed_once, wait_for

ROTATE = 4096


def all_events(rp, keep):
    """Events from the rotated logs (oldest first) and the live one; the files present."""
    files = [rp.log.with_name(f"{rp.log.name}.{i}") for i in range(keep, 0, -1)] + [rp.log]
    files = [f for f in files if f.exists()]
    return [json.loads(l) for f in files for l in f.read_text().splitlines()], files


def delivered(rp, n):
    """All events once n deliveries are logged; None while fewer (or a rotation moved a file)."""
    try:
        events, _ = all_events(rp, 1000)
    except FileNotFoundError:
        return None
    return events if sum(e["type"] == "Delivery" for e in events) >= n else None


def send(rp, n):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as c:
        for i in range(n):
            c.sendmail("a@src.test", [f"r{i}@dest{i % 5}.test"], f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())


def test_rotated_log_keeps_every_event_once(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, log_extra=f"rotate_bytes = {ROTATE}\nkeep = 1000").start()
    try:
        send(rp, 120)
        wait_for(lambda: delivered(rp, 120), "120 deliveries across the rotated logs")
    finally:
        rp.stop()
    events, files = all_events(rp, 1000)
    finals = assert_every_recipient_closed_once(events)
    assert len(finals) == 120 and sum(e["type"] == "Reception" for e in events) == 120
    # Rotation happens at a flush (every ~50 ms, several lines at once), so how many files 96 KB
    # of events make depends on the timing; that it rotated repeatedly does not.
    assert len(files) >= 3, f"only {len(files)} files: 240 events of ~400 bytes did not rotate at {ROTATE}"
    for f in files[:-1]:
        assert f.stat().st_size >= ROTATE, f"{f.name} rotated at {f.stat().st_size} bytes, under the bound"


def test_only_keep_rotated_logs_stay(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, log_extra=f"rotate_bytes = {ROTATE}\nkeep = 2").start()
    try:
        send(rp, 60)
        wait_for(lambda: rp.log.with_name(rp.log.name + ".2").exists(), "a second rotated log")
    finally:
        rp.stop()
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("delivery.jsonl"))
    assert names == ["delivery.jsonl", "delivery.jsonl.1", "delivery.jsonl.2"], names
