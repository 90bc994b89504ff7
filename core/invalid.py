"""The one error a payload decoder raises: `InvalidPayload(reason, message)`.

`reason` is a short stable slug, safe to log, count and put in a skipped-peer table; the
message is for humans. The full list of reasons and when each is raised is in
docs/wire-format.md.
"""

from __future__ import annotations

REASONS = frozenset(
    {
        "not_bytes",
        "too_large",
        "header_too_large",
        "bad_header",
        "bad_metadata",
        "schema_mismatch",
        "version_mismatch",
        "codec_mismatch",
        "window_mismatch",
        "uid_mismatch",
        "hotkey_mismatch",
        "missing_param",
        "unknown_param",
        "bad_shape",
        "unsigned",
        "bad_signature",
        "missing_tensor",
        "unknown_tensor",
        "bad_dtype",
        "index_out_of_range",
        "duplicate_index",
        "index_not_rising",
        "index_count_mismatch",
        "trailing_bits",
        "retired_codec",
        "bad_value_code",
        "non_finite",
        "value_out_of_range",
        "too_deep",
        "malformed",
        # torch.save archives (the templar protocol profile, core/templar/)
        "bad_archive",
        "too_many_entries",
        "entry_too_large",
        "bad_pickle",
        "forbidden_opcode",
        "forbidden_global",
        "bad_storage",
        "bad_tensor",
        "bad_structure",
        "bad_quant_params",
    }
)


class InvalidPayload(Exception):
    """A payload that must not be used; `reason` says why in one slug."""

    def __init__(self, reason: str, message: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown InvalidPayload reason {reason!r}")
        self.reason = reason
        self.message = message or reason
        super().__init__(f"{reason}: {self.message}")

    def __reduce__(self):  # keeps the exception picklable for process pools
        return (type(self), (self.reason, self.message))
