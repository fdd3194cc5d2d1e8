"""TLS with real peers: smtplib.starttls() and `openssl s_client -starttls smtp` inject over TLS;
ringpost delivers over TLS to aiosmtpd with an SSL context; STARTTLS command injection is refused."""
import smtplib
import socket
import ssl
import subprocess
import time

import pytest
from aiosmtpd.controller import Controller

from conftest import Ringpost, SinkHandler, free_port, strip_trace


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ringpost test CA")
    (d / "ext.cnf").write_text("subjectAltName=DNS:mta.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=mta.test")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=other CA")
    return d


def tls_ringpost(tmp_path, sink_port, pki, delivery_tls=""):
    rp = Ringpost(tmp_path, sink_port, delivery_extra=delivery_tls,
                  tail=f'[tls]\ncert_file = "{pki / "server.pem"}"\nkey_file = "{pki / "server.key"}"\n')
    return rp.start()


def client_ctx(pki):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.check_hostname = False
    return ctx


def server_ctx(pki):
    """A destination's TLS context with the test CA's server certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    return ctx


def wait_final(rp, n=1):
    return rp.wait_final(n, timeout=20)


def test_smtplib_starttls_injection(tmp_path, sink, pki):
    rp = tls_ringpost(tmp_path, sink.port, pki)
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.ehlo("client.test")
            assert s.has_extn("starttls")
            s.starttls(context=client_ctx(pki))
            s.ehlo("client.test")
            assert not s.has_extn("starttls"), "not offered again inside TLS"
            s.sendmail("a@b.test", ["tls@example.org"], b"Subject: over tls\r\n\r\nsecret\r\n")
        wait_final(rp)
        content = sink.snapshot()[0][2]
        assert b"with ESMTPS" in content
        rec = [e for e in rp.events() if e["type"] == "Reception"][0]
        assert rec["tls"].startswith("TLSv1_"), rec
    finally:
        rp.stop()


def test_openssl_s_client_starttls_injection(tmp_path, sink, pki):
    rp = tls_ringpost(tmp_path, sink.port, pki)
    try:
        script = (b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<osc@example.org>\r\nDATA\r\n"
                  b"Subject: via s_client\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        p = subprocess.Popen(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{rp.port}",
                              "-CAfile", str(pki / "ca.pem"), "-quiet", "-ign_eof"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.0)
        out, err = p.communicate(script, timeout=30)
        assert b"250 2.0.0 Ok: queued as" in out, out + err
        wait_final(rp)
        assert strip_trace(sink.snapshot()[0][2]).endswith(b"hello\r\n")
    finally:
        rp.stop()


def test_plaintext_injected_after_starttls_is_discarded(tmp_path, sink, pki):
    rp = tls_ringpost(tmp_path, sink.port, pki)
    try:
        raw = socket.create_connection(("127.0.0.1", rp.port), timeout=5)
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        # The classic attack: commands pipelined after STARTTLS in the same plaintext packet.
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.org>\r\n")
        assert f.readline().startswith(b"220 2.0.0")
        tls = client_ctx(pki).wrap_socket(raw, server_hostname="mta.test")
        tf = tls.makefile("rb")
        tls.sendall(b"NOOP\r\n")
        assert tf.readline().startswith(b"250 2.0.0 Ok"), "the first reply inside TLS answers our NOOP, not injected commands"
        tls.sendall(b"RCPT TO:<x@example.org>\r\n")
        assert tf.readline().startswith(b"503 5.5.1"), "no transaction survived the handshake"
        tls.sendall(b"MAIL FROM:<a@b.test>\r\n")
        assert tf.readline().startswith(b"503 5.5.1"), "EHLO is required again after STARTTLS"
        tls.close()
    finally:
        rp.stop()


@pytest.fixture
def tls_sink(pki):
    handler = SinkHandler()
    ctx = server_ctx(pki)
    port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False, tls_context=ctx, require_starttls=False)
    ctl.start()
    handler.port = port
    yield handler
    ctl.stop()


def test_delivers_over_verified_tls_and_logs_version_and_cipher(tmp_path, tls_sink, pki):
    rp = Ringpost(tmp_path, tls_sink.port, delivery_extra=f'tls = "required"\ntls_verify = "ca"\ntls_ca_file = "{pki / "ca.pem"}"').start()
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("a@b.test", ["out@example.org"], b"Subject: out\r\n\r\nover tls\r\n")
        e = wait_final(rp)[0]
        assert e["type"] == "Delivery" and e["tls"].startswith("TLSv1_"), e
        assert "TLS" in e["tls"] and "_" in e["tls"].split(" ", 1)[1], "cipher suite is logged"
    finally:
        rp.stop()


def test_required_tls_without_starttls_is_a_temporary_failure(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, delivery_extra='tls = "required"\nmax_age_s = 1.5').start()
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("<>", ["req@example.org"], b"Subject: x\r\n\r\nx\r\n")
        e = wait_final(rp)[0]
        assert e["type"] == "Expiration"
        t = [x for x in rp.events() if x["type"] == "TransientFailure"]
        assert t and t[0]["response"].startswith("451 4.7.5"), t
        assert sink.snapshot() == [], "nothing went out in plaintext"
    finally:
        rp.stop()


def test_opportunistic_falls_back_to_plaintext_after_a_failed_handshake(tmp_path, tls_sink, pki):
    # Verification against the wrong CA makes the handshake fail.
    rp = Ringpost(tmp_path, tls_sink.port, delivery_extra=f'tls_verify = "ca"\ntls_ca_file = "{pki / "other.pem"}"').start()
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("a@b.test", ["opp@example.org"], b"Subject: x\r\n\r\nx\r\n")
        e = wait_final(rp)[0]
        assert e["type"] == "Delivery" and "tls" not in e, e
    finally:
        rp.stop()


def test_opportunistic_without_fallback_defers(tmp_path, tls_sink, pki):
    rp = Ringpost(tmp_path, tls_sink.port,
                  delivery_extra=f'tls_verify = "ca"\ntls_ca_file = "{pki / "other.pem"}"\ntls_plaintext_fallback = false\nmax_age_s = 1.5').start()
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("<>", ["nofb@example.org"], b"Subject: x\r\n\r\nx\r\n")
        e = wait_final(rp)[0]
        assert e["type"] == "Expiration"
        assert tls_sink.snapshot() == []
    finally:
        rp.stop()


def auth_ringpost(tmp_path, sink_port, pki):
    from conftest import BINARY
    h = subprocess.run([str(BINARY), "--hash-password"], input="s3cret pass\n", capture_output=True, text=True, check=True).stdout.strip()
    assert h.startswith("$argon2id$")
    trusted = free_port()
    rp = Ringpost(tmp_path, sink_port, tail=f'[tls]\ncert_file = "{pki / "server.pem"}"\nkey_file = "{pki / "server.key"}"\n'
                  f'[auth]\nusers = [{{ name = "app", password_hash = "{h}" }}]\nplaintext_listeners = ["127.0.0.1:{trusted}"]\n'
                  f'max_failures = 3\nfailure_delay_ms = 200\n')
    # Only 127.0.0.1/32 may relay without AUTH; clients from 127.0.0.2 must authenticate.
    text = rp.config.read_text().replace('relay_networks = ["127.0.0.0/8"]', 'relay_networks = ["127.0.0.1/32"]')
    rp.config.write_text(text.replace(f'listen = ["127.0.0.1:{rp.port}"]', f'listen = ["127.0.0.1:{rp.port}", "127.0.0.1:{trusted}"]'))
    rp.start()
    return rp, trusted


def test_auth_plain_and_login_over_starttls_let_outside_clients_relay(tmp_path, sink, pki):
    rp, _ = auth_ringpost(tmp_path, sink.port, pki)
    try:
        for mech in ("PLAIN", "LOGIN"):
            with smtplib.SMTP("127.0.0.1", rp.port, source_address=("127.0.0.2", 0)) as s:
                s.ehlo("client.test")
                assert not s.has_extn("auth"), "AUTH is not offered before TLS"
                with pytest.raises(smtplib.SMTPRecipientsRefused):
                    s.sendmail("a@b.test", ["x@example.org"], b"Subject: x\r\n\r\nx\r\n")
                s.rset()
                s.starttls(context=client_ctx(pki))
                s.ehlo("client.test")
                assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
                s.user, s.password = "app", "s3cret pass"
                code, _ = s.auth(mech, getattr(s, "auth_" + mech.lower()))
                assert code == 235
                s.sendmail("a@b.test", [f"{mech}@example.org"], b"Subject: authed\r\n\r\nx\r\n")
        rp.wait_final(2)
    finally:
        rp.stop()


def test_auth_on_a_trusted_plaintext_listener_and_failures_are_limited(tmp_path, sink, pki):
    rp, trusted = auth_ringpost(tmp_path, sink.port, pki)
    try:
        with smtplib.SMTP("127.0.0.1", trusted, source_address=("127.0.0.2", 0)) as s:
            s.ehlo("client.test")
            assert s.has_extn("auth"), "offered without TLS on the trusted listener"
            s.login("app", "s3cret pass")
        with smtplib.SMTP("127.0.0.1", trusted, source_address=("127.0.0.2", 0)) as s:
            s.ehlo("client.test")
            s.user, s.password = "app", "wrong"
            t0 = time.time()
            for i in range(2):
                with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                    s.auth("PLAIN", s.auth_plain)
                assert e.value.smtp_code == 535 and b"5.7.8" in e.value.smtp_error
            assert time.time() - t0 >= 0.4, "failed attempts are slowed down"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.auth("PLAIN", s.auth_plain)
            # The third failure is followed by 421 and the end of the session.
            try:
                code = s.noop()[0]
            except smtplib.SMTPServerDisconnected:
                code = 421
            assert code == 421
    finally:
        rp.stop()


def served_cert_subject(port):
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"EHLO c.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\n")
    f.readline()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(raw)
    der = tls.getpeercert(binary_form=True)
    tls.close()
    return subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der, capture_output=True).stdout


def test_sighup_reloads_the_certificate(tmp_path, sink, pki):
    import shutil
    import signal as sig
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(pki / "server.pem", cert)
    shutil.copy(pki / "server.key", key)
    rp = Ringpost(tmp_path, sink.port, tail=f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n').start()
    try:
        assert b"mta.test" in served_cert_subject(rp.port)
        shutil.copy(pki / "other.pem", cert)
        shutil.copy(pki / "other.key", key)
        rp.proc.send_signal(sig.SIGHUP)
        time.sleep(0.5)
        assert b"other CA" in served_cert_subject(rp.port)
        assert b"other CA" in served_cert_subject(rp.port), "every core reloaded"
    finally:
        rp.stop()


def test_a_reply_injected_before_the_outbound_handshake_is_discarded(tmp_path, pki):
    """The client side of the STARTTLS injection (CVE-2011-0411's kind): a destination (or a
    man in the middle) sends a forged reply in the same plaintext packet as its 220 to
    STARTTLS. ringpost must drop it with everything else read before the handshake: taken as
    the answer to the EHLO sent over TLS, the 554 would make it fall back to HELO and every
    reply after would answer the wrong command."""
    import threading
    ctx = server_ctx(pki)
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    seen, done = [], threading.Event()

    def serve():
        conn, _ = lsock.accept()
        conn.settimeout(20)
        f = conn.makefile("rb")
        conn.sendall(b"220 forger.test ESMTP\r\n")
        assert f.readline().startswith(b"EHLO")
        conn.sendall(b"250-forger.test\r\n250 STARTTLS\r\n")
        assert f.readline() == b"STARTTLS\r\n"
        conn.sendall(b"220 2.0.0 Ready to start TLS\r\n554 5.7.0 forged before the handshake\r\n")
        t = ctx.wrap_socket(conn, server_side=True)
        tf = t.makefile("rb")
        while True:
            line = tf.readline()
            if not line:
                break
            verb = line.split(b" ")[0].split(b":")[0].strip().upper()
            seen.append(verb.decode())
            if verb == b"DATA":
                t.sendall(b"354 go on\r\n")
                while tf.readline() not in (b".\r\n", b""):
                    pass
                t.sendall(b"250 2.0.0 stored\r\n")
            elif verb == b"QUIT":
                t.sendall(b"221 2.0.0 bye\r\n")
                break
            else:
                t.sendall(b"250 2.0.0 ok\r\n")
        t.close()
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    rp = Ringpost(tmp_path, port, delivery_extra=f'tls = "required"\ntls_verify = "ca"\ntls_ca_file = "{pki / "ca.pem"}"\nidle_timeout_s = 1').start()
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("a@b.test", ["forged@example.org"], b"Subject: forged\r\n\r\nx\r\n")
        e = wait_final(rp)[0]
        assert e["type"] == "Delivery" and e["response"] == "250 2.0.0 stored" and e["tls"].startswith("TLSv1_"), e
        assert done.wait(20), seen
        assert seen == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"], "over TLS, each command got its own reply"
    finally:
        rp.stop()
        lsock.close()
