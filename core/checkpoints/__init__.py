"""Checkpoints: save, load with verification and fallback, the newest across buckets, catch-up.

    tree.py      nested state <-> JSON tree + tensors (faithful, no pickle)
    shards.py    streaming safetensors files, hashed while written and read
    manifest.py  the manifest (written last) and the advisory latest pointer
    state.py     CheckpointState (model, optimizer, scheduler, momentum, others), CheckpointMeta
    settings.py  CheckpointSettings, checkpoint_due
    save.py      Checkpointer (snapshot, then upload), BackgroundSaver
    load.py      listing, verification, fallback; load_checkpoint
    latest.py    which checkpoint a joiner adopts: stake order, bounded tries, none from the future
    fit.py       applying a model state: checked against the model, all or nothing
    optim_fit.py the same for optimizer and scheduler states (and their shard headers)
    catchup.py   replaying aggregated windows after a checkpoint

See docs/checkpoints.md.
"""

from core.checkpoints.catchup import CatchUp, CatchUpStatus, aggregator_updates, catch_up
from core.checkpoints.fit import Mismatch, check_fits, expected_layout, load_into
from core.checkpoints.latest import (
    Choice,
    Latest,
    Source,
    choose,
    get_latest,
    load_latest,
    validator_sources,
)
from core.checkpoints.load import (
    Candidate,
    ListingTooLarge,
    Loaded,
    NoCheckpoint,
    Skipped,
    VersionRefused,
    complete_manifests,
    list_candidates,
    load_checkpoint,
)
from core.checkpoints.manifest import Manifest, ManifestError, pointer_key
from core.checkpoints.optim_fit import (
    apply_training_state,
    check_optimizer,
    check_scheduler,
    optimizer_headers,
    scheduler_headers,
)
from core.checkpoints.save import BackgroundSaver, Checkpointer, Upload
from core.checkpoints.settings import CheckpointSettings, checkpoint_due
from core.checkpoints.state import CheckpointMeta, CheckpointState

__all__ = [
    "BackgroundSaver",
    "Candidate",
    "CatchUp",
    "CatchUpStatus",
    "CheckpointMeta",
    "CheckpointSettings",
    "CheckpointState",
    "Checkpointer",
    "Choice",
    "Latest",
    "ListingTooLarge",
    "Loaded",
    "Manifest",
    "ManifestError",
    "Mismatch",
    "NoCheckpoint",
    "Skipped",
    "Source",
    "Upload",
    "VersionRefused",
    "aggregator_updates",
    "apply_training_state",
    "catch_up",
    "check_fits",
    "check_optimizer",
    "check_scheduler",
    "checkpoint_due",
    "choose",
    "complete_manifests",
    "expected_layout",
    "get_latest",
    "list_candidates",
    "load_checkpoint",
    "load_into",
    "load_latest",
    "optimizer_headers",
    "pointer_key",
    "scheduler_headers",
    "validator_sources",
]
