"""Mistakes an operator makes end in one line that says what is wrong and what to do, exit
code 2, no traceback (unless --log-level DEBUG), and nothing created on disk.

Each test runs the CLI in-process in an empty working directory, so the defaults
(./templar-state, ./templar-storage, ./templar-chain.json) would land there; no test reaches
beyond 127.0.0.1, and none waits: the chain's retries back off on a fake clock.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from dependency_injector import providers
from typer.testing import CliRunner

from adapters.chain.fake import FakeNetwork
from adapters.clock import FakeClock, SystemClock
from neurons.cli import app
from neurons.container import Container
from tests.unit.test_neuron_config import SECRET, r2_env


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("TEMPLAR_", "R2_")):
            monkeypatch.delenv(name)
    return tmp_path


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def one_line(result, *words: str) -> str:
    """The run ended with exit code 2 and one line on stderr holding every one of `words`."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def chain_file(root: Path, *hotkeys: str, block_time: float = 0.5) -> Path:
    path = root / "chain.json"
    network = FakeNetwork.at_path(path, SystemClock(), block_time=block_time)
    for hotkey in hotkeys:
        network.register(hotkey)
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nobody listens


# Item 3: errors an operator can act on --------------------------------------------------


def test_no_wallet_names_the_keyfile_and_the_btcli_command(workdir: Path) -> None:
    wallets = workdir / "wallets"
    result = run(
        "miner", "--chain", "bittensor", "--storage", "local",
        "--wallet-path", str(wallets), "--wallet-name", "nope", "--wallet-hotkey", "hk",
    )  # fmt: skip
    line = one_line(result, "hotkey 'hk' of wallet 'nope'", "does not exist", "btcli wallet")
    assert str(wallets / "nope" / "hotkeys" / "hk") in line
    assert files(workdir) == set()


def test_unregistered_hotkey_on_the_fake_chain(workdir: Path) -> None:
    path = chain_file(workdir, "someone-else")
    before = files(workdir)
    result = run("miner", "--chain", "fake", "--chain-path", str(path), "--hotkey", "m",
                 "--storage", "local")  # fmt: skip
    one_line(result, "hotkey m is not registered", "register it")
    assert files(workdir) == before  # no storage root, state dir or scratch


def test_a_missing_fake_chain_is_not_created(workdir: Path) -> None:
    result = run("validator", "--chain", "fake", "--hotkey", "v", "--storage", "local")
    one_line(result, "no fake chain at ./templar-chain.json", "register the hotkey first")
    assert files(workdir) == set()


def test_unregistered_hotkey_on_bittensor(workdir: Path) -> None:
    pytest.importorskip("bittensor")
    from tests.support.fake_substrate import FakeSubtensor

    node = FakeSubtensor(FakeClock())
    wallet = _wallet(workdir / "wallets")
    Container.chain.override(_bittensor_on(node, wallet))
    try:
        result = run(*_bittensor_args(workdir), "--netuid", str(node.netuid))
    finally:
        Container.chain.reset_override()
    one_line(result, "is not registered on subnet", "btcli subnet register", "--wallet.name w")
    assert files(workdir) == {"wallets", *_wallet_files()}


def test_unreachable_chain(workdir: Path) -> None:
    pytest.importorskip("bittensor")
    _wallet(workdir / "wallets")
    network = f"ws://127.0.0.1:{closed_port()}"
    # The adapter backs off between attempts on the container's clock: a fake one, no waits.
    Container.clock.override(providers.Object(FakeClock()))
    try:
        result = run(*_bittensor_args(workdir), "--network", network)
    finally:
        Container.clock.reset_override()
    one_line(result, f"cannot reach the chain ({network})", "attempts", "check --network")
    assert files(workdir) == {"wallets", *_wallet_files()}


def test_missing_write_keys_are_listed_at_once_per_role(workdir: Path) -> None:
    env = {k: v for k, v in r2_env().items() if "_WRITE_" not in k}
    result = run("validator", "--chain", "fake", "--hotkey", "v", env=env)
    line = one_line(result, "a validator on R2 needs", "--storage local")
    names = [k for k in r2_env() if "_WRITE_" in k]
    assert len(names) == 4 and all(name in line for name in names)
    assert SECRET not in result.output
    # a miner needs the gradient bucket's write keys only
    result = run("miner", "--chain", "fake", "--hotkey", "m", env=env)
    line = one_line(result, "a miner on R2 needs")
    assert "R2_GRADIENTS_WRITE_SECRET_ACCESS_KEY" in line and "AGGREGATOR" not in line
    assert files(workdir) == set()


def test_r2_credentials_that_cannot_go_on_chain(workdir: Path) -> None:
    env = r2_env() | {"R2_GRADIENTS_READ_ACCESS_KEY_ID": "short"}
    chain_file(workdir, "m")
    before = files(workdir)
    result = run("miner", "--chain", "fake", "--chain-path", "chain.json", "--hotkey", "m",
                 env=env)  # fmt: skip
    one_line(result, "cannot be committed on chain", "32-character")
    assert SECRET not in result.output
    assert files(workdir) == before


def test_unreachable_storage_endpoint(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import neurons.container as container

    real = container.S3Settings
    # One attempt: botocore's backoff between retries would be real waiting.
    monkeypatch.setattr(container, "S3Settings", lambda **kw: real(max_attempts=1, **kw))
    endpoint = f"http://127.0.0.1:{closed_port()}"
    chain_file(workdir, "m")
    before = files(workdir)
    result = run("miner", "--chain", "fake", "--chain-path", "chain.json", "--hotkey", "m",
                 "--s3-endpoint", endpoint, env=r2_env())  # fmt: skip
    one_line(result, f"cannot reach the bucket's endpoint {endpoint}", "check --s3-endpoint")
    assert SECRET not in result.output
    assert files(workdir) == before


def test_debug_shows_the_traceback_too(workdir: Path) -> None:
    result = run(
        "miner", "--chain", "fake", "--hotkey", "m", "--storage", "local", "--log-level", "DEBUG"
    )
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: chain_path: no fake chain")


# Item 6: CLI conventions -----------------------------------------------------------------


def test_version_flag() -> None:
    from importlib import metadata

    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == metadata.version("templar-comms")


@pytest.mark.parametrize("role", ["miner", "validator"])
def test_help_shows_every_default_and_variable(role: str) -> None:
    import typer.main

    command = typer.main.get_command(app).commands[role]
    options = [p for p in command.params if p.name != "help"]
    assert len(options) > 20
    for option in options:
        flag = option.opts[0]
        assert option.envvar == "TEMPLAR_" + flag[2:].replace("-", "_").upper(), flag
        assert option.show_envvar, flag
        # a string describing the default (None: left to the settings), or the default itself
        shown = option.show_default
        assert (shown is True and option.default is not None) or (shown and shown != ""), flag
    result = CliRunner().invoke(app, [role, "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.split())
    for shown in ("[env var: TEMPLAR_BLOCK_TIME]", "[default: (12.0)]", "[env var: TEMPLAR_SET]"):
        assert shown in text


def test_role_specific_options_only_on_their_role() -> None:
    assert "--faulty" in run("miner", "--help").stdout
    assert "--faulty" not in run("validator", "--help").stdout
    result = run("validator", "--faulty", "garbage", "--hotkey", "v", "--chain", "fake")
    assert result.exit_code == 2
    assert "No such option" in result.output


@pytest.mark.parametrize(("option", "value"), [("--windows", "0"), ("--windows", "-2"),
                                               ("--threads", "0")])  # fmt: skip
def test_counts_are_validated(workdir: Path, option: str, value: str) -> None:
    chain_file(workdir, "m")
    before = files(workdir)
    result = run("miner", "--chain", "fake", "--chain-path", "chain.json", "--hotkey", "m",
                 "--storage", "local", option, value)  # fmt: skip
    one_line(result, f"{option}: must be at least 1, got {value}")
    assert files(workdir) == before


@pytest.mark.parametrize("flag", ["--netuid", "--block-time", "--finality-lag"])
def test_negative_settings_are_refused_in_one_line(workdir: Path, flag: str) -> None:
    result = run("miner", "--chain", "fake", "--hotkey", "m", flag, "-1")
    one_line(result, flag[2:].replace("-", "_"), "-1")
    assert files(workdir) == set()


def test_a_block_time_that_disagrees_with_the_chain_file_is_an_error(workdir: Path) -> None:
    chain_file(workdir, "m", block_time=0.5)
    before = files(workdir)
    args = ["miner", "--chain", "fake", "--chain-path", "chain.json", "--hotkey", "m",
            "--storage", "local"]  # fmt: skip
    result = run(*args, "--block-time", "2")
    one_line(result, "--block-time 2 disagrees with the fake chain", "0.5 s per block")
    result = run(*args, env={"TEMPLAR_BLOCK_TIME": "3"})
    one_line(result, "--block-time 3 disagrees")
    assert files(workdir) == before


def test_without_block_time_a_neuron_counts_blocks_as_the_chain_file_does(tmp_path: Path) -> None:
    from neurons.config import NeuronSettings
    from neurons.preflight import fake_chain_settings

    path = chain_file(tmp_path, "m", block_time=0.5)
    settings = NeuronSettings(chain="fake", chain_path=str(path), hotkey="m")
    assert settings.block_time == 12.0
    assert fake_chain_settings(settings, explicit=()).block_time == 0.5
    assert fake_chain_settings(settings, explicit={"netuid"}).block_time == 0.5


# Helpers for the bittensor cases ---------------------------------------------------------


def _wallet(path: Path):
    import bittensor

    wallet = bittensor.Wallet(name="w", hotkey="h", path=str(path))
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    return wallet


def _wallet_files() -> set[str]:
    return {"wallets/w", "wallets/w/hotkeys", "wallets/w/hotkeys/h", "wallets/w/hotkeys/hpub.txt"}


def _bittensor_args(root: Path) -> list[str]:
    return [
        "miner", "--chain", "bittensor", "--storage", "local",
        "--wallet-path", str(root / "wallets"), "--wallet-name", "w", "--wallet-hotkey", "h",
    ]  # fmt: skip


def _bittensor_on(node, wallet):
    from adapters.chain.bittensor import BittensorChain

    return providers.Singleton(
        lambda: BittensorChain(
            netuid=node.netuid,
            wallet=wallet,
            network="local",
            substrate_factory=node.substrate,
            clock=node.clock,
        )
    )


def test_a_fake_chain_needs_a_hotkey(workdir: Path) -> None:
    result = run("miner", "--chain", "fake", "--storage", "local")
    one_line(result, "hotkey: required with the fake chain", "pass --hotkey")
    assert files(workdir) == set()
