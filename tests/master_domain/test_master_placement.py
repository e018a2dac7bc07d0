"""The pure placement policy and the submit-time size check."""

from __future__ import annotations

import pytest
from master_helpers import GI, summary

from domainos.errors import InvalidArgument
from domainos.resources import Resources
from master_domain._placement import Choice, NoFit, Placer, check_fits_federation
from master_domain._summary import Summary

MI = 2**20


def sm(nodes: int = 1, cpus: int = 4, gpus: int = 0, model: str = "") -> Summary:
    return Summary.from_proto(summary(nodes, cpus, gpus, model))


def req(cpus: float = 1, mem: int = 256 * MI, gpus: int = 0, model: str = "") -> Resources:
    return Resources(int(cpus * 1000), mem, gpus, model)


def place(p: Placer, r: Resources) -> str:
    choice = p.choose(r)
    assert isinstance(choice, Choice), choice
    p.commit(choice.subdomain_id, r)
    return choice.subdomain_id


def test_no_subdomain_connected() -> None:
    assert Placer().choose(req()) == NoFit("no sub-domain is connected")


def test_fits_some_shape_or_waits_with_reason() -> None:
    p = Placer()
    p.update("east-1", "east", sm(nodes=3, cpus=2), now=0.0)
    assert p.choose(req(2)) == Choice("east-1", "east")
    # 3 cpus fit in the sub-domain's total free space but in no single node.
    assert p.choose(req(3)) == NoFit("no sub-domain has a node with cpus=3 memory=256Mi free")


def test_replicas_spread_over_subdomains() -> None:
    p = Placer()
    p.update("a", "east", sm(nodes=2, cpus=4), now=0.0)
    p.update("b", "west", sm(nodes=2, cpus=4), now=0.0)
    chosen = [place(p, req(1)) for _ in range(4)]
    assert sorted(chosen) == ["a", "a", "b", "b"]
    assert chosen[:2] in (["a", "b"], ["b", "a"])


def test_spread_prefers_the_roomier_subdomain() -> None:
    p = Placer()
    p.update("small", "east", sm(nodes=1, cpus=2), now=0.0)
    p.update("big", "east", sm(nodes=4, cpus=4), now=0.0)
    assert [place(p, req(1)) for _ in range(3)] == ["big", "big", "big"]


def test_in_flight_accounting_until_the_next_summary() -> None:
    p = Placer()
    p.update("a", "east", sm(nodes=1, cpus=2), now=0.0)
    assert place(p, req(1)) == "a"
    assert place(p, req(1)) == "a"
    assert isinstance(p.choose(req(1)), NoFit)  # both cores handed out already
    assert p.inflight("a") == 2
    p.update("a", "east", sm(nodes=1, cpus=2), now=1.0)  # the summary says it is free again
    assert place(p, req(1)) == "a"


def test_one_node_is_consumed_not_the_total() -> None:
    p = Placer()
    p.update("a", "east", sm(nodes=2, cpus=4), now=0.0)
    assert place(p, req(3)) == "a"
    assert place(p, req(3)) == "a"  # second node
    assert isinstance(p.choose(req(3)), NoFit)  # 1 + 1 cores left, on two nodes
    assert place(p, req(1)) == "a"


def test_gpu_model_is_honoured() -> None:
    p = Placer()
    p.update("cpu", "east", sm(nodes=4, cpus=16), now=0.0)
    p.update("a100", "east", sm(nodes=1, cpus=16, gpus=8, model="A100"), now=0.0)
    p.update("h100", "west", sm(nodes=1, cpus=16, gpus=8, model="H100"), now=0.0)
    assert p.choose(req(1, gpus=2, model="H100")) == Choice("h100", "west")
    assert p.choose(req(1, gpus=2, model="A100")) == Choice("a100", "east")
    assert isinstance(p.choose(req(1, gpus=2)), Choice)
    assert p.choose(req(1, gpus=2)).subdomain_id in ("a100", "h100")
    assert p.choose(req(1, gpus=2, model="B200")) == NoFit(
        "no sub-domain has a node with cpus=1 memory=256Mi gpus=2 (B200) free"
    )
    for _ in range(4):
        assert place(p, req(1, gpus=2, model="H100")) == "h100"
    assert isinstance(p.choose(req(1, gpus=2, model="H100")), NoFit)


def test_rejecting_subdomain_is_skipped_until_a_newer_summary() -> None:
    p = Placer()
    p.update("a", "east", sm(nodes=4), now=0.0)
    p.update("b", "east", sm(nodes=1), now=0.0)
    avoid = {"a": 5.0}
    assert p.choose(req(1), avoid) == Choice("b", "east")
    p.update("a", "east", sm(nodes=4), now=6.0)
    assert p.choose(req(1), avoid) == Choice("a", "east")


def test_disconnected_subdomain_gets_nothing() -> None:
    p = Placer()
    p.update("a", "east", sm(), now=0.0)
    p.remove("a")
    assert p.choose(req()) == NoFit("no sub-domain is connected")


def test_too_large_request_is_refused_naming_the_field() -> None:
    sums = {"east-1": sm(nodes=3, cpus=2), "east-2": sm(nodes=0)}
    with pytest.raises(InvalidArgument) as err:
        check_fits_federation(req(64), sums)
    assert str(err.value) == (
        "resources.cpus: 64 exceeds the largest node in the federation "
        "(2 cpus, node shape in sub-domain east-1); allowed: at most 2"
    )
    assert err.value.field == "resources.cpus"
    with pytest.raises(InvalidArgument) as err:
        check_fits_federation(req(1, mem=64 * GI), sums)
    assert str(err.value) == (
        "resources.memory: 64Gi exceeds the largest node in the federation "
        "(8Gi memory, node shape in sub-domain east-1); allowed: at most 8Gi"
    )
    with pytest.raises(InvalidArgument) as err:
        check_fits_federation(req(1, gpus=1), sums)
    assert err.value.field == "resources.gpus"
    check_fits_federation(req(2), sums)  # fits the largest node


def test_size_check_uses_the_biggest_subdomain_and_skips_empty_ones() -> None:
    sums = {"a": sm(cpus=2), "b": sm(cpus=8), "c": sm(nodes=0)}
    check_fits_federation(req(8), sums)
    with pytest.raises(InvalidArgument, match=r"\(8 cpus, node shape in sub-domain b\); allowed: at most 8"):
        check_fits_federation(req(9), sums)
    check_fits_federation(req(999), {"c": sm(nodes=0)})  # nothing known yet: accept and wait
    check_fits_federation(req(999), {})


def test_inflight_placements_stay_deducted_until_a_summary_has_applied_them() -> None:
    p = Placer()
    p.update("east-1", "east", sm(nodes=1, cpus=4), now=0.0)
    p.commit("east-1", req(3), now=0.0)  # placement 1 on this stream
    # A summary computed before the sub-domain handled placement 1 must not give the room back.
    p.update("east-1", "east", sm(nodes=1, cpus=4), now=0.1, applied=0)
    assert isinstance(p.choose(req(3)), NoFit)
    # The task ran and finished between two summaries: the numbers are back where they were, and
    # the applied count says placement 1 is in them, so the room is free again.
    p.update("east-1", "east", sm(nodes=1, cpus=4), now=0.2, applied=1)
    assert p.choose(req(3)) == Choice("east-1", "east")


def test_a_new_stream_forgets_old_inflight_placements_and_stale_ones_expire() -> None:
    from master_domain._placement import INFLIGHT_TTL_S

    p = Placer()
    p.update("east-1", "east", sm(nodes=1, cpus=4), now=0.0)
    p.commit("east-1", req(3), now=0.0)
    p.update("east-1", "east", sm(nodes=1, cpus=4), now=1.0)  # a Hello: applied=None
    assert p.choose(req(3)) == Choice("east-1", "east")
    p.commit("east-1", req(3), now=1.0)
    # Never confirmed (e.g. the command was never sent): dropped after the TTL.
    p.update("east-1", "east", sm(nodes=1, cpus=4), now=1.0 + INFLIGHT_TTL_S / 2, applied=0)
    assert isinstance(p.choose(req(3)), NoFit)
    p.update("east-1", "east", sm(nodes=1, cpus=4), now=1.0 + INFLIGHT_TTL_S + 1, applied=0)
    assert p.choose(req(3)) == Choice("east-1", "east")
