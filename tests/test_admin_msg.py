"""`ringctl msg` by Message-ID, with the history of finished messages, and the suppression
list over the admin socket (issue 10 item msg, issue 11 item 6).

- a message is found by its Message-ID (with or without <>) mid-retry, after a crash (the id
  is read back from the spooled body at recovery), and after delivery from the history, with
  attempts, last response and bounce category per recipient;
- the history forgets a finished message once `[admin] history` has passed;
- suppress add / check / list / remove: add is refused at RCPT with 550 5.1.1 and the reason,
  survives a restart, remove accepts again; exit codes 0 / 1.
"""
import signal
import smtplib
import time

from conftest import Ringpost, wait_for
from test_admin import arrived_for, queue_id_of, slow_retries


def send_with_id(rp, rcpts, message_id, sender="sender@src.test"):
    body = f"Message-ID: <{message_id}>\r\nSubject: t\r\n\r\nbody\r\n".encode()
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.sendmail(sender, rcpts, body)


def with_admin(rp, line):
    """Add `line` to the [admin] section of the daemon's config."""
    text = rp.config.read_text()
    rp.config.write_text(text.replace("[admin]\n", f"[admin]\n{line}\n", 1))


def test_msg_by_message_id_mid_retry_after_a_crash_and_after_delivery(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2)
    slow_retries(rp)
    rp.start()
    try:
        send_with_id(rp, ["tempfail-m@later.test", "ok@now.test", "reject-x@now.test"], "20261126.1@app.test")
        wait_for(lambda: any(e["type"] == "TransientFailure" for e in rp.events()), "first attempt deferred")
        qid = queue_id_of(rp, "tempfail-m@later.test")
        rp.wait_final(2)
        for ask in ("<20261126.1@app.test>", "20261126.1@app.test"):
            rc, m, _ = rp.ctl("msg", ask)
            assert rc == 0, m
            m = m["Msg"]
            assert (m["id"], m["message_id"], m["finished"]) == (qid, "20261126.1@app.test", False)
            r = m["recipients"]
            assert (r[0]["state"], r[0]["attempts"]) == ("Deferred", 1)
            assert r[0]["last_response"].startswith("451 4.3.0")
            assert (r[1]["state"], r[1]["attempts"]) == ("Delivered", 1)
            assert r[1]["last_response"].startswith("250 2.0.0 OK stored"), r[1]
            assert (r[2]["state"], r[2]["category"]) == ("Bounced", "bad-mailbox"), r[2]
        assert rp.ctl("msg", "<nobody@app.test>")[0] == 1, "an unknown Message-ID is refused (exit 1)"

        # A crash: the Message-ID is recovered from the spooled body.
        rp.stop(signal.SIGKILL)
        rp.start()
        rc, m, _ = rp.ctl("msg", "<20261126.1@app.test>")
        assert rc == 0, m
        assert (m["Msg"]["id"], m["Msg"]["message_id"]) == (qid, "20261126.1@app.test")
        assert [x["state"] for x in m["Msg"]["recipients"]] == ["Deferred", "Delivered", "Bounced"]

        assert rp.ctl("retry", "later.test")[0] == 0
        wait_for(lambda: arrived_for(sink, "later.test"), "delivered after retry", timeout=10)
        m = wait_for(lambda: (lambda r: r[0] == 0 and r[1]["Msg"]["finished"] and r[1])(rp.ctl("msg", "20261126.1@app.test")),
                     "the finished message in the history")["Msg"]
        assert m["id"] == qid
        r = m["recipients"]
        assert (r[0]["state"], r[0]["attempts"]) == ("Delivered", 2), r[0]
        assert r[0]["last_response"].startswith("250 2.0.0 OK stored")
        # By queue id too, and in the human table.
        rc, text, _ = rp.ctl("msg", qid, json_out=False)
        assert rc == 0 and "finished: from the history" in text and "<20261126.1@app.test>" in text, text
    finally:
        rp.stop()


def test_the_history_forgets_a_finished_message_after_its_window(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2)
    with_admin(rp, 'history = "2s"')
    rp.start()
    try:
        send_with_id(rp, ["a@now.test"], "short.1@app.test")
        rp.wait_final(1)
        rc, m, _ = wait_for(lambda: (lambda r: r[0] == 0 and r)(rp.ctl("msg", "short.1@app.test")), "in the history")
        assert m["Msg"]["finished"] is True and m["Msg"]["recipients"][0]["state"] == "Delivered"
        time.sleep(2.5)
        rc, _, err = rp.ctl("msg", "short.1@app.test")
        assert rc == 1, "evicted once [admin] history has passed"
    finally:
        rp.stop()


def rcpt_reply(rp, rcpt):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("sender@b.test")
        return s.rcpt(rcpt)


def test_suppress_add_check_list_remove_over_the_socket_and_across_a_restart(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port).start()
    journal = tmp_path / "spool" / "suppression.jsonl"
    try:
        assert rcpt_reply(rp, "bob@x.test")[0] == 250
        rc, out, _ = rp.ctl("suppress", "add", "Bob@X.test", "--reason", "asked to be removed")
        assert rc == 0, out
        assert out["Suppression"]["total"] == 1 and out["Suppression"]["entries"][0]["manual"] is True
        # Durable before the reply: the journal line is there as soon as ringctl returns.
        assert '"addr":"Bob@X.test"' in journal.read_text()
        code, text = rcpt_reply(rp, "bob@x.test")
        assert code == 550 and text.startswith(b"5.1.1 <bob@x.test>: recipient suppressed (asked to be removed since "), text
        rc, out, _ = rp.ctl("suppress", "check", "BOB@x.test")
        e = out["Suppression"]["entries"]
        assert rc == 0 and [(x["addr"], x["reason"], x["category"]) for x in e] == [("Bob@X.test", "asked to be removed", "other")]
        assert rp.ctl("suppress", "add", "carol@y.test")[0] == 0
        rc, out, _ = rp.ctl("suppress", "list", "--limit", "10")
        assert rc == 0 and [x["addr"] for x in out["Suppression"]["entries"]] == ["Bob@X.test", "carol@y.test"]
        assert rp.ctl("suppress", "add", "not an address")[0] == 1
    finally:
        rp.stop()
    rp.start()
    try:
        code, text = rcpt_reply(rp, "bob@x.test")
        assert code == 550 and b"asked to be removed" in text, "the suppression and its reason survive a restart"
        rc, out, _ = rp.ctl("suppress", "remove", "bob@x.test")
        assert rc == 0, out
        assert rcpt_reply(rp, "bob@x.test")[0] == 250, "accepted again after remove"
        assert rp.ctl("suppress", "check", "bob@x.test")[0] == 1, "check exits 1 when not suppressed"
        assert rp.ctl("suppress", "remove", "bob@x.test")[0] == 1, "removing what is not listed exits 1"
        rc, text, _ = rp.ctl("suppress", "list", json_out=False)
        assert rc == 0 and "carol@y.test" in text and "Bob@X.test" not in text, text
    finally:
        rp.stop()
