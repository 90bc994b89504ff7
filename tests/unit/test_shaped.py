"""The shaped-network benchmark's tc rules: only the client's leg (traffic to and from the
delay proxy's port) is held to the link's rate; the proxy's leg to the server is not, so the
rate is not paid twice on loopback."""

from __future__ import annotations

from bench.shaped import shaping


def _classes(commands: list[list[str]]) -> dict[str, str]:
    """classid -> rate of each htb class."""
    return {
        c[c.index("classid") + 1]: c[c.index("rate") + 1]
        for c in commands
        if c[:3] == ["tc", "class", "add"]
    }


def test_both_directions_of_the_proxy_port_and_nothing_else_are_limited() -> None:
    commands = shaping(100, 45678)
    rates = _classes(commands)
    filters = [c for c in commands if c[:3] == ["tc", "filter", "add"]]
    matched = {(c[c.index("match") + 2], c[c.index("match") + 3]): c[-1] for c in filters}
    assert matched == {("sport", "45678"): "1:10", ("dport", "45678"): "1:20"}
    assert rates["1:10"] == rates["1:20"] == "100mbit"
    qdisc = next(c for c in commands if c[:3] == ["tc", "qdisc", "add"])
    default = "1:" + qdisc[qdisc.index("default") + 1]
    assert default not in matched.values()
    assert rates[default] != "100mbit"


def test_the_bucket_holds_several_loopback_packets_at_any_rate() -> None:
    for mbit in (1, 100, 1000):
        for c in shaping(mbit, 1):
            if "burst" in c and c[c.index("rate") + 1] == f"{mbit}mbit":
                assert int(c[c.index("burst") + 1].removesuffix("b")) >= 4 * 65536


def test_the_large_model_over_a_link_says_why_it_was_skipped() -> None:
    from bench import large

    text = large.markdown({"benchmark": "large_link", "skipped": "no namespace"})
    assert "skipped (no namespace)" in text
