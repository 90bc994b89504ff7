"""Configuration: hparams (shared by every neuron of a network) and neuron settings (this box).

Precedence, lowest first:

    hparams:   defaults in `HParams`  <  the hparams JSON file (--hparams)  <  --set name=value
    settings:  defaults in `NeuronSettings`  <  TEMPLAR_* environment variables  <  CLI flags
    R2 keys:   R2_{GRADIENTS,AGGREGATOR,DATASET}_* environment variables only (never flags:
               a flag shows up in `ps` and in shell history)

An unknown key or a value of the wrong type is a `ConfigError` that names the key. Nothing here
ever formats a secret: `Bucket` hides it from repr, and errors name variables, not values.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from adapters.storage.obstore_store import check_endpoint
from adapters.storage.r2_env import MissingEnv, RoleBuckets, buckets_from_env
from core.aggregate import Normalisation
from core.compression import TopKParams
from core.exchange import ExchangeSettings
from core.fetch import IN_FLIGHT_BYTES, FetchSettings
from core.gather import GatherSettings
from core.peers import PeerSettings
from core.profiles import PROFILES
from core.retention import ALL_KINDS, RetentionPolicy

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _hp(default: Any, help: str, *, minimum: float | None = None, positive: bool = False) -> Any:
    return attrs.field(
        default=default, metadata={"help": help, "minimum": minimum, "positive": positive}
    )


@attrs.frozen(kw_only=True)
class HParams:
    """Every network-wide parameter, with Templar's names (and defaults where Templar has one).

    All neurons of one network must agree on these; `docs/configuration.md` lists them.
    """

    # Protocol ----------------------------------------------------------------------------
    version: str = _hp(
        "1",
        "protocol version in every object name; releases that cannot read "
        "each other's payloads use different versions",
    )
    blocks_per_window: int = _hp(7, "blocks per window", positive=True)
    time_window_delta_seconds: float = _hp(
        30.0,
        "a payload counts if uploaded within this many seconds of its window's first block",
        positive=True,
    )
    # Compression -------------------------------------------------------------------------
    topk_compression: int = _hp(32, "entries kept per chunk", positive=True)
    target_chunk: int = _hp(
        64, "chunk side (largest divisor of a dimension up to this)", positive=True
    )
    use_dct: bool = _hp(False, "DCT each chunk before top-k")
    quantization_bins: int = _hp(4, "value quantisation bins (0: float32 values)", minimum=0)
    quantization_range: float = _hp(6.0, "quantisation range in standard deviations", positive=True)
    index_code: str = _hp(
        "elias_fano",
        "how gradient payloads carry their indices: 'elias_fano' (codec v2) or 'packed' "
        "(12-bit fields, the previous version)",
    )
    index_code_transition_until: int = _hp(
        0,
        "payloads in the other index code are read too for windows below this (0: never)",
        minimum=0,
    )
    momentum_decay: float = _hp(
        0.999, "error-feedback decay of what compression left out", minimum=0
    )
    # Training ----------------------------------------------------------------------------
    learning_rate: float = _hp(
        4e-4, "outer step: parameters move by this times the aggregate", positive=True
    )
    batch_size: int = _hp(6, "samples per batch", positive=True)
    inner_steps: int = _hp(1, "batches per window whose mean gradient a miner sends", positive=True)
    seed: int = _hp(1234, "seed of the shared initial model and of the synthetic data", minimum=0)
    # Peers -------------------------------------------------------------------------------
    gather_peer_count: int = _hp(15, "peers gathered per window", positive=True)
    reserve_peer_count: int = _hp(5, "reserves that replace peers that fail", minimum=0)
    minimum_peers: int = _hp(5, "fewer valid peers and there is no aggregate", positive=True)
    peer_replacement_frequency: int = _hp(5, "windows between peer replacements", positive=True)
    peers_to_replace: int = _hp(2, "worst peers replaced each replacement window", minimum=0)
    peer_list_window_margin: int = _hp(
        2, "a list selected at window w takes effect at w + this", minimum=0
    )
    active_check_interval: float = _hp(60.0, "seconds between peer activity checks", positive=True)
    recent_windows: int = _hp(
        5, "a peer that uploaded in this many windows is active", positive=True
    )
    reset_inactivity_windows: int = _hp(
        25, "scores of peers inactive this long are reset", minimum=0
    )
    exploration_weight: float = _hp(
        0.1,
        "share of the best score every candidate gets in selection, so unscored peers get picked",
        minimum=0,
    )
    # Gather ------------------------------------------------------------------------------
    gather_concurrency: int = _hp(32, "peers fetched at once", positive=True)
    gather_in_flight_mb: float = _hp(
        IN_FLIGHT_BYTES / 2**20,
        "MiB of payloads held at once: fewer peers are fetched at once where their size bound "
        "needs it (at least one)",
        positive=True,
    )
    gather_timeout: float = _hp(35.0, "seconds one gather may take in all", positive=True)
    gather_peer_timeout: float = _hp(
        0.0,
        "seconds one peer may take before its reserve is tried (0: up to the gather deadline)",
        minimum=0,
    )
    poll_interval: float = _hp(
        0.5, "seconds between looks for a payload not there yet", positive=True
    )
    grace_seconds: float = _hp(
        2.0, "seconds past the time window an upload may take to become visible", minimum=0
    )
    normalisation: str = _hp(
        "unit",
        "per-peer normalisation: unit, median_clip, kept_mean (Templar's rule, the templar "
        "profile's default) or none",
    )
    duplicate_threshold: float = _hp(
        0.5,
        "a validator scores an upload as a copy when its kept entries are at least this alike "
        "(estimated Jaccard) to an earlier upload's; 0: off. Honest peers measured 0.09-0.38, "
        "copies 0.66-1.0 (docs/reliability.md)",
        minimum=0,
    )
    # Scoring and weights -----------------------------------------------------------------
    gradient_score_ma_alpha: float = _hp(
        0.6, "weight of the newest evaluation in a peer's moving-average score", minimum=0
    )
    missing_gradient_penalty_score: float = _hp(
        -1.0,
        "evaluation given to a skipped peer (missing, late, invalid): the worst a gradient "
        "can score, so skipping is never better than a bad upload",
    )
    eval_lr_factor: float = _hp(
        0.5, "a gradient is scored by a step of learning_rate times this", positive=True
    )
    power_normalisation: float = _hp(
        2.0, "weights are positive scores to this power, normalised", positive=True
    )
    windows_per_weights: int = _hp(10, "windows between weight settings", positive=True)
    eval_batches: int = _hp(
        2, "held-out batches a validator scores each gradient on", positive=True
    )
    uids_per_window: int = _hp(
        15,
        "peers a validator evaluates a window, the longest-waiting first (every eligible "
        "peer within ceil(uids / uids_per_window) windows: docs/peers.md)",
        positive=True,
    )
    # Checkpoints, sync, cleanup ----------------------------------------------------------
    checkpoint_frequency: int = _hp(100, "windows between validator checkpoints", positive=True)
    sync_max_steps_behind: int = _hp(
        3, "a miner further behind than this loads a checkpoint", minimum=0
    )
    catch_up_threshold: int = _hp(
        15, "windows behind beyond which catch-up replays aggregates", minimum=0
    )
    stale_retention: int = _hp(
        10,
        "own gradients (and checkpoints beyond the newest 3) older than this many windows "
        "are deleted",
        positive=True,
    )
    debug_retention: int = _hp(10, "own debug dicts are kept this many windows", positive=True)
    peer_list_retention: int = _hp(
        10,
        "a validator's peer lists are kept this many windows (its newest always)",
        positive=True,
    )
    aggregate_retention: int = _hp(
        0,
        "aggregates are kept this many windows (the newest always); 0: checkpoint_frequency "
        "+ sync_max_steps_behind, the least catch-up needs",
        minimum=0,
    )
    start_window_retention: int = _hp(
        100,
        "another protocol version's start window goes once that version has written nothing "
        "in the bucket for this many windows (ours always stays)",
        positive=True,
    )
    janitor_max_deletes: int = _hp(
        1000, "most objects the janitor deletes from one bucket per window", positive=True
    )
    # Protocol profile (docs/templar.md) --------------------------------------------------
    protocol: str = _hp(
        "native",
        "protocol profile: 'native' (this project's names, bodies and time windows) or "
        "'templar' (a live Templar subnet's); also --protocol / TEMPLAR_PROTOCOL",
    )
    # Keys of a Templar hparams file with no meaning here, kept as they were read (only the
    # templar profile accepts such keys; see TEMPLAR_RENAMES for the ones that are mapped).
    unmapped: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    # End of the protocol profile's fields ------------------------------------------------
    # Task (neurons/task.py, docs/tasks.md) -----------------------------------------------
    task: str = _hp(
        "tiny",
        "what the network trains: a built-in task ('tiny': the demo's synthetic regression, "
        "'lm': a byte-level transformer language model) or 'package.module:factory'",
    )
    # ---------------------------------------------------------------------------- end Task

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(type(self)):
            _check_range(field, getattr(self, field.name))
        if self.protocol not in PROFILES:
            raise ConfigError("protocol", f"must be one of {', '.join(PROFILES)}")
        try:
            Normalisation(self.normalisation)
        except ValueError:
            choices = ", ".join(n.value for n in Normalisation)
            raise ConfigError("normalisation", f"must be one of {choices}") from None
        if self.minimum_peers > self.gather_peer_count:
            raise ConfigError("minimum_peers", "cannot exceed gather_peer_count")
        floor = self.checkpoint_frequency + self.sync_max_steps_behind
        if 0 < self.aggregate_retention < floor:
            raise ConfigError(
                "aggregate_retention",
                f"must be 0 or >= checkpoint_frequency + sync_max_steps_behind ({floor}): "
                "catch-up replays aggregates from the newest checkpoint",
            )
        # The core settings classes have their own limits (target_chunk <= 64, ...).
        for build in (self.topk_params, self.peer_settings, self.gather_settings):
            try:
                build()
            except (TypeError, ValueError) as exc:
                raise ConfigError(build.__name__.removesuffix("_settings"), str(exc)) from None

    # Settings objects for the core services ----------------------------------------------

    def topk_params(self) -> TopKParams:
        return TopKParams(
            target_chunk=self.target_chunk,
            topk=self.topk_compression,
            use_dct=self.use_dct,
            quantization_bins=self.quantization_bins,
            quantization_range=self.quantization_range,
            index_code=self.index_code,
        )

    def peer_settings(self) -> PeerSettings:
        return PeerSettings(
            gather_peer_count=self.gather_peer_count,
            reserve_peer_count=self.reserve_peer_count,
            minimum_peers=self.minimum_peers,
            peer_replacement_frequency=self.peer_replacement_frequency,
            peers_to_replace=self.peers_to_replace,
            peer_list_window_margin=self.peer_list_window_margin,
            active_check_interval=self.active_check_interval,
            recent_windows=self.recent_windows,
            reset_inactivity_windows=self.reset_inactivity_windows,
            exploration_weight=self.exploration_weight,
        )

    def retention_policy(self) -> RetentionPolicy:
        """What the janitor keeps of every kind we write (docs/checkpoints.md, "Retention")."""
        aggregates = self.aggregate_retention or (
            self.checkpoint_frequency + self.sync_max_steps_behind
        )
        return RetentionPolicy(
            stale_retention=self.stale_retention,
            debug_retention=self.debug_retention,
            peer_list_retention=self.peer_list_retention,
            aggregate_retention=aggregates,
            start_window_retention=self.start_window_retention,
            max_deletes=self.janitor_max_deletes,
            kinds=ALL_KINDS,
            version=self.version,
        )

    def exchange_settings(self, *, timestamp_resolution: float = 1.0) -> ExchangeSettings:
        return ExchangeSettings(
            poll_interval=self.poll_interval,
            grace_seconds=self.grace_seconds,
            timestamp_resolution=timestamp_resolution,
        )

    def fetch_settings(self) -> FetchSettings:
        return FetchSettings(
            concurrency=self.gather_concurrency,
            in_flight_bytes=int(self.gather_in_flight_mb * 2**20),
            timeout=self.gather_timeout,
            peer_timeout=self.gather_peer_timeout or None,
        )

    def gather_settings(self) -> GatherSettings:
        return GatherSettings(
            fetch=self.fetch_settings(),
            normalisation=Normalisation(self.normalisation),
            min_peers=self.minimum_peers,
            # Copies are judged by the validators, who pay for them; a miner's gather would
            # only flag them, and flagging costs it the compiled sum's fold on the loop.
        )


def _check_range(field: attrs.Attribute, value: Any) -> None:
    meta = field.metadata
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(field.name, "must be finite")
    if meta.get("positive") and value <= 0:
        raise ConfigError(field.name, f"must be > 0, got {value!r}")
    minimum = meta.get("minimum")
    if minimum is not None and value < minimum:
        raise ConfigError(field.name, f"must be >= {minimum}, got {value!r}")


def _expected_type(field: attrs.Attribute) -> type:
    return type(field.default)


def _coerce(key: str, value: Any, kind: type) -> Any:
    """JSON's types onto the field's: an int is a fine float; nothing else converts."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and number and isinstance(value, int):
        return value
    if kind is float and number:
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")


HPARAM_FIELDS: dict[str, attrs.Attribute] = {
    f.name: f for f in attrs.fields(HParams) if f.name != "unmapped"
}
# Templar's hparams.json names for ours (docs/templar.md, "hparams mapping"); its keys that
# have our name already map as they are.
TEMPLAR_RENAMES = {"outer_learning_rate": "learning_rate"}
_UNKNOWN = "unknown hparam (see docs/configuration.md for the names"


def _templar_names(values: Mapping[str, Any]) -> dict[str, Any]:
    renamed: dict[str, Any] = {}
    for key, value in values.items():
        ours = TEMPLAR_RENAMES.get(key, key)
        if ours in renamed:
            raise ConfigError(key, f"given twice: as {key} and as {ours}")
        renamed[ours] = value
    return renamed


def hparams_from_mapping(values: Mapping[str, Any], base: HParams | None = None) -> HParams:
    """`base` (default: the defaults) with `values` applied.

    The protocol is `values`' own `protocol`, else `base`'s. The native profile refuses an
    unknown key; the templar profile maps Templar's names (TEMPLAR_RENAMES), keeps the keys
    that mean nothing here in `unmapped` and lists them once at INFO.
    """
    base = base or HParams()
    protocol = values.get("protocol", base.protocol)
    if protocol not in PROFILES:
        raise ConfigError("protocol", f"must be one of {', '.join(PROFILES)}, got {protocol!r}")
    if protocol == "templar":
        values = _templar_names(values)
    changes: dict[str, Any] = {}
    if protocol == "templar" and base.protocol != "templar" and "normalisation" not in values:
        # Templar's own aggregation rule, so our miners take the step Templar's miners take.
        changes["normalisation"] = Normalisation.KEPT_MEAN.value
    unmapped: dict[str, Any] = {}
    for key, value in values.items():
        field = HPARAM_FIELDS.get(key)
        if field is None and protocol == "templar":
            unmapped[key] = value
            continue
        if field is None:
            hint = "; a Templar hparams.json loads with --protocol templar)"
            raise ConfigError(key, _UNKNOWN + hint)
        changes[key] = _coerce(key, value, _expected_type(field))
    if unmapped:
        log.info(
            "templar hparams with no meaning here, kept unused: %s", ", ".join(sorted(unmapped))
        )
        changes["unmapped"] = {**base.unmapped, **unmapped}
    try:
        return attrs.evolve(base, **changes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a core settings validator refused a value
        raise ConfigError("hparams", str(exc)) from None


def hparams_as_mapping(hparams: HParams) -> dict[str, Any]:
    """What `hparams_from_mapping` reads back into `hparams`: the fields by name, and the
    unmapped Templar keys beside them (as the file they came from had them)."""
    values = attrs.asdict(hparams, filter=lambda a, _v: a.name != "unmapped")
    return {**dict(hparams.unmapped), **values}


def parse_assignment(text: str) -> tuple[str, Any]:
    """`name=value` from the command line; the value is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(text, "expected name=value")
    field = HPARAM_FIELDS.get(key)
    if field is None:
        raise ConfigError(key, _UNKNOWN + ")")
    if _expected_type(field) is str:
        return key, raw
    try:
        return key, json.loads(raw)
    except ValueError:
        raise ConfigError(key, f"{raw!r} is not a {_expected_type(field).__name__}") from None


def load_hparams(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: HParams | None = None,
) -> HParams:
    """`base` (default: the defaults), then the JSON object in `path`, then `overrides`.

    The protocol is chosen first (overrides', else the file's, else `base`'s), since it
    decides how the file is read: a Templar hparams.json loads only in the templar profile.
    """
    hparams = base or HParams()
    overrides = dict(overrides or {})
    body: dict[str, Any] = {}
    if path is not None:
        try:
            body = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(str(path), "hparams file not found") from None
        except ValueError as exc:
            raise ConfigError(str(path), f"not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ConfigError(str(path), "hparams file must hold a JSON object")
    if "protocol" in overrides:
        body = {**body, "protocol": overrides["protocol"]}
    hparams = hparams_from_mapping(body, hparams)
    return hparams_from_mapping(overrides, hparams)


# Neuron settings: this machine, this wallet ------------------------------------------------

STORAGE_CHOICES = ("r2", "local", "memory")


def _direct_bytes(_inst: object, _attr: object, value: int) -> None:
    if value < 0 or value % 4096:
        raise ValueError(f"storage_direct_bytes must be 0 or a multiple of 4096, not {value}")


STORAGE_CLIENTS = ("boto3", "obstore")


def _storage_client(inst: NeuronSettings, _attr: object, value: str) -> None:
    if value not in STORAGE_CLIENTS:
        raise ValueError(f"'storage_client' must be one of {STORAGE_CLIENTS}, not {value!r}")
    if value == "obstore" and inst.s3_endpoint:
        try:
            check_endpoint(inst.s3_endpoint)
        except ValueError as exc:
            raise ValueError(f"'s3_endpoint' cannot be used by obstore: {exc}") from None


CHAIN_CHOICES = ("bittensor", "fake", "memory")
# late: uploads after the time window; garbage: random bytes; silent: uploads nothing;
# copier: re-uploads another miner's gradient of the window as its own (neurons/copier.py).
FAULTY_MODES = ("late", "garbage", "silent", "copier")


@attrs.frozen(kw_only=True)
class NeuronSettings:
    """Where this neuron runs. Each field has a TEMPLAR_<NAME> variable and a CLI flag."""

    storage: str = attrs.field(default="r2", validator=attrs.validators.in_(STORAGE_CHOICES))
    # Root directory of the local store (one sub-directory per bucket).
    storage_root: str = "./templar-storage"
    # Objects of at least this many bytes the local store writes around the page cache
    # (O_DIRECT; a multiple of 4096, e.g. 8388608); 0, the default: every object through it.
    storage_direct_bytes: int = attrs.field(default=0, validator=_direct_bytes)
    # An S3 endpoint for every bucket, overriding R2's (a SeaweedFS, a MinIO).
    s3_endpoint: str = ""
    # boto3's request checksums: `when_required` (plain bodies with a Content-MD5, as R2 takes
    # them) or `when_supported` (aws-chunked bodies with a CRC32 trailer, which R2 refuses).
    s3_request_checksum_calculation: str = attrs.field(
        default="when_required", validator=attrs.validators.in_(("when_required", "when_supported"))
    )
    # Idle S3 clients (one per peer bucket and credentials) kept for the next window.
    s3_client_cache_size: int = attrs.field(default=256, validator=attrs.validators.ge(0))
    # The S3 client under the r2 storage: boto3 or obstore (docs/storage.md#the-obstore-client).
    storage_client: str = attrs.field(default="obstore", validator=_storage_client)
    chain: str = attrs.field(default="bittensor", validator=attrs.validators.in_(CHAIN_CHOICES))
    # The fake chain's shared file.
    chain_path: str = "./templar-chain.json"
    block_time: float = attrs.field(default=12.0, validator=attrs.validators.gt(0))
    # Blocks the fake chain's finalised block trails its head by (Bittensor's own: see
    # docs/chain.md); the neurons follow finalised blocks.
    finality_lag: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    netuid: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    network: str = "finney"
    wallet_name: str = "default"
    wallet_hotkey: str = "default"
    # Where bittensor wallets live (btcli's --wallet.path).
    wallet_path: str = "~/.bittensor/wallets"
    # Hotkey (SS58 or any name on the fake chain); empty: the wallet's.
    hotkey: str = ""
    device: str = "cpu"
    # Where this neuron keeps its own state (resume snapshots, local copies).
    state_dir: str = "./templar-state"
    # A JSON line per window is appended here (the localnet reads it); empty: none.
    events: str = ""
    # Seconds between looks at the chain's block height.
    block_poll_interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    # Windows between measurements of this machine's clock offset (against the store's Date
    # and the chain's block timestamps) and of the finality lag; also measured at start.
    clock_check_windows: int = attrs.field(default=50, validator=attrs.validators.gt(0))
    # Test and demo behaviour of a miner: one of FAULTY_MODES (empty: honest).
    faulty: str = attrs.field(default="", validator=attrs.validators.in_(("", *FAULTY_MODES)))
    # Prometheus metrics on 127.0.0.1:<port> (neurons/metrics.py); 0: none.
    metrics_port: int = attrs.field(
        default=0,
        validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(65535)),
    )


SETTINGS_FIELDS: dict[str, attrs.Attribute] = {f.name: f for f in attrs.fields(NeuronSettings)}
ENV_PREFIX = "TEMPLAR_"


def load_settings(env: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> NeuronSettings:
    """Defaults, then TEMPLAR_<NAME> variables, then CLI `flags` (None values are unset)."""
    values: dict[str, Any] = {}
    for name, field in SETTINGS_FIELDS.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None or raw == "":
            continue
        kind = _expected_type(field)
        if kind is str:
            values[name] = raw
            continue
        try:
            values[name] = _coerce(ENV_PREFIX + name.upper(), json.loads(raw), kind)
        except ValueError:
            raise ConfigError(ENV_PREFIX + name.upper(), f"expected {kind.__name__}") from None
    for name, value in (flags or {}).items():
        if name not in SETTINGS_FIELDS:
            raise ConfigError(name, "unknown setting")
        if value is not None:
            values[name] = _coerce(name, value, _expected_type(SETTINGS_FIELDS[name]))
    try:
        return NeuronSettings(**values)
    except ValueError as exc:
        name = next((n for n in values if f"'{n}'" in str(exc)), "settings")
        raise ConfigError(name, _safe_message(exc)) from None


def _safe_message(exc: Exception) -> str:
    # attrs' in_ message repeats the value: fine for settings, none of which is a secret.
    return str(exc.args[0]) if exc.args else str(exc)


def r2_buckets(
    env: Mapping[str, str],
    roles: tuple[str, ...],
    *,
    writable: tuple[str, ...] = (),
    neuron: str = "neuron",
) -> dict[str, RoleBuckets]:
    """The R2 buckets for `roles` (with write keys for `writable`) from the environment, as a
    ConfigError naming every missing variable at once, so one run tells the whole list."""
    try:
        return buckets_from_env(env, roles, writable=writable)
    except MissingEnv as exc:
        raise ConfigError(
            "environment",
            f"a {neuron} on R2 needs {', '.join(exc.names)}: export them (docs/configuration.md, "
            '"R2 variables") or run on --storage local',
        ) from None


def describe(hparams: HParams, settings: NeuronSettings) -> dict[str, Any]:
    """Everything configured, JSON-able, for a startup log line (holds no secret)."""
    return {"hparams": attrs.asdict(hparams), "settings": attrs.asdict(settings)}
