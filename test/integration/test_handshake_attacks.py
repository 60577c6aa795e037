#!/usr/bin/python3
"""Attacks on the identity handshake (issue #4), two signet nodes in enforce mode
(topology: twonode.py; the same pods and policies as test_handshake_nodes.py):

    ns x:  a (app=a), d (app=d) on node-a;  b (app=b), c (app=c) on node-b
    to-b: ingress to b:8080 from app=a only;  to-d: ingress to d:8080 from app=a (+ the wire by ipBlock)

Every attack is a crafted SYN whose claimed identity the policy would admit
(it claims, or comes from the address of, pod a). Each must be refused: the
server pod's TCP stack never sees the SYN (an nftables counter of the test's
own, at the server pod's input hook after signet's chains), no SYN-ACK answers
it on the wire, and, where the reason is well defined, the judging node's
`signetctl status -o json` handshake.refused[<reason>] goes up.

    (a) forged tokens, injected on the wire from node-a's netns with src = a:
        random bytes of a signed token's length; a real token with a forged
        signature; a truncated token; an option whose length disagrees with the
        payload; and random token bytes sent from inside pod a itself
    (b) replay of a real tokened SYN captured on the wire (AF_PACKET on node-a's
        end): as is, right after the connection closed; from another source
        port; and as is after the token's validity
    (c) a token signed with a certificate from another authority (same trust domain)
    (d) a token signed with an expired certificate from the cluster authority
    (e) node-b's real credentials claiming pod x/a (which runs on node-a), from
        c's address to d on node-a
    (f) a tokenless SYN from a's address (IPv4, IPv6), injected on the wire
    (g) pod c sending a SYN with a's address as its source (to b, on its own node)
    (h) a bare ACK carrying the signet option and 16 bytes (a made-up final-ACK
        proof) for a connection that never was, from a's address: conntrack
        has no entry for it (it is picked up mid-stream), so only a rule that
        queues every segment with the option, whatever conntrack thinks of
        it, keeps the bytes from the pod's stack (issue #18)

Packets are built and sent by twonode.py (raw sockets inside the netns; the
option is kind 253, len 8, ExID 0x5347, version 1, flags 0, token length, the
token being the SYN's payload: docs/handshake-packet.md). Tokens with chosen
credentials come from build/test/datapath/handshake_mint.
"""
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import twonode  # noqa: E402
from twonode import NODE_A, NODE_B, NS, PORT  # noqa: E402

# The refusal reason (status handshake.refused key) each attack must add to, on
# the node that judges it. None: the attack must be refused, under any reason
# (the test reports which). The contract's names; adjust them here.
REASONS = {
    "forged_random": None,                      # random bytes: a parse error (bad_version, bad_type, ...)
    "forged_signature": "bad_signature",
    "truncated": "truncated",
    "option_length_mismatch": "malformed_packet",
    "token_from_pod": None,                     # a pod's own SYN already carrying the option
    "replay": "replay",
    "replay_other_port": "binding_mismatch",
    "replay_late": "expired",
    "other_authority": "chain_not_to_bundle",
    "expired_certificate": "certificate_expired",
    "pod_not_on_node": "pod_not_on_node",
    "no_token": "no_token",
    "no_token_ipv6": "no_token",
    "spoofed_source": "spoofed_source",
    "proof_without_handshake": "no_proof",
}

SIGNED_TOKEN_LEN = 632  # a signed first-contact token with the certificate, as minted here (x/a)
VERDICT_WAIT = 2.0      # how long a refusal counter may take to show


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft", "sysctl")
    bins = harness.require_signet_binaries(t)
    mint_bin = harness.build_dir() / "test" / "datapath" / "handshake_mint"
    t.require("handshake_mint is built", os.access(mint_bin, os.X_OK), str(mint_bin))
    if not twonode.signetd_knows_handshake(bins):
        t.check("signetd accepts --handshake enforce", False,
                f"signetd --help lists no --handshake flag ({bins['signetd']}): the handshake engine is not in "
                "this build; every attack test needs it")
        raise harness.Fatal("no handshake engine in signetd")

    tn = twonode.TwoNodes(t, run, bins, ipv6=True)
    try:
        tn.start("enforce")
    except harness.Fatal as e:
        t.check("signetd starts with --handshake enforce on both nodes", False, str(e))
        raise
    tn.add_policy("to-b", "b", ["a"])
    tn.add_policy("to-d", "d", ["a"], ip_blocks=["192.168.255.0/30", "fd53:ffff::/64"])
    tn.add_pods([("a", NODE_A), ("d", NODE_A), ("b", NODE_B), ("c", NODE_B)])
    for p in ("b", "d"):
        tn.serve(p)
    P = tn.pods
    na, nb = tn.nodes[NODE_A], tn.nodes[NODE_B]
    cap = twonode.Capture(na.netns, "wire-a")
    run.on_cleanup("wire capture", cap.close)
    probes = {"b": twonode.SynProbe(P["b"].netns), "d": twonode.SynProbe(P["d"].netns)}

    # Credentials for minting. A second, legitimate node-a certificate from the
    # cluster authority (its signature is then forged / its token truncated);
    # another authority of the same trust domain.
    tmp = Path(run.mkdtemp("attack-creds"))
    ctl = str(bins["signetctl"])
    creds_a = tmp / "node-a"
    p = harness.sh(ctl, "authority", "issue", tn.ca, "--node", NODE_A, "--out", creds_a, check=False)
    t.require("a second node-a certificate from the cluster authority", p.returncode == 0, p.stdout + p.stderr)
    other_ca, foreign_a = tmp / "other-ca", tmp / "foreign-node-a"
    p = harness.sh(ctl, "authority", "init", other_ca, "--trust-domain", "test.local", check=False)
    t.require("another authority (trust domain test.local)", p.returncode == 0, p.stdout + p.stderr)
    p = harness.sh(ctl, "authority", "issue", other_ca, "--node", NODE_A, "--out", foreign_a, check=False)
    t.require("a node-a certificate from the other authority", p.returncode == 0, p.stdout + p.stderr)

    # Baseline: the real a -> b connection works (else every "refused" below is meaningless).
    since = time.monotonic()
    r = tn.connect("a", "b")
    t.require("baseline: a -> b connects and echoes in enforce mode", r == "ok", r)
    captured = cap.wait_for(lambda s: s.is_syn and s.src == P["a"].ip4 and s.dst == P["b"].ip4 and s.dport == PORT
                            and s.signet_option() is not None, 2, since)
    t.require("baseline: the tokened SYN a -> b captured on the wire (node-a's end)", captured is not None,
              [repr(s) for s in cap.find(lambda s: True, since)][:10])
    captured_at = time.time()
    t.note(f"captured {captured!r}")
    time.sleep(0.3)  # the echo client has closed; the connection is over

    used_ports = {captured.sport}

    def new_port():
        while True:
            p = random.randrange(20000, 60000)
            if p not in used_ports:
                used_ports.add(p)
                return p

    def refused(node):
        st = tn.status(node)
        return dict(twonode.handshake_of(st).get("refused") or {})

    def attack(key, what, *, send_from, pkt, server, judges, segment="SYN"):
        """Send one crafted packet; check it never reaches the server pod's stack, no
        SYN-ACK answers it, and the right refusal reason is counted on a judge node."""
        seg = twonode.Seg(pkt)
        probe = probes[server]
        probe.watch(seg.sport, key, any_segment=segment != "SYN")
        before = {n: refused(n) for n in judges}
        t0 = time.monotonic()
        twonode.send_raw(send_from, pkt)
        want = REASONS[key]
        deadline = t0 + VERDICT_WAIT
        while True:
            time.sleep(0.1)
            after = {n: refused(n) for n in judges}
            delta = {n: {k: v - before[n].get(k, 0) for k, v in after[n].items() if v != before[n].get(k, 0)}
                     for n in judges}
            counted = any(delta[n].get(want, 0) >= 1 for n in judges) if want else any(delta.values())
            if counted or time.monotonic() > deadline:
                break
        got = probe.count(key)
        t.check(f"{key}: {what}: the {segment} never reached {server}'s TCP stack", got == 0,
                f"the probe after signet's input chain counted {got} {segment}(s) from port {seg.sport}"
                + (" (probe unreadable)" if got is None else ""))
        answers = cap.find(lambda s: (s.is_synack or s.flags & 0x04) and s.dport == seg.sport
                           and s.sport == seg.dport, t0)
        t.check(f"{key}: no SYN-ACK / RST answered it on the wire", not answers, [repr(s) for s in answers])
        shown = {n: delta[n] for n in judges}
        if want:
            t.check(f"{key}: counted as refused[{want!r}] on {'/'.join(judges)}",
                    any(delta[n].get(want, 0) >= 1 for n in judges),
                    f"refusal counters changed by {shown}; status handshake.refused now "
                    f"{ {n: after[n] for n in judges} }")
        else:
            t.check(f"{key}: counted as refused (any reason) on {'/'.join(judges)}", any(delta.values()),
                    f"no refusal counter changed; now { {n: after[n] for n in judges} }")
            t.note(f"{key}: refused as {shown}")

    a4, b4, c4, d4 = P["a"].ip4, P["b"].ip4, P["c"].ip4, P["d"].ip4

    # Control: the probe and the wire capture do see a crafted SYN that is admitted
    # (tokenless, from node-b's wire address: not a pod, admitted to d by to-d's ipBlock),
    # so "never reached" and "no SYN-ACK" below are not vacuous.
    sp = new_port()
    probes["d"].watch(sp, "control")
    t0 = time.monotonic()
    twonode.send_raw(nb.netns, twonode.syn(twonode.WIRE4[1], d4, sp, PORT, random.getrandbits(32)))
    answer = cap.wait_for(lambda s: s.is_synack and s.dport == sp and s.src == d4, VERDICT_WAIT, t0)
    got = probes["d"].count("control")
    t.equal("control: a crafted tokenless SYN from a non-pod address allowed by ipBlock reaches d's stack "
            "(probe count)", got, 1)
    t.check("control: d's SYN-ACK to it is seen on the wire", answer is not None,
            [repr(s) for s in cap.find(lambda s: True, t0)][:10])

    def minted(creds_args, src, dst, sport, isn, ns=NS, pod="a", uid=None, **extra):
        return twonode.mint(harness.build_dir(), **creds_args, role="client", src=src, dst=dst, sport=sport,
                            dport=PORT, isn=isn, namespace=ns, pod=pod, uid=uid or P[pod].uid, **extra)

    # ---- (b) replay: as is, right after the connection ended -------------------------------
    attack("replay", "the captured tokened SYN a -> b resent as is", send_from=na.netns, pkt=captured.raw,
           server="b", judges=[NODE_B])
    sp = new_port()
    attack("replay_other_port", f"the captured SYN resent from source port {sp}", send_from=na.netns,
           pkt=twonode.Seg(captured.raw).with_sport(sp), server="b", judges=[NODE_B])

    # ---- (a) forged tokens ------------------------------------------------------------------
    sp = new_port()
    tok = os.urandom(SIGNED_TOKEN_LEN)
    attack("forged_random", f"{len(tok)} random token bytes with the signet option, src a",
           send_from=na.netns, pkt=twonode.syn(a4, b4, sp, PORT, random.getrandbits(32), tok),
           server="b", judges=[NODE_B])
    sp, isn = new_port(), random.getrandbits(32)
    tok = minted({"creds": creds_a}, a4, b4, sp, isn)
    forged = tok[:-64] + os.urandom(64)
    attack("forged_signature", "a real node-a token for this SYN with its signature replaced",
           send_from=na.netns, pkt=twonode.syn(a4, b4, sp, PORT, isn, forged), server="b", judges=[NODE_B])
    sp, isn = new_port(), random.getrandbits(32)
    tok = minted({"creds": creds_a}, a4, b4, sp, isn)
    attack("truncated", f"a real node-a token cut to 300 of its {len(tok)} bytes",
           send_from=na.netns, pkt=twonode.syn(a4, b4, sp, PORT, isn, tok[:300]), server="b", judges=[NODE_B])
    sp, isn = new_port(), random.getrandbits(32)
    tok = minted({"creds": creds_a}, a4, b4, sp, isn)
    attack("option_length_mismatch", f"a real token whose option says {len(tok) + 10} bytes, payload {len(tok)}",
           send_from=na.netns, pkt=twonode.syn(a4, b4, sp, PORT, isn, tok, declared_len=len(tok) + 10),
           server="b", judges=[NODE_B])
    sp = new_port()
    attack("token_from_pod", "pod a itself sends a SYN already carrying the option and random token bytes",
           send_from=P["a"].netns, pkt=twonode.syn(a4, b4, sp, PORT, random.getrandbits(32),
                                                   os.urandom(SIGNED_TOKEN_LEN)),
           server="b", judges=[NODE_A, NODE_B])

    # ---- (c) another authority, (d) an expired certificate -----------------------------------
    sp, isn = new_port(), random.getrandbits(32)
    tok = minted({"creds": foreign_a}, a4, b4, sp, isn)
    attack("other_authority", "node-a's name on a certificate of another authority, claiming x/a",
           send_from=na.netns, pkt=twonode.syn(a4, b4, sp, PORT, isn, tok), server="b", judges=[NODE_B])
    sp, isn = new_port(), random.getrandbits(32)
    tok = minted({"authority": tn.ca, "node": NODE_A, "cert_not_before_s_ago": 2 * 86400,
                  "cert_validity_s": 3600}, a4, b4, sp, isn)
    attack("expired_certificate", "a node-a certificate of the cluster authority that expired yesterday",
           send_from=na.netns, pkt=twonode.syn(a4, b4, sp, PORT, isn, tok), server="b", judges=[NODE_B])

    # ---- (e) node-b speaks for a pod of node-a ----------------------------------------------
    sp, isn = new_port(), random.getrandbits(32)
    tok = minted({"creds": tn.creds_b}, c4, d4, sp, isn)
    attack("pod_not_on_node", "node-b's own credentials claiming x/a (on node-a), from c's address to d",
           send_from=nb.netns, pkt=twonode.syn(c4, d4, sp, PORT, isn, tok), server="d", judges=[NODE_A])

    # ---- (f) tokenless SYNs from a pod address, on the wire ----------------------------------
    sp = new_port()
    attack("no_token", "a tokenless SYN from a's address (to-b admits app=a by podSelector only)",
           send_from=na.netns, pkt=twonode.syn(a4, b4, sp, PORT, random.getrandbits(32)),
           server="b", judges=[NODE_B])
    if P["a"].ip6 and P["b"].ip6:
        sp = new_port()
        attack("no_token_ipv6", "the same over IPv6", send_from=na.netns,
               pkt=twonode.syn(P["a"].ip6, P["b"].ip6, sp, PORT, random.getrandbits(32)),
               server="b", judges=[NODE_B])

    # ---- (g) a pod spoofs another pod's address -----------------------------------------------
    sp = new_port()
    attack("spoofed_source", "pod c sends a SYN to b with a's address as its source",
           send_from=P["c"].netns, pkt=twonode.syn(a4, b4, sp, PORT, random.getrandbits(32)),
           server="b", judges=[NODE_B])

    # ---- (h) a proof-like ACK for no connection -------------------------------------------------
    sp = new_port()
    attack("proof_without_handshake", "a bare ACK from a's address with the signet option and 16 bytes, no "
           "connection behind it", send_from=na.netns, segment="ACK",
           pkt=twonode.tcp_segment(a4, b4, sp, PORT, random.getrandbits(32), flags=0x10,
                                   ack=random.getrandbits(32), options=twonode.signet_option(16),
                                   payload=os.urandom(16)),
           server="b", judges=[NODE_B])

    # ---- (b) replay after the token's validity (5 s + 2 s skew) -------------------------------
    wait = captured_at + 8.0 - time.time()
    if wait > 0:
        time.sleep(wait)
    attack("replay_late", "the captured SYN resent as is 8 s after it was captured", send_from=na.netns,
           pkt=captured.raw, server="b", judges=[NODE_B])

    # The real thing still works after all that.
    r = tn.connect("a", "b")
    t.equal("after the attacks: a -> b still connects and echoes", r, "ok")
    r = tn.connect("c", "b", timeout=1.0)
    t.check("after the attacks: c -> b still refused", r.startswith("fail"), r)


if __name__ == "__main__":
    harness.main("test_handshake_attacks", body)
