#!/usr/bin/env python3
"""Check a ringpost delivery log: every recipient of every Reception gets exactly one final
event (Delivery, Bounce or Expiration), the rule of tests/conftest.py
assert_every_recipient_closed_once. Waits up to --wait s for the finals to catch up first.
Prints the counts and a verdict; exits 1 on a missing or doubled final event."""
import argparse, json, sys, time

FINAL = ("Delivery", "Bounce", "Expiration")


def load(path):
    """The log's events, rotated files ([log] rotate_bytes: path.N ... path.1) first."""
    import glob, re
    rotated = sorted(glob.glob(glob.escape(path) + ".*"), key=lambda p: -int(re.sub(r".*\.", "", p) or 0))
    events = []
    for p in [r for r in rotated if re.search(r"\.\d+$", r)] + [path]:
        try:
            events += [json.loads(l) for l in open(p) if l.strip()]
        except FileNotFoundError:
            pass
    return events


def check(events, open_domains=()):
    finals, doubled = {}, []
    for e in events:
        if e["type"] in FINAL:
            key = (e["id"], e["recipient"])
            if key in finals:
                doubled.append(key)
            finals[key] = e["type"]
    expected = {(e["id"], r) for e in events if e["type"] == "Reception" for r in e["recipient"].split(",")
                if r.rsplit("@", 1)[-1] not in open_domains}
    missing = expected - finals.keys()
    stray = {k for k in finals.keys() - expected if k[1].rsplit("@", 1)[-1] not in open_domains}
    return expected, finals, missing, doubled, stray


def main():
    p = argparse.ArgumentParser()
    p.add_argument("log")
    p.add_argument("--wait", type=float, default=60)
    p.add_argument("--open-domain", action="append", default=[],
                   help="recipients at this domain may stay open (a destination kept down on purpose); doubles still count")
    a = p.parse_args()
    deadline = time.time() + a.wait
    while True:
        expected, finals, missing, doubled, stray = check(load(a.log), tuple(a.open_domain))
        if not missing or time.time() > deadline:
            break
        time.sleep(1)
    kinds = {}
    for t in finals.values():
        kinds[t] = kinds.get(t, 0) + 1
    print(f"delivery log: {len(expected)} recipients received; finals {kinds}; missing {len(missing)}"
          f" doubled {len(doubled)} without reception {len(stray)}")
    ok = not missing and not doubled and bool(expected)  # the conftest rule; stray is reported only
    print("closed-once verdict: " + ("PASS: every recipient closed exactly once" if ok else
          f"FAIL: missing {sorted(missing)[:5]} doubled {doubled[:5]} stray {sorted(stray)[:5]}"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
