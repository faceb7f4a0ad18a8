"""Broker names from one place (pj_common.topology.Topology)."""

from pj_common.topology import Topology


def test_every_name_derives_from_the_prefix() -> None:
    topology = Topology("run-1")
    assert topology.commands == "run-1.commands"
    assert topology.dispatch == "run-1.dispatch"
    assert topology.results == "run-1.dispatch.results"
    assert topology.events == "run-1.events"
    assert topology.dead_letter_exchange == "run-1.dlx"
    assert topology.dead_letters == "run-1.dead"


def test_two_prefixes_share_no_name() -> None:
    def names(t: Topology) -> set[str]:
        return {t.commands, t.dispatch, t.results, t.events, t.dead_letter_exchange, t.dead_letters}

    assert len(names(Topology("a"))) == 6
    assert not names(Topology("a")) & names(Topology("b"))
    assert Topology().commands == "pj.commands"
