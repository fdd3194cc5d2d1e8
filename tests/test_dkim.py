"""DKIM signatures made by ringpost, verified by dkimpy (an independent verifier) with a
dnsfunc serving the test keys: RSA-SHA256, Ed25519-SHA256 and dual-signed messages."""
import base64
import smtplib
import subprocess
import time

import dkim
import pytest

from conftest import Ringpost


def make_keys(tmp_path):
    keys = {}
    for alg, args in (("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]), ("ed", ["-algorithm", "ed25519"])):
        pem = tmp_path / f"{alg}.pem"
        subprocess.run(["openssl", "genpkey", *args, "-out", str(pem)], check=True, capture_output=True)
        der = subprocess.run(["openssl", "pkey", "-in", str(pem), "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
        if alg == "rsa":
            txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
        else:
            txt = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:])
        keys[alg] = (pem, txt)
    return keys


@pytest.fixture
def signing_ringpost(tmp_path, sink):
    keys = make_keys(tmp_path)
    rp = Ringpost(tmp_path, sink.port)
    rp.config.write_text(rp.config.read_text() + f"""
[[dkim]]
domain = "signer.test"
selector = "rsa2026"
algorithm = "rsa-sha256"
key_file = "{keys['rsa'][0]}"

[[dkim]]
domain = "signer.test"
selector = "ed2026"
algorithm = "ed25519-sha256"
key_file = "{keys['ed'][0]}"

[[dkim]]
domain = "edonly.test"
selector = "ed2026"
algorithm = "ed25519-sha256"
key_file = "{keys['ed'][0]}"

[[dkim]]
domain = "rsaonly.test"
selector = "rsa2026"
algorithm = "rsa-sha256"
key_file = "{keys['rsa'][0]}"
""")
    rp.start()
    records = {
        b"rsa2026._domainkey.signer.test.": keys["rsa"][1],
        b"ed2026._domainkey.signer.test.": keys["ed"][1],
        b"ed2026._domainkey.edonly.test.": keys["ed"][1],
        b"rsa2026._domainkey.rsaonly.test.": keys["rsa"][1],
    }
    yield rp, records
    rp.stop()


def dnsfunc_for(records):
    def dnsfunc(name, timeout=5):
        return records.get(name if name.endswith(b".") else name + b".")
    return dnsfunc


BODIES = {
    "eightbit": "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße — naïve café ✓\r\n".encode(),
    "empty": b"\r\n",
    "dots": b"\r\n.\r\n..two\r\n.leading dot\r\ntrailing spaces   \r\n\r\n\r\n",
    # A 3 KB header folded over many lines, and a folded Subject-like field.
    "longheaders": b"X-Long: " + b"\r\n\t".join(b" ".join(b"word%d" % (j * 10 + i) for i in range(10)) for j in range(40))
                   + b"\r\nThread-Topic: a\r\n\tfolded continuation line\r\n\r\nbody\r\n",
}


def send(rp, from_domain, name, body):
    msg = (f"From: Sender <news@{from_domain}>\r\nTo: <r@example.org>\r\nSubject: dkim {name}\r\n"
           f"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{name}.{from_domain}@test>\r\n").encode() + body
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        s.sendmail(f"news@{from_domain}", [f"{name}@example.org"], msg, mail_options=["BODY=8BITMIME"])


def received(sink, name, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for _, rcpts, content in sink.snapshot():
            if rcpts == [f"{name}@example.org"]:
                return content
        time.sleep(0.05)
    raise AssertionError(f"{name} not delivered")


def signatures(content):
    """The dkimpy verifier and, for each DKIM-Signature field, its tags (unfolded, RFC 6376 3.2)."""
    d = dkim.DKIM(content)
    head = content.split(b"\r\n\r\n", 1)[0]
    fields = head.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ").split(b"\r\n")
    sigs = []
    for f in fields:
        name, _, value = f.partition(b":")
        if name.strip().lower() == b"dkim-signature":
            tags = dict(t.strip().split(b"=", 1) for t in value.split(b";") if t.strip())
            sigs.append({k.strip(): b"".join(v.split()) for k, v in tags.items()})
    return d, sigs


@pytest.mark.parametrize("name", list(BODIES))
def test_dual_signed_messages_verify_with_dkimpy(signing_ringpost, sink, name):
    rp, records = signing_ringpost
    send(rp, "signer.test", name, BODIES[name])
    content = received(sink, name)
    d, sigs = signatures(content)
    assert len(sigs) == 2, content[:600]
    # Dual-signed: one RSA and one Ed25519 signature, each with its own selector.
    assert sorted((s[b"a"], s[b"s"]) for s in sigs) == [(b"ed25519-sha256", b"ed2026"), (b"rsa-sha256", b"rsa2026")], sigs
    assert all(s[b"d"] == b"signer.test" for s in sigs)
    for idx in range(2):
        assert d.verify(idx=idx, dnsfunc=dnsfunc_for(records)), f"signature {idx} of {name} fails: {content[:800]!r}"
    # No body length limit: an l= tag would let anyone append content under a valid signature.
    assert all(b"l" not in s for s in sigs), sigs


@pytest.mark.parametrize("domain,alg", [("edonly.test", b"ed25519-sha256"), ("rsaonly.test", b"rsa-sha256")])
def test_single_algorithm_signing_verifies(signing_ringpost, sink, domain, alg):
    rp, records = signing_ringpost
    send(rp, domain, "single" + domain[:3], BODIES["dots"])
    content = received(sink, "single" + domain[:3])
    d, sigs = signatures(content)
    assert len(sigs) == 1 and sigs[0][b"a"] == alg and sigs[0][b"d"] == domain.encode(), sigs
    assert d.verify(idx=0, dnsfunc=dnsfunc_for(records))


def test_from_and_subject_are_oversigned_and_tampering_fails(signing_ringpost, sink):
    rp, records = signing_ringpost
    send(rp, "signer.test", "tamper", b"\r\nbody\r\n")
    content = received(sink, "tamper")
    head = content.split(b"\r\n\r\n")[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ").decode()
    h = [part for part in head.split(";") if part.strip().startswith("h=")][0]
    names = [n.strip().lower() for n in h.split("=", 1)[1].split(":")]
    assert names.count("from") == 2 and names.count("subject") == 2 and names.count("to") == 2
    # A second From added after signing must break the signature (that is what over-signing buys).
    forged = content.replace(b"From: Sender", b"From: Evil <evil@x.test>\r\nFrom: Sender", 1)
    assert not dkim.DKIM(forged).verify(idx=0, dnsfunc=dnsfunc_for(records))
    assert dkim.DKIM(content).verify(idx=0, dnsfunc=dnsfunc_for(records))


def test_unconfigured_domain_is_not_signed(signing_ringpost, sink):
    rp, _ = signing_ringpost
    send(rp, "other.test", "unsigned", b"\r\nx\r\n")
    assert b"DKIM-Signature" not in received(sink, "unsigned")


def test_a_reload_applies_new_dkim_keys_to_the_next_message(tmp_path, sink):
    """`ringctl reload` swaps the signing keys live: a domain with no key is unsigned, then,
    after a key is added and the config reloaded, the next message is signed and verifies."""
    keys = make_keys(tmp_path)
    rp = Ringpost(tmp_path, sink.port).start()
    try:
        send(rp, "late.test", "before", b"\r\nx\r\n")
        assert b"DKIM-Signature" not in received(sink, "before")
        rp.config.write_text(rp.config.read_text() + f"""
[[dkim]]
domain = "late.test"
selector = "ed2026"
algorithm = "ed25519-sha256"
key_file = "{keys['ed'][0]}"
""")
        rc, out, _ = rp.ctl("reload")
        assert rc == 0 and "dkim" in out["Reload"]["applied"], out
        send(rp, "late.test", "after", b"\r\nx\r\n")
        d, sigs = signatures(received(sink, "after"))
        assert [(s[b"a"], s[b"d"]) for s in sigs] == [(b"ed25519-sha256", b"late.test")], sigs
        assert d.verify(idx=0, dnsfunc=dnsfunc_for({b"ed2026._domainkey.late.test.": keys["ed"][1]}))
    finally:
        rp.stop()
