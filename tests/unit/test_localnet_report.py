"""What the localnet leaves behind: the summary that names the faulty miners, the loss chart."""

from __future__ import annotations

import struct
from pathlib import Path

from neurons.localnet import Network, Spec
from neurons.localnet_storage import LocalDirectories
from neurons.localnet_view import summary
from neurons.plot import Series, loss_figure, neuron_series, save_loss_png


def row(window, loss, skipped, aggregated, scores):
    return {
        "window": window,
        "loss": loss,
        "gather_s": 0.1,
        "bytes": 1000,
        "success_rate": len(aggregated) / 4,
        "skipped": skipped,
        "aggregated": aggregated,
        "scores": scores,
    }


SCORES = {"1": 0.04, "2": 0.03, "3": -1.0, "4": -1.0}
GARBAGE = "invalid: header_too_large: header of 9 bytes > limit 16848"
ROWS = [
    row(5, 1.0, {"3": GARBAGE, "4": "not_found: nothing before the deadline"}, [1, 2], SCORES),
    row(6, 0.8, {"3": GARBAGE, "4": "copy: copy_of_1: 100% alike"}, [1, 2], SCORES),
    row(7, 0.6, {"3": GARBAGE, "4": "copy: copy_of_2: 100% alike"}, [2], SCORES),
]


def test_the_summary_names_the_faulty_miners_and_how_they_were_treated():
    text = summary(ROWS, {"3": "garbage", "4": "copier"})
    first, second = text.splitlines()
    assert first.startswith("3 windows: loss 1.0000 -> 0.6000 (-40%)")
    assert "3=-1.000 (faulty: garbage)" in first and "4=-1.000 (faulty: copier)" in first
    assert "1=+0.040," in first  # honest ones carry no tag
    assert "uid 3 (garbage) skipped in 3/3 windows (invalid: header_too_large x3)" in second
    assert "uid 4 (copier) skipped in 3/3 windows (copy: copy_of_<uid> x2, not_found x1)" in second
    assert second.endswith("honest miners aggregated: 1 in 2/3, 2 in 3/3")


def test_without_faulty_miners_the_summary_is_one_line():
    assert "\n" not in summary(ROWS) and "faulty" not in summary(ROWS)


def test_the_chart_has_a_line_per_neuron_axes_and_a_title():
    losses = {
        "validator-0": {5: 1.0, 6: 0.8, 7: 0.6, 8: 0.5},
        "miner-1": {4: 1.3, 5: 1.1, 6: 0.9},
        "miner-2-garbage": {5: 1.2, 6: float("nan"), 7: 0.7},
        "miner-3": {},  # never reported a window: no line
    }
    labels = {"validator-0": "validator-0 (uid 0)", "miner-2-garbage": "garbage (uid 2)"}
    series = neuron_series(
        losses, [5, 6, 7], labels, primary="validator-0", dashed={"miner-2-garbage"}
    )
    assert [s.label for s in series] == ["validator-0 (uid 0)", "miner-1", "garbage (uid 2)"]
    assert series[0].primary and series[0].points == [(5, 1.0), (6, 0.8), (7, 0.6)]
    assert series[1].points == [(5, 1.1), (6, 0.9)]  # only the windows shown
    assert series[2].dashed and not series[1].dashed

    fig = loss_figure(series, "a title")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == [s.label for s in series]
    assert list(ax.get_lines()[2].get_xdata()) == [5, 7]  # the NaN is left out
    assert ax.get_title() == "a title"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("window", "loss")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [s.label for s in series]
    assert all(float(t).is_integer() for t in ax.get_xticks())  # window numbers


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_chart_is_a_png_of_a_readable_size(tmp_path):
    series = [Series("validator-0", [(1, 1.0), (2, 0.5)], primary=True)]
    path = save_loss_png(series, "t", tmp_path / "sub" / "loss.png")
    width, height = png_size(path)
    assert 1000 <= width <= 2000 and 500 <= height <= 1200


def test_the_localnet_labels_and_titles_its_chart(tmp_path):
    specs = [
        Spec("validator", "validator-0"),
        Spec("miner", "miner-1"),
        Spec("miner", "miner-2-garbage", "garbage"),
    ]
    net = Network(tmp_path, specs, 0.5, LocalDirectories(tmp_path))
    net.uids = {"validator-0": 0, "miner-1": 1}  # miner-2 never said: its registration order
    net.losses = {"validator-0": {3: 1.0, 4: 0.9}, "miner-1": {3: 1.1}, "miner-2-garbage": {4: 1}}
    assert net.faulty() == {"2": "garbage"}
    series, title = net.chart_lines([{"window": 3}, {"window": 4}])
    assert [s.label for s in series] == [
        "validator-0 (uid 0, eval loss)",
        "miner-1 (uid 1, training loss)",
        "miner-2-garbage (uid 2, training loss, faulty: garbage)",
    ]
    assert [s.dashed for s in series] == [False, False, True]
    assert title == "localnet: 1 validator, 1 miners + garbage; loss per window"
    assert png_size(net.chart([{"window": 3}], tmp_path / "loss.png"))[0] >= 1000
