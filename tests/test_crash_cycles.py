"""Never lose a 250'd message, shown through real processes: ringpost is killed with SIGKILL
under load again and again and restarted on the same spool while the destination switches
between down, slow and fast; then a 10k-message queue is recovered after a kill. The harness
is tests/crashkit.py (bench/crash-cycles.sh runs it at full size).

The last two tests break the chain on purpose (a sink that swallows a message, a spool segment
deleted between kill and restart) and check that the same verdict reports the loss: the checks
can fail."""
import pytest

from crashkit import Plan, report, run_big_queue, run_cycles

# At most one transaction per delivery connection (8 domains x 8 connections) is in doubt at
# each kill and at each switch to "down" (which aborts the sink's connections mid-reply), plus
# one commit round of dispositions: duplicates beyond this bound mean recovery redelivers
# recipients whose delivery was already durable.
IN_DOUBT_PER_EVENT = 8 * 8 + 16


def test_crash_cycles_lose_nothing_that_got_250(tmp_path):
    plan = Plan(cycles=5, backlog=1000, clients=8, cycle_s=(0.8, 1.8), big_share=0.08, seed=7, drain_timeout=120)
    v, inj, sink, daemon = run_cycles(tmp_path, plan)
    report(v, cycles=plan.cycles)
    assert not v.lost, f"{len(v.lost)} recipients answered 250 never arrived, e.g. {v.lost[:5]}"
    assert not v.corrupt, f"bodies changed in transit: {v.corrupt[:5]}"
    assert not v.strangers, f"messages nobody sent arrived: {v.strangers[:3]}"
    assert v.complete
    assert not v.rejected_delivered, f"refused messages were delivered: {v.rejected_delivered[:3]}"
    assert not v.double_final_in_lifetime, f"two final events in one lifetime: {v.double_final_in_lifetime[:5]}"
    assert v.exit_code == 0, "the last lifetime stops cleanly on SIGTERM"
    assert daemon.exit_codes[:plan.cycles] == [-9] * plan.cycles
    # The load meant something: each cycle accepted mail and multi-chunk bodies were spooled.
    assert v.accepted >= plan.backlog + 50 * plan.cycles, v.accepted
    assert sum(s.size >= 128 * 1024 for s in inj.acked()) >= 20
    assert {a.mode for a in sink.snapshot()} >= {"slow", "fast"}
    events = plan.cycles + sum(m == "down" for m in plan.modes) * plan.cycles
    assert v.duplicates <= IN_DOUBT_PER_EVENT * events, f"{v.duplicates} duplicates"


def test_big_queue_recovers_every_message_exactly_once(tmp_path):
    v, inj, sink, daemon = run_big_queue(tmp_path, messages=10000, clients=12, big_share=0.002)
    report(v)
    assert v.unknown == 0 and v.rejected == 0, "every client had its reply before the kill"
    assert v.accepted >= 10000
    # Recovery requeued exactly the messages answered 250 (none had been delivered: sink down).
    assert sum(v.requeued.values()) == v.accepted, v.requeued
    assert set(v.requeued) == {0, 1}, "both cores had queued mail"
    assert not v.lost and not v.corrupt and not v.strangers
    assert v.complete
    assert v.delivered == v.expected
    assert v.duplicates == 0, "nothing was delivered before the kill, so nothing may arrive twice"
    # The delivery log: the killed lifetime (sink down) closed nothing; the second closed every
    # recipient exactly once, with a Delivery (it stopped with SIGTERM, so its log is complete).
    closes = {}
    for life, e in v.finals:
        closes.setdefault((e["id"], e["recipient"]), []).append((life, e["type"]))
    want = {(s.queue_id, r) for s in inj.acked() for r in s.rcpts}
    assert set(closes) == want
    assert all(c == [(1, "Delivery")] for c in closes.values())
    assert v.exit_code == 0 and v.torn_log_lines == 0
    print(f"recovery of {v.accepted}: restart {v.restart_s:.2f}s, drain {v.drain_s:.1f}s")


def test_verdict_sees_a_sink_that_swallows_a_message(tmp_path):
    """Self-test: the sink answers 250 to two backlog messages but keeps nothing; no crash, so
    no duplicate can cover them: the verdict must name exactly those two."""
    plan = Plan(cycles=0, backlog=100, clients=4, big_share=0.0, seed=3, sink_drop=("b", 2))
    v, inj, sink, daemon = run_cycles(tmp_path, plan)
    report(v)
    assert len(sink.dropped) == 2
    dropped = sorted((a.test_id, r) for a in sink.dropped for r in a.rcpts)
    assert sorted((tid, r) for tid, r, _, _ in v.lost) == dropped
    assert not v.ok()


def test_verdict_sees_a_deleted_spool_segment(tmp_path):
    """Self-test: delete the oldest spool segment of a core that has any, between the kill and
    the restart (the sink was down, so its messages were all still queued): they must be
    reported lost. (SO_REUSEPORT may put every client on one core, so do not assume core 0.)"""
    removed = []

    def sabotage(daemon, cycle):
        cores = sorted((daemon.rp.dir / "spool").glob("core-*"))
        segs = next((s for s in (sorted(c.glob("seg-*.spool")) for c in cores) if s), [])
        assert segs, "no segment to delete on any core"
        segs[0].unlink()
        removed.append(segs[0].name)

    v, inj, sink, daemon = run_big_queue(tmp_path, messages=400, clients=4, big_share=0.05, between=sabotage,
                                         drain_timeout=15)
    report(v)
    assert removed
    assert len(v.lost) > 0, "a deleted segment must show as lost mail"
    assert sum(v.requeued.values()) < v.accepted
    assert not v.ok()
