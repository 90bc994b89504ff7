"""A whole network on one machine: one validator and N miners as separate processes.

They share a directory: local buckets under `storage/` (or, with `storage="s3"`, buckets on
a SeaweedFS this process starts and stops: neurons/localnet_storage.py), the fake chain in
`chain.json` (blocks from the system clock, `block_time` seconds each), `hparams.json`, and per
neuron a log and an events file of JSON lines, which this process tails to draw the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from adapters.chain.fake import FakeNetwork
from adapters.clock import SystemClock
from neurons.config import (
    FAULTY_MODES,
    ConfigError,
    HParams,
    hparams_as_mapping,
    hparams_from_mapping,
    load_hparams,
)
from neurons.localnet_storage import (
    STORAGE_CHOICES,
    LocalnetStorage,
    ServerUnavailable,
    localnet_storage,
    neuron_environment,
)
from neurons.localnet_view import COLUMNS, line, render, summary, table_row
from neurons.plot import Series, neuron_series, save_loss_png
from neurons.tasks.corpus import upload_corpus
from neurons.warmup import warm

VALIDATOR_HOTKEY = "validator-0"


@attrs.frozen(kw_only=True)
class LocalnetOptions:
    miners: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    windows: int = attrs.field(default=30, validator=attrs.validators.ge(1))
    # Misbehaving miners to add, one per mode: comma-separated FAULTY_MODES ("garbage,copier").
    faulty: str = attrs.field(default="", validator=lambda i, a, v: faulty_modes(v))
    block_time: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    storage: str = attrs.field(default="local", validator=attrs.validators.in_(STORAGE_CHOICES))
    directory: Path | None = None
    json_out: Path | None = None
    # The loss chart; a relative path is taken from the current directory.
    plot: Path = Path("loss.png")
    hparams_file: Path | None = None
    overrides: Mapping[str, Any] = attrs.Factory(dict)
    # Give up if the network has not finished this long after the planned end.
    slack_seconds: float = 60.0


def faulty_modes(text: str) -> tuple[str, ...]:
    """The modes of `--faulty` ("garbage,copier"): each a FAULTY_MODES entry, at most once."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in FAULTY_MODES]
    if unknown or len(set(modes)) != len(modes):
        raise ValueError(
            f"--faulty takes distinct modes among {', '.join(FAULTY_MODES)}, "
            f"comma-separated; got {text!r}"
        )
    return modes


def whole_second_blocks(block_time: float, least: int = 5) -> int | None:
    """The fewest blocks (at least `least`) that last a whole number of seconds, if any."""
    for blocks in range(least, least + 100):
        seconds = blocks * block_time
        if seconds >= 1 and abs(seconds - round(seconds)) < 1e-6:
            return blocks
    return None


def localnet_hparams(block_time: float, blocks: int = 5) -> dict[str, Any]:
    """Small, fast settings for a tiny model and windows of a few seconds."""
    window = blocks * block_time
    return {
        "blocks_per_window": blocks,
        "time_window_delta_seconds": round(0.6 * window, 3),
        "grace_seconds": round(0.12 * window, 3),
        "poll_interval": 0.1,
        "gather_timeout": round(0.85 * window, 3),
        "topk_compression": 64,
        "target_chunk": 16,
        "learning_rate": 0.15,
        "batch_size": 32,
        "gather_peer_count": 8,
        "reserve_peer_count": 2,
        "minimum_peers": 1,
        "peer_list_window_margin": 1,
        "active_check_interval": window,
        "recent_windows": 2,
        "windows_per_weights": 2,
        "checkpoint_frequency": 10,
        "stale_retention": 4,
    }


# What a built-in task needs of a localnet beyond `localnet_hparams`: the lm task's model
# takes a few hundred ms a batch on one core, so its windows are longer, its batches smaller
# and its payloads sparser (docs/tasks.md has the figures).
TASK_BLOCKS = {"lm": 16}
TASK_HPARAMS: dict[str, dict[str, Any]] = {
    "lm": {
        "batch_size": 8,
        "learning_rate": 0.25,
        "topk_compression": 32,
        "target_chunk": 64,
        # Honest lm miners start from one model on one kind of text: their first uploads
        # keep alike entries (estimated Jaccard up to 0.62 in the first window, under 0.25
        # from the fourth), which the tiny task's 0.5 would call copies.
        "duplicate_threshold": 0.75,
    },
}


def _task_of(options: LocalnetOptions) -> str:
    """The task the localnet will run: --task, else --set/--hparams, else the default."""
    return load_hparams(options.hparams_file, options.overrides).task


@attrs.frozen
class Spec:
    role: str
    hotkey: str
    faulty: str = ""

    @property
    def name(self) -> str:
        return self.hotkey


def prepare(root: Path, options: LocalnetOptions) -> tuple[HParams, list[Spec]]:
    """Write hparams.json and register every neuron on a fresh fake chain."""
    task = _task_of(options)
    blocks, genesis = TASK_BLOCKS.get(task, 5), None
    if options.storage == "s3":
        # S3's Last-Modified has whole seconds, rounded down: an upload made just after its
        # window opened would look too early, unless windows open on whole seconds.
        blocks = whole_second_blocks(options.block_time, blocks) or blocks
        now = SystemClock().now()
        genesis = now.replace(microsecond=0) - timedelta(milliseconds=1)
    defaults = localnet_hparams(options.block_time, blocks)
    defaults.update(TASK_HPARAMS.get(task, {}))
    if options.storage == "s3":
        # A 1 s stamp counts only when its whole second is inside the time window
        # (core/windows.py): a second more keeps the miners' time to upload the same.
        defaults["time_window_delta_seconds"] += 1.0
    base = hparams_from_mapping(defaults)
    hparams = load_hparams(options.hparams_file, options.overrides, base=base)
    seconds = hparams.blocks_per_window * options.block_time
    if options.storage == "s3" and abs(seconds - round(seconds)) > 1e-6:
        raise ConfigError(
            "blocks_per_window",
            f"with --storage s3 a window must last whole seconds (S3 times have 1 s resolution); "
            f"{hparams.blocks_per_window} blocks of {options.block_time} s last {seconds:g} s",
        )
    (root / "hparams.json").write_text(json.dumps(hparams_as_mapping(hparams), indent=2))

    network = FakeNetwork.at_path(
        root / "chain.json", SystemClock(), block_time=options.block_time, genesis_time=genesis
    )
    specs = [Spec("validator", VALIDATOR_HOTKEY)]
    network.register(VALIDATOR_HOTKEY, stake=1000.0, validator_permit=True)
    for i in range(options.miners):
        specs.append(Spec("miner", f"miner-{i + 1}"))
    for number, mode in enumerate(faulty_modes(options.faulty), start=options.miners + 1):
        specs.append(Spec("miner", f"miner-{number}-{mode}", mode))
    for spec in specs[1:]:
        network.register(spec.hotkey, stake=1.0)
    return hparams, specs


def command(root: Path, spec: Spec, block_time: float, storage: LocalnetStorage) -> list[str]:
    args = [
        sys.executable, "-m", "neurons.cli", spec.role,
        "--hparams", str(root / "hparams.json"),
        *storage.args(spec),
        "--chain", "fake", "--chain-path", str(root / "chain.json"),
        "--block-time", str(block_time),
        "--hotkey", spec.hotkey,
        "--state-dir", str(root / "state"),
        "--events", str(root / "events" / f"{spec.name}.jsonl"),
        "--block-poll-interval", "0.05",
        "--threads", "1",
        "--log-level", "INFO",  # logs/<name>.log: a line per window
    ]  # fmt: skip
    if spec.faulty:
        args += ["--faulty", spec.faulty]
    return args


def fill_dataset(storage: LocalnetStorage) -> int:
    """Upload the lm corpus pages into the network's dataset bucket; bytes written."""

    async def fill() -> int:
        store = storage.dataset()
        try:
            return await upload_corpus(store)
        finally:
            await store.close()

    return asyncio.run(fill())


class Tail:
    """New complete JSON lines of a file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


class Network:
    def __init__(
        self, root: Path, specs: list[Spec], block_time: float, storage: LocalnetStorage
    ) -> None:
        self.root = root
        self.specs = specs
        self.block_time = block_time
        self.storage = storage
        self.procs: dict[str, subprocess.Popen] = {}
        self.tails = {s.name: Tail(root / "events" / f"{s.name}.jsonl") for s in specs}
        self.first_window: dict[str, int] = {}
        self.last_window: dict[str, int] = {}
        self.validator_rows: list[dict[str, Any]] = []
        self.uids: dict[str, int] = {}
        # Per neuron, window -> loss: the validator's held-out loss, a miner's training loss.
        self.losses: dict[str, dict[int, float]] = {s.name: {} for s in specs}

    def start(self) -> None:
        (self.root / "logs").mkdir(exist_ok=True)
        base = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        for spec in self.specs:
            log = open(self.root / "logs" / f"{spec.name}.log", "wb")  # noqa: SIM115
            self.procs[spec.name] = subprocess.Popen(  # noqa: S603 - our own interpreter
                command(self.root, spec, self.block_time, self.storage),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=neuron_environment(base, self.storage.env(spec)),
            )
            log.close()

    def poll(self) -> None:
        for name, tail in self.tails.items():
            for event in tail.read():
                if event.get("event") == "ready":
                    self.uids[name] = event["uid"]
                if event.get("event") != "window":
                    continue
                self.first_window.setdefault(name, event["window"])
                self.last_window[name] = event["window"]
                loss = event.get("loss", event.get("train_loss"))
                if isinstance(loss, int | float):
                    self.losses[name][event["window"]] = float(loss)
                if event["role"] == "validator":
                    self.validator_rows.append(event)

    def counted_rows(self) -> list[dict[str, Any]]:
        """Validator windows from the first one every miner took part in (earlier ones are
        warm-up: processes start at different times)."""
        miners = [s.name for s in self.specs if s.role == "miner"]
        if any(m not in self.first_window for m in miners):
            return []
        start = max(self.first_window[m] for m in miners)
        return [table_row(r) for r in self.validator_rows if r["window"] >= start]

    def uid(self, spec: Spec) -> int:
        """A neuron's uid: as it reported it, else its registration order (prepare's)."""
        return self.uids.get(spec.name, self.specs.index(spec))

    def faulty(self) -> dict[str, str]:
        """{uid: mode} of the miners that misbehave on purpose."""
        return {str(self.uid(s)): s.faulty for s in self.specs if s.faulty}

    def chart_lines(self, rows: list[dict[str, Any]]) -> tuple[list[Series], str]:
        """The loss chart's lines over the counted windows (`rows`), and its title."""
        labels = {}
        for spec in self.specs:
            role = "eval loss" if spec.role == "validator" else "training loss"
            tag = f", faulty: {spec.faulty}" if spec.faulty else ""
            labels[spec.name] = f"{spec.name} (uid {self.uid(spec)}, {role}{tag})"
        series = neuron_series(
            self.losses,
            [r["window"] for r in rows],
            labels,
            primary=VALIDATOR_HOTKEY,
            dashed={s.name for s in self.specs if s.faulty},
        )
        miners = sum(s.role == "miner" and not s.faulty for s in self.specs)
        faulty = "".join(f" + {s.faulty}" for s in self.specs if s.faulty)
        return series, f"localnet: 1 validator, {miners} miners{faulty}; loss per window"

    def chart(self, rows: list[dict[str, Any]], path: Path) -> Path:
        return save_loss_png(*self.chart_lines(rows), path)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def status(self) -> Text:
        parts = []
        for spec in self.specs:
            proc = self.procs.get(spec.name)
            state = "up" if proc and proc.poll() is None else f"exit {proc.poll() if proc else '?'}"
            window = self.last_window.get(spec.name, "-")
            parts.append(f"{spec.name}: {state}, window {window}")
        return Text(" | ".join(parts), style="dim")

    def stop(self, timeout: float = 15.0) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


def _tail_of_log(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the neurons and SeaweedFS are stopped either way."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals to the caller
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_localnet(options: LocalnetOptions, console: Console) -> int:
    root = options.directory or Path(tempfile.mkdtemp(prefix="templar-localnet-"))
    root.mkdir(parents=True, exist_ok=True)
    hparams, specs = prepare(root, options)
    window_s = hparams.blocks_per_window * options.block_time
    with _sigterm_as_interrupt():
        try:
            # Here once, so that the neurons load the kernels from numba's cache instead of
            # each compiling them inside its first gathers (core/warmup.py).
            console.print("warming up the gather's CPU kernels ...", highlight=False)
            console.print(warm([hparams.topk_params()]).describe(), highlight=False)
            with localnet_storage(options.storage, root, specs) as storage:
                if hparams.task == "lm":
                    written = fill_dataset(storage)
                    console.print(f"dataset bucket: {written} bytes of lm corpus pages")
                console.print(
                    f"[bold]localnet[/bold] in {root}: 1 validator, {options.miners} miners"
                    + "".join(f" + 1 {m} miner" for m in faulty_modes(options.faulty))
                    + f"; {window_s:.1f} s windows; {storage.description}"
                    + f"; stopping after {options.windows} windows"
                )
                net = Network(root, specs, options.block_time, storage)
                return _run(net, options, window_s, console)
        except ServerUnavailable as exc:
            console.print(f"[red]localnet failed[/red]: SeaweedFS cannot start: {exc}")
            return 1
        except KeyboardInterrupt:
            # Interrupted before the neurons started (while SeaweedFS was starting).
            console.print("[red]localnet failed[/red]: interrupted")
            return 1


def _run(net: Network, options: LocalnetOptions, window_s: float, console: Console) -> int:
    root = net.root
    started = time.monotonic()
    budget = 30.0 + (options.windows + 3) * window_s + options.slack_seconds
    failure = ""
    shown = 0
    live = Live(console=console, refresh_per_second=4, transient=False)
    interactive = console.is_terminal
    if interactive:
        live.start()
    try:
        net.start()
        while True:
            time.sleep(0.2)
            net.poll()
            rows = net.counted_rows()
            if interactive:
                live.update(Group(render(rows[-20:], title="localnet (live)"), net.status()))
            else:
                for r in rows[shown:]:
                    console.print(line(r), highlight=False, soft_wrap=True)
                shown = len(rows)
            if len(rows) >= options.windows:
                break
            if net.dead():
                failure = f"neuron(s) exited early: {', '.join(net.dead())}"
                break
            if time.monotonic() - started > budget:
                failure = f"no {options.windows} windows after {budget:.0f} s"
                break
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        if interactive:
            live.stop()
        # A window in progress finishes before a neuron exits: long windows need longer.
        codes = net.stop(max(15.0, 2 * window_s + 5))
    rows = net.counted_rows()[: options.windows]
    console.print(render(rows))
    console.print(summary(rows, net.faulty()), highlight=False, soft_wrap=True)
    if rows:
        try:
            png = net.chart(rows, options.plot.absolute())
            console.print(f"loss chart: {png}", highlight=False, soft_wrap=True)
        except OSError as exc:  # the run's results are still worth keeping below
            console.print(f"[red]loss chart not written[/red]: {exc}")
    out = {
        "columns": list(COLUMNS),
        "rows": rows,
        "exit_codes": codes,
        "directory": str(root),
        "storage": options.storage,
    }
    (root / "localnet.json").write_text(json.dumps(out, indent=2))
    if options.json_out is not None:
        options.json_out.write_text(json.dumps(out, indent=2))
    console.print(f"took {time.monotonic() - started:.0f} s; run directory {root}")
    if failure:
        console.print(f"[red]localnet failed[/red]: {failure}")
        for name in net.dead() or [s.name for s in net.specs]:
            console.print(f"--- {name} log ---\n{_tail_of_log(root / 'logs' / f'{name}.log')}")
        return 1
    return 0
