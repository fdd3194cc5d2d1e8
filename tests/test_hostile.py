"""Hostile and broken clients against the real daemon over real sockets."""
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import BINARY, Ringpost


def converse(port, script: bytes, src="127.0.0.1", wait=1.0):
    """Send `script` at once (pipelined) and return everything the server says until it closes
    or goes quiet for `wait` seconds."""
    s = socket.create_connection(("127.0.0.1", port), source_address=(src, 0), timeout=wait)
    s.sendall(script)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return out.decode(errors="replace")


ENVELOPE = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n"


def test_smtp_smuggling_is_refused_and_nothing_is_relayed(ringpost, sink):
    rp = ringpost()
    out = converse(rp.port, ENVELOPE + b"Subject: hi\r\n\r\nhi\n.\nMAIL FROM:<evil@b.test>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nspoofed\r\n.\r\nNOOP\r\n")
    assert "554 5.5.2" in out
    assert out.count("\r\n250 2.0.0 Ok: queued") == 0 and "queued as" not in out
    assert out.rstrip().endswith("250 2.0.0 Ok"), "the session stays usable"
    time.sleep(1)
    assert sink.snapshot() == []


def test_long_lines_and_oversize_messages(ringpost, sink):
    rp = ringpost(extra="max_message_size = 100000")
    out = converse(rp.port, b"EHLO c.test\r\nNOOP " + b"x" * 600 + b"\r\nNOOP\r\n")
    assert "500 5.5.2" in out and out.rstrip().endswith("250 2.0.0 Ok")
    out = converse(rp.port, ENVELOPE + b"a" * 1200 + b"\r\n.\r\nNOOP\r\n")
    assert "500 5.5.2" in out
    out = converse(rp.port, ENVELOPE + (b"y" * 998 + b"\r\n") * 150 + b".\r\nNOOP\r\n", wait=2)
    assert "552 5.3.4" in out and out.rstrip().endswith("250 2.0.0 Ok")
    out = converse(rp.port, b"EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=200000\r\n")
    assert "552 5.3.4" in out
    time.sleep(0.5)
    assert sink.snapshot() == [], "refused messages are never spooled or relayed"


def test_relay_denied_outside_relay_networks(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, "").start()
    try:
        rp.config.write_text(rp.config.read_text().replace('relay_networks = ["127.0.0.0/8"]', 'relay_networks = ["127.0.0.1/32"]'))
        rp.stop()
        rp.start()
        out = converse(rp.port, b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.org>\r\n", src="127.0.0.2")
        assert "554 5.7.1" in out
        out = converse(rp.port, b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.org>\r\n", src="127.0.0.1")
        assert "250 2.1.5" in out
    finally:
        rp.stop()


def test_connection_limit_per_ip_answers_421(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, "").start()
    # A client outside relay_networks (those have max_connections_per_relay_ip instead).
    rp.config.write_text(rp.config.read_text().replace("max_connections_per_ip = 200", "max_connections_per_ip = 3")
                         .replace('relay_networks = ["127.0.0.0/8"]', 'relay_networks = ["127.0.0.1/32"]'))
    rp.stop()
    rp.start()
    try:
        held = [socket.create_connection(("127.0.0.1", rp.port), source_address=("127.0.0.2", 0)) for _ in range(3)]
        for h in held:
            assert h.recv(100).startswith(b"220")
        extra = socket.create_connection(("127.0.0.1", rp.port), source_address=("127.0.0.2", 0), timeout=5)
        assert extra.recv(200).startswith(b"421 4.7.0")
        for h in held:
            h.close()
    finally:
        rp.stop()


def test_idle_client_is_cut_with_421(ringpost, sink):
    rp = ringpost(extra="command_timeout_s = 1")
    s = socket.create_connection(("127.0.0.1", rp.port), timeout=5)
    assert s.recv(100).startswith(b"220")
    s.sendall(b"EHLO c.test\r\n")
    t0 = time.time()
    data = b""
    while not data.endswith(b"\r\n") or b"421" not in data:
        chunk = s.recv(1000)
        if not chunk:
            break
        data += chunk
    assert b"421 4.4.2" in data
    assert 0.8 < time.time() - t0 < 4


def test_trickling_command_is_cut_even_if_bytes_keep_coming(ringpost, sink):
    rp = ringpost(extra="command_timeout_s = 1")
    s = socket.create_connection(("127.0.0.1", rp.port), timeout=5)
    s.recv(100)
    t0 = time.time()
    cut = False
    for c in b"EHLO slowly.example.test":
        try:
            s.sendall(bytes([c]))
        except OSError:
            cut = True
            break
        time.sleep(0.15)
        if time.time() - t0 > 3:
            break
    s.settimeout(2)
    try:
        data = s.recv(1000)
    except OSError:
        data = b""
    assert cut or b"421" in data


def test_disk_full_answers_452_and_loses_nothing(tmp_path, sink):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    rp = None
    try:
        rp = Ringpost(tmp_path, sink.port, "")
        rp.config.write_text(rp.config.read_text().replace(str(tmp_path / "spool"), str(mnt / "spool")).replace("segment_size = 8388608", "segment_size = 4194304"))
        rp.start()
        # Held, so no delivery can free a segment before the disk is full: without this the
        # first segment was sometimes delivered and deleted in time and nothing was refused.
        assert rp.ctl("suspend", "example.org")[0] == 0
        # 1.5 MB each: a 4 MiB segment (preallocated) holds two, and a second segment, on
        # either core, does not fit in the 6 MiB disk. Whichever core takes each session, one
        # or two are accepted and the rest refused. With 1 MB messages all four fitted in one
        # segment whenever the kernel gave every session to the same core.
        body = b"Subject: fill\r\n\r\n" + (b"z" * 998 + b"\r\n") * 1500
        script = ENVELOPE + body + b".\r\n"
        outs = [converse(rp.port, script, wait=3) for _ in range(4)]
        assert all("250 2.0.0 Ok: queued" in o or "452 4.3.1" in o for o in outs), outs
        queued = sum("250 2.0.0 Ok: queued" in o for o in outs)
        assert queued in (1, 2), outs
        assert sink.snapshot() == [], "nothing delivered while held"
        assert rp.ctl("resume", "example.org")[0] == 0
        rp.wait_final(queued)
        assert len(sink.snapshot()) == queued, "every message that got 250 is delivered"
    finally:
        if rp:
            rp.stop(signal.SIGKILL)
        subprocess.run(["umount", "-l", str(mnt)])


def test_check_config_names_the_offending_key_and_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = ["127.0.0.1:2525"]\nmax_recipents = 500\n')
    r = subprocess.run([str(BINARY), "--check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "max_recipents" in r.stderr and "line 3" in r.stderr, r.stderr
    bad.write_text('[server]\nmax_recipients = 5\n')
    r = subprocess.run([str(BINARY), "--check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "server.max_recipients" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text(subprocess.run([str(BINARY), "--print-default-config"], capture_output=True, text=True).stdout)
    assert subprocess.run([str(BINARY), "--check-config", str(good)]).returncode == 0


def test_runs_with_the_embedded_default_config(tmp_path):
    p = subprocess.Popen([str(BINARY)], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", 2525), timeout=1) as s:
                    assert s.recv(100).startswith(b"220 mta.example ESMTP")
                break
            except OSError:
                if time.time() > deadline or p.poll() is not None:
                    pytest.fail("default config did not serve on 127.0.0.1:2525")
                time.sleep(0.1)
        assert (tmp_path / "var" / "spool").is_dir()
    finally:
        p.terminate()
        assert p.wait(timeout=20) == 0


def test_raises_its_open_file_limit_and_warns_when_the_hard_limit_is_too_low(tmp_path):
    def start(limits):
        p = subprocess.Popen(["prlimit", f"--nofile={limits}", str(BINARY)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", 2525), timeout=1) as s:
                    assert s.recv(100).startswith(b"220 ")
                return p
            except OSError:
                if time.time() > deadline or p.poll() is not None:
                    p.kill()
                    pytest.fail(f"did not serve under prlimit {limits}: {p.stderr.read()}")
                time.sleep(0.1)

    def soft_limit(p):
        line = next(l for l in open(f"/proc/{p.pid}/limits") if l.startswith("Max open files"))
        return int(line.split()[3])

    # The usual soft limit of 1024 is far below the default connection cap: raised to the hard one.
    p = start("1024:16000")
    try:
        assert soft_limit(p) == 16000
    finally:
        p.terminate()
        assert p.wait(timeout=20) == 0
    assert "open-file limit" not in p.stderr.read()
    # A hard limit below what the configuration can open is named at start.
    p = start("512:512")
    try:
        assert soft_limit(p) == 512
    finally:
        p.terminate()
        p.wait(timeout=20)
    assert "WARNING: open-file limit 512" in p.stderr.read()


def test_out_of_descriptors_the_accept_loop_pauses_instead_of_spinning(tmp_path):
    p = subprocess.Popen(["prlimit", "--nofile=160:160", str(BINARY)], cwd=tmp_path, stderr=subprocess.DEVNULL)
    clients = []
    try:
        deadline = time.time() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", 2525), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and p.poll() is None, "did not start"
                time.sleep(0.1)
        # More connections than the daemon has descriptors left: the rest wait in the backlog
        # and every accept fails with EMFILE.
        # A connect was once reset in CI (cause not found, noted in the eighteenth session's
        # note); a reset client is retried so the backlog still holds 200: what is measured is
        # the daemon's CPU while they wait, not the handshake.
        for _ in range(200):
            for attempt in range(3):
                try:
                    clients.append(socket.create_connection(("127.0.0.1", 2525), timeout=2))
                    break
                except ConnectionResetError:
                    if attempt == 2:
                        raise
        time.sleep(1)
        ticks = lambda: sum(int(x) for x in open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[11:13])
        t0 = ticks()
        time.sleep(3)
        cpu_s = (ticks() - t0) / os.sysconf("SC_CLK_TCK")
        assert cpu_s < 0.5, f"the daemon used {cpu_s:.2f} s of CPU in 3 s while out of descriptors"
        for c in clients:
            c.close()
        clients = []
        deadline = time.time() + 10
        while True:  # descriptors free again: new clients are served
            try:
                with socket.create_connection(("127.0.0.1", 2525), timeout=2) as s:
                    if s.recv(100).startswith(b"220 "):
                        break
            except OSError:
                pass
            assert time.time() < deadline, "not served once descriptors were free"
            time.sleep(0.2)
    finally:
        for c in clients:
            c.close()
        p.terminate()
        p.wait(timeout=20)

