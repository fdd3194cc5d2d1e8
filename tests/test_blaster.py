"""blaster against itself: exact reconciliation, fault shares, open-loop latency accounting."""
import json
import subprocess
import time
from pathlib import Path

from conftest import ROOT, free_port

BLASTER = ROOT / "target" / "release" / "blaster"


def start_sink(*args):
    port = free_port()
    p = subprocess.Popen([str(BLASTER), "sink", "--listen", f"127.0.0.1:{port}", "--json", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        import socket
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return p, port


def send(port, *args):
    r = subprocess.run([str(BLASTER), "send", "--to", f"127.0.0.1:{port}", "--json", "-q", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def finish(sink):
    out, err = sink.communicate(timeout=60)
    return json.loads(out), sink.returncode


def test_send_and_sink_reconcile_exactly_over_10k(tmp_path):
    acc = tmp_path / "accepted.txt"
    # The probe connection in start_sink does not count: exit after exactly the sent messages.
    sink, port = start_sink("--exit-after", "10000")
    rep = send(port, "-n", "10000", "-c", "40", "--rcpts", "2", "--domains", "a.test=3,b.test=1",
               "--size", "200-6000", "--dot-lines", "--eight-bit", "--accepted-log", str(acc))
    assert rep["accepted"] == 10000 and rep["errors"] == 0
    assert rep["accept_latency"]["count"] == 10000
    sink_rep, _ = finish(sink)
    assert sink_rep["received"] == 10000 and sink_rep["recipients"] == 20000
    assert sink_rep["duplicates"] == 0 and sink_rep["corrupted"] == 0 and sink_rep["unstamped"] == 0
    # Reconcile against the accepted log with a second sink run that receives nothing: every id missing.
    lines = acc.read_text().split()
    assert len(acc.read_text().splitlines()) == 10000
    check, port2 = start_sink("--expect", str(acc), "--duration", "0.5s")
    rep2, code = finish(check)
    assert rep2["missing"] == 20000 and code == 3, "the loss check reports every accepted-but-missing pair"
    d = sink_rep["domains"]
    assert 0.70 < d["a.test"]["recipients"] / 20000 < 0.80, d


def test_expect_reports_no_loss_when_everything_arrived(tmp_path):
    acc = tmp_path / "accepted.txt"
    # The sink starts first and reads the accepted log when the run ends (the crash-test flow).
    sink, port = start_sink("--exit-after", "2000", "--expect", str(acc))
    send(port, "-n", "2000", "-c", "10", "--rcpts", "3", "--accepted-log", str(acc))
    rep, code = finish(sink)
    assert rep["received"] == 2000
    assert rep["missing"] == 0 and code == 0, rep["missing_sample"]


def test_fault_modes_produce_the_configured_shares():
    n = 40000
    sink, port = start_sink("--rcpt-temp", "0.1", "--rcpt-perm", "0.1", "--data-temp", "0.05",
                            "--data-perm", "0.05", "--duration", "60s")
    rep = send(port, "-n", str(n), "-c", "40")
    sink.send_signal(2)
    srep, _ = finish(sink)
    f = srep["faults"]
    assert abs(f["rcpt_451"] / n - 0.10) <= 0.005, f
    assert abs(f["rcpt_550"] / n - 0.10) <= 0.005, f
    reached_data = n - f["rcpt_451"] - f["rcpt_550"]
    assert abs(f["data_451"] / reached_data - 0.05) <= 0.0025, f
    assert abs(f["data_554"] / reached_data - 0.05) <= 0.0025, f
    assert rep["temp_failures"] == f["rcpt_451"] + f["data_451"]
    assert rep["perm_failures"] == f["rcpt_550"] + f["data_554"]
    assert rep["accepted"] == srep["received"]


def test_banner_421_and_connection_cap_are_counted():
    sink, port = start_sink("--banner-421", "0.2", "--max-connections", "5", "--duration", "30s")
    rep = send(port, "-n", "3000", "-c", "20")
    sink.send_signal(2)
    srep, _ = finish(sink)
    assert srep["faults"]["banner_421"] > 0
    assert srep["shaping_violations"] > 0
    assert srep["peak_connections"] <= 5
    assert rep["accepted"] == srep["received"]


def test_open_loop_latency_counts_from_the_intended_send_time():
    # Each command waits 20 ms at the sink: EHLO, then MAIL, RCPT, DATA and the final dot
    # cost at least 80 ms per message.
    sink, port = start_sink("--delay", "20ms", "--duration", "60s")
    closed = send(port, "-n", "40", "-c", "2")
    # Open loop at 100 msg/s over 2 connections that can do ~25 msg/s: the schedule runs ahead,
    # and the latency of late messages must include their wait (no coordinated omission).
    opened = send(port, "-n", "100", "-c", "2", "--rate", "100")
    sink.send_signal(2)
    finish(sink)
    assert 80_000 <= closed["accept_latency"]["p50_us"] < 200_000, closed
    assert closed["accept_latency"]["max_us"] < 400_000, closed
    assert opened["accept_latency"]["max_us"] > 2_000_000, opened
    assert opened["accept_latency"]["p50_us"] > 1_000_000, opened


def test_data_path_reconciles_too_when_chunking_is_off(tmp_path):
    acc = tmp_path / "accepted.txt"
    sink, port = start_sink("--exit-after", "3000", "--expect", str(acc))
    rep = send(port, "-n", "3000", "-c", "10", "--no-chunking", "--dot-lines", "--eight-bit", "--size", "100-3000",
               "--accepted-log", str(acc))
    srep, code = finish(sink)
    assert rep["accepted"] == 3000 and srep["received"] == 3000
    assert code == 0 and srep["missing"] == 0 and srep["corrupted"] == 0 and srep["duplicates"] == 0
