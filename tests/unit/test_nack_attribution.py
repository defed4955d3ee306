"""The pure parts of Programmed and NACK attribution: the bisection state machine
(legation.controller.serving.bisect), the ledger of publications and `evaluate`
(legation.controller.serving.ledger), and withholding from the IR (compiler.withhold)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legation.api.v1alpha1 import ResourceId
from legation.controller.compiler.ir import IR, Cluster, Destination, HostIR, Route, RouteMatch, TlsSecret
from legation.controller.compiler.withhold import withhold
from legation.controller.serving.bisect import Bisection
from legation.controller.serving.ledger import Ledger, Quarantine, evaluate
from legation.controller.xds.protocol import NodeStatus, TypeStatus
from legation.core.envoy_types import CLUSTER, LISTENER, ROUTE, SECRET


def ids(n: int) -> list[ResourceId]:
    return [ResourceId("Mapping", "team", f"m{i:03}") for i in range(n)]


def run(search: Bisection, culprits: set[ResourceId]) -> list[ResourceId]:
    """Answer probes as an Envoy would: accepted when no culprit is left in."""
    everything = set(search.pool)
    while search.outcome == "probe":
        kept = everything - search.probe
        search.result(not (kept & culprits))
    assert search.outcome == "found"
    return sorted(search.guilty)


@given(st.integers(min_value=1, max_value=300), st.data())
def test_one_culprit_is_found_in_log2_rounds(n: int, data: st.DataObject) -> None:
    suspects = ids(n)
    culprit = data.draw(st.sampled_from(suspects))
    search = Bisection.start("node-a", "error", suspects)
    assert run(search, {culprit}) == [culprit]
    # log2 rounds, plus one to put back what was set aside on the way (it may hold another culprit)
    assert search.rounds <= (math.ceil(math.log2(n)) + 1 if n > 1 else 0)


@given(st.integers(min_value=2, max_value=120), st.data())
def test_several_culprits_are_all_found(n: int, data: st.DataObject) -> None:
    suspects = ids(n)
    culprits = set(data.draw(st.lists(st.sampled_from(suspects), min_size=1, max_size=3, unique=True)))
    assert run(Bisection.start("n", "e", suspects), culprits) == sorted(culprits)


def test_a_culprit_named_in_envoys_message_takes_one_round() -> None:
    suspects = ids(64)
    search = Bisection.start("n", "route team/m041 is bad", suspects, mentioned=[suspects[41]])
    assert search.probe == {suspects[41]}
    assert run(search, {suspects[41]}) == [suspects[41]]
    assert search.rounds == 1


def test_a_wrongly_mentioned_name_costs_one_round_only() -> None:
    suspects = ids(16)
    search = Bisection.start("n", "e", suspects, mentioned=[suspects[3]])
    assert run(search, {suspects[9]}) == [suspects[9]]
    assert search.rounds <= 1 + 4 + 1


def test_a_single_suspect_needs_no_probe_and_none_fails() -> None:
    assert Bisection.start("n", "e", ids(1)).outcome == "found"
    assert Bisection.start("n", "e", []).outcome == "failed"


def test_an_envoy_that_rejects_everything_does_not_search_forever() -> None:
    search = Bisection.start("n", "e", ids(32))
    while search.outcome == "probe":
        search.result(False)  # a hostile or broken Envoy NACKs every probe
    assert search.rounds <= search.max_rounds
    # It converges on something, one suspect at a time: the search is bounded whatever it says.
    assert search.outcome in {"found", "failed"}


# --- ledger and Programmed -------------------------------------------------------------------

A, B = ResourceId("Mapping", "team", "a"), ResourceId("Mapping", "team", "b")
H = ResourceId("Host", "team", "h")


def node(node_id: str, applied: dict[str, tuple[str, float]]) -> NodeStatus:
    status = NodeStatus(stream=1, node_id=node_id)
    for type_url, (version, at) in applied.items():
        t = status.types[type_url] = TypeStatus(type_url)
        t.applied(version, at)
    return status


def test_sequence_bookkeeping_first_publication_per_content() -> None:
    ledger = Ledger()
    p1 = ledger.publish("v1", contents={A: "a1", B: "b1"}, withheld=frozenset(), at=10.0)
    p2 = ledger.publish("v2", contents={A: "a2", B: "b1"}, withheld=frozenset(), at=20.0)
    assert (p1.seq, p2.seq) == (1, 2)
    assert ledger.first(A) is not None and ledger.first(A).seq == 2  # type: ignore[union-attr]
    assert ledger.first(B) is not None and ledger.first(B).seq == 1  # type: ignore[union-attr]
    assert ledger.contains(p1, B) and not ledger.contains(p1, A) and ledger.contains(p2, A)
    # The same version again is the same publication; a probe withholding A does not contain it.
    assert ledger.publish("v2", contents={A: "a2", B: "b1"}, withheld=frozenset(), at=30.0) is p2
    probe = ledger.publish("p", contents={A: "a2", B: "b1"}, withheld=frozenset({A}), at=31.0, node="n")
    assert not ledger.contains(probe, A) and ledger.contains(probe, B)
    # A resource that goes away is forgotten by the gateway's next publication.
    ledger.publish("v3", contents={B: "b1"}, withheld=frozenset(), at=40.0)
    assert ledger.first(A) is None


def test_programmed_needs_every_node_and_every_type_that_carries_it() -> None:
    ledger = Ledger()
    ledger.publish("v1", contents={A: "a1"}, withheld=frozenset(), at=100.0)
    ledger.publish("v2", contents={A: "a2"}, withheld=frozenset(), at=200.0)
    up_to_date = node("n1", {ROUTE: ("v2", 200.5), CLUSTER: ("v2", 200.25)})
    # ROUTE moved on, but the cluster it runs is v1's: a2's cluster may be missing there.
    behind = node("n2", {ROUTE: ("v2", 200.4), CLUSTER: ("v1", 100.2)})
    q: dict[ResourceId, Quarantine] = {}
    got = evaluate(ledger, [A], [up_to_date], quarantined=q, withheld=frozenset())[A]
    assert got.programmed and got.reason == "Programmed" and got.envoys == 1
    assert got.seconds == pytest.approx(0.5)
    got = evaluate(ledger, [A], [up_to_date, behind], quarantined=q, withheld=frozenset())[A]
    assert not got.programmed and got.reason == "Pending" and "n2" in got.message
    assert evaluate(ledger, [A], [], quarantined=q, withheld=frozenset())[A].reason == "NoEnvoy"


def test_programmed_time_is_kept_while_the_content_stays() -> None:
    ledger, memo = Ledger(), {}  # type: ignore[var-annotated]
    ledger.publish("v1", contents={A: "a1"}, withheld=frozenset(), at=0.0)
    first = evaluate(ledger, [A], [node("n", {ROUTE: ("v1", 0.1), CLUSTER: ("v1", 0.1)})],
                     quarantined={}, withheld=frozenset(), memo=memo)[A]  # fmt: skip
    ledger.publish("v2", contents={A: "a1", B: "b"}, withheld=frozenset(), at=5.0)
    later = evaluate(ledger, [A], [node("n", {ROUTE: ("v2", 5.1), CLUSTER: ("v2", 5.1)})],
                     quarantined={}, withheld=frozenset(), memo=memo)[A]  # fmt: skip
    assert later == first and first.seconds == pytest.approx(0.1)  # no status rewrite per change


def test_quarantined_and_withheld_resources_are_not_programmed() -> None:
    ledger = Ledger()
    ledger.publish("v1", contents={A: "a1", B: "b1", H: "h"}, withheld=frozenset({A, B}), at=0.0)
    n = node("n", {t: ("v1", 1.0) for t in (ROUTE, CLUSTER, LISTENER, SECRET)})
    q = {A: Quarantine("a1", "n", "invalid regex", 0.5)}
    got = evaluate(ledger, [A, B, H], [n], quarantined=q, withheld=frozenset({A, B}))
    assert (got[A].reason, got[A].message) == ("Nacked", "Envoy n rejected it: invalid regex")
    assert got[B].reason == "Nacked" and not got[B].programmed
    assert got[H].programmed


# --- withholding from the IR -----------------------------------------------------------------


def test_withholding_keeps_claims_and_fails_closed() -> None:
    match = RouteMatch("*", "prefix", "/a/")
    routes = (
        Route("team/a", "team", match, (Destination("team/a", "c_a", 50), Destination("team/a2", "c_b", 50)),
              ("team/a", "team/a2"), None),
        Route("team/b", "team", RouteMatch("*", "prefix", "/b/"), (Destination("team/b", "c_b", 100),),
              ("team/b",), None),
    )  # fmt: skip
    ir = IR(
        routes=routes,
        clusters=(Cluster("c_a", "a", 80), Cluster("c_b", "b", 80)),
        hosts=(HostIR("team/h", "h.example.com", "team/tls", "Redirect"),),
        tls_secrets=(TlsSecret("team/tls", "crt", "key"),),
    )
    out, withheld = withhold(ir, [A, H])
    assert [r.id for r in out.routes] == ["team/b"]  # the canary goes with its route
    assert [c.name for c in out.clusters] == ["c_b"]
    assert out.hosts[0].tls is False and out.hosts[0].insecure == "Reject"  # never plain HTTP
    assert out.tls_secrets == ()
    assert withheld == {A, ResourceId("Mapping", "team", "a2"), H}
    assert withhold(ir, []) == (ir, frozenset())
