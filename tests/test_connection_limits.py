"""Per-address connection ceilings with real sockets: a session counts against its client's
address only while it lasts (a client that got its 221 and reconnects at once is never refused
for it), and clients in relay_networks have their own, larger ceiling."""
import shutil
import socket
import subprocess

from conftest import Ringpost

NOT_RELAY = "127.0.0.2"  # outside relay_networks = ["127.0.0.1/32"] below


def start(tmp_path, sink, per_ip, extra=""):
    rp = Ringpost(tmp_path, sink.port, extra)
    rp.config.write_text(rp.config.read_text()
                         .replace('relay_networks = ["127.0.0.0/8"]', 'relay_networks = ["127.0.0.1/32"]')
                         .replace("max_connections_per_ip = 200", f"max_connections_per_ip = {per_ip}"))
    return rp.start()


def read_reply(s):
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def greeting(port, src):
    s = socket.create_connection(("127.0.0.1", port), source_address=(src, 0), timeout=10)
    return s, read_reply(s)


def test_a_session_that_said_goodbye_no_longer_counts(tmp_path, sink):
    # One session allowed per address: every new connection made right after the previous
    # session's 221 must be admitted. Before the fix the ended session still counted while
    # its socket was being closed, and the next connection got 421.
    rp = start(tmp_path, sink, per_ip=1)
    try:
        for i in range(5000):
            s, hello = greeting(rp.port, NOT_RELAY)
            assert hello.startswith("220"), f"session {i}: {hello!r}"
            s.sendall(b"EHLO c.test\r\nQUIT\r\n")
            out = ""
            while "221" not in out:
                got = read_reply(s)
                assert got, f"session {i}: closed before 221: {out!r}"
                out += got
            s.close()
    finally:
        rp.stop()


def test_smtp_source_with_50_sessions_from_one_address_is_never_refused(tmp_path, sink):
    # smtp-source's pattern (connect, HELO, MAIL, RCPT, DATA, QUIT per message) with as many
    # parallel sessions as the per-address ceiling of a client outside relay_networks.
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    rp = Ringpost(tmp_path, sink.port, 'local_domains = ["example.org"]')
    rp.config.write_text(rp.config.read_text()
                         .replace('relay_networks = ["127.0.0.0/8"]', 'relay_networks = ["127.0.0.2/32"]')
                         .replace("max_connections_per_ip = 200", "max_connections_per_ip = 50"))
    rp.start()
    try:
        n = 5000
        r = subprocess.run([source, "-s", "50", "-m", str(n), "-l", "200", "-f", "a@b.test", "-t", "r@example.org",
                            f"127.0.0.1:{rp.port}"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "421" not in r.stderr + r.stdout, (r.returncode, r.stderr[-2000:])
        rp.wait_final(n, timeout=60)
        receptions = [e for e in rp.events() if e["type"] == "Reception"]
        assert len(receptions) == n
    finally:
        rp.stop()


def test_relay_networks_have_their_own_larger_ceiling(tmp_path, sink):
    rp = start(tmp_path, sink, per_ip=2, extra="max_connections_per_relay_ip = 4")
    held = []
    try:
        # Outside relay_networks: two sessions, the third is refused.
        for _ in range(2):
            s, hello = greeting(rp.port, NOT_RELAY)
            assert hello.startswith("220"), hello
            held.append(s)
        s, hello = greeting(rp.port, NOT_RELAY)
        assert hello.startswith("421 4.7.0") and "from your address" in hello, hello
        s.close()
        # Inside relay_networks: four, counted apart from the other address; the fifth is refused.
        for _ in range(4):
            s, hello = greeting(rp.port, "127.0.0.1")
            assert hello.startswith("220"), hello
            held.append(s)
        s, hello = greeting(rp.port, "127.0.0.1")
        assert hello.startswith("421 4.7.0"), hello
        s.close()
    finally:
        for s in held:
            s.close()
        rp.stop()


def test_relay_ceiling_defaults_far_above_the_per_address_one(tmp_path, sink):
    # No max_connections_per_relay_ip in the config: 60 sessions from a relay address (over the
    # per-address 50) are all admitted, while a client outside relay_networks gets its 50.
    rp = start(tmp_path, sink, per_ip=50)
    held = []
    try:
        for i in range(60):
            s, hello = greeting(rp.port, "127.0.0.1")
            assert hello.startswith("220"), f"relay session {i}: {hello!r}"
            held.append(s)
        for i in range(50):
            s, hello = greeting(rp.port, NOT_RELAY)
            assert hello.startswith("220"), f"session {i}: {hello!r}"
            held.append(s)
        s, hello = greeting(rp.port, NOT_RELAY)
        assert hello.startswith("421 4.7.0"), hello
        s.close()
    finally:
        for s in held:
            s.close()
        rp.stop()
