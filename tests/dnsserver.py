"""A small authoritative DNS server for tests (dnslib), on UDP and TCP, with knobs:
SERVFAIL for the first N queries of a name, truncated UDP answers for chosen names, a query log.
Zone entries: {("name.", "MX"): [(ttl, pref, "exchange.")], ("name.", "A"): [(ttl, "1.2.3.4")]}"""
import threading

from dnslib import MX, QTYPE, RCODE, RR, SOA, A, DNSLabel
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class ZoneResolver(BaseResolver):
    def __init__(self):
        self.zone = {}
        self.servfail = {}      # name -> remaining SERVFAIL answers
        self.truncate = set()   # names answered with TC over UDP
        self.log = []           # (name, qtype, protocol)
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        q = request.q
        name, qtype = str(q.qname).lower(), QTYPE[q.qtype]
        with self.lock:
            self.log.append((name, qtype, handler.protocol))
            if self.servfail.get(name, 0) > 0:
                self.servfail[name] -= 1
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if name in self.truncate and handler.protocol == "udp":
                reply.header.tc = 1
                return reply
            known = any(k[0] == name for k in self.zone)
            recs = self.zone.get((name, qtype), [])
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        for rec in recs:
            if qtype == "MX":
                ttl, pref, exch = rec
                reply.add_answer(RR(name, QTYPE.MX, ttl=ttl, rdata=MX(DNSLabel(exch), pref)))
            elif qtype == "A":
                ttl, ip = rec
                reply.add_answer(RR(name, QTYPE.A, ttl=ttl, rdata=A(ip)))
        if not recs:
            zone = name.split(".", 1)[1] if "." in name.rstrip(".") else name
            reply.add_auth(RR(zone, QTYPE.SOA, ttl=1, rdata=SOA("ns.test.", "hostmaster.test.", (1, 60, 60, 60, 1))))
        return reply


class LoopbackDNS:
    def __init__(self, port):
        self.resolver = ZoneResolver()
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        self.servers = [DNSServer(self.resolver, port=port, address="127.0.0.1", tcp=tcp, logger=logger) for tcp in (False, True)]
        for s in self.servers:
            s.start_thread()
        self.port = port

    def stop(self):
        for s in self.servers:
            s.stop()
