"""The torch.save reader: hostile archives and hostile pickles, never executed."""

import io
import os
import pickle
import struct
import zipfile

import pytest
import torch

from core.invalid import InvalidPayload
from core.templar import pickle_walk, tensors, torchzip
from tests.unit.templar_archives import archive, entries, golden_bytes, replace_entry, save


def reason(data: bytes, limits: torchzip.ArchiveLimits | None = None) -> str:
    with pytest.raises(InvalidPayload) as err:
        tensors.load(data, limits)
    assert err.value.reason != "malformed", err.value
    return err.value.reason


def pkl(*ops: bytes) -> bytes:
    """A protocol-2 pickle from raw opcodes."""
    return b"\x80\x02" + b"".join(ops) + b"."


def storage_pid(kind: str, key: str, numel: int, location: str = "cpu") -> bytes:
    return (
        b"(X\x07\x00\x00\x00storage"
        + b"ctorch\n" + kind.encode() + b"\n"
        + b"X" + struct.pack("<I", len(key)) + key.encode()
        + b"X" + struct.pack("<I", len(location)) + location.encode()
        + b"J" + struct.pack("<i", numel)
        + b"tQ"
    )  # fmt: skip


def tensor_ops(pid: bytes, offset: int, size: tuple, stride: tuple) -> bytes:
    def tup(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + pid + b"J" + struct.pack("<i", offset) + tup(size) + tup(stride)
        + b"\x89ccollections\nOrderedDict\n)Rt" + b"R"
    )  # fmt: skip


def one_tensor(offset, size, stride, numel=4, raw=None, kind="FloatStorage") -> bytes:
    body = pkl(tensor_ops(storage_pid(kind, "0", numel), offset, size, stride))
    return archive(body, {"0": raw if raw is not None else bytes(4 * numel)})


class Evil:
    def __reduce__(self):
        return (os.system, ("touch templar-pwned",))


@pytest.fixture
def no_unpickling(monkeypatch, tmp_path):
    """Fail the test if anything unpickles; run where a marker file would appear."""

    def refuse(*a, **k):
        raise AssertionError("something unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / "templar-pwned").exists()


# -- what torch.save writes is read as torch.load reads it --------------------------------


def test_reads_views_dtypes_and_primitives_like_torch_load():
    x = torch.arange(12.0).view(3, 4)
    obj = {
        "a": x,
        "t": x.t(),
        "s": x[1:, 2:],
        "e": torch.empty(0, 3),
        "bf": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "b": torch.tensor([True, False]),
        "i": torch.tensor([-(2**62)], dtype=torch.int64),
        "nested": [1, -5, 2**62, 1.5, None, True, "x", b"\xff\x00", (3, torch.float16)],
        7: {"k": torch.ones(2, dtype=torch.int8)},
    }
    data = save(obj)
    got, want = tensors.load(data), torch.load(io.BytesIO(data), weights_only=True)
    assert got.keys() == want.keys()
    for key in obj:
        if isinstance(want[key], torch.Tensor):
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key])
    assert got["nested"] == want["nested"]
    assert torch.equal(got[7]["k"], want[7]["k"])
    # views of one storage share it, as after torch.load
    assert got["a"].untyped_storage().data_ptr() == got["t"].untyped_storage().data_ptr()


def test_archive_folder_may_be_any_file_stem(tmp_path):
    path = tmp_path / "temp_gradient-5-3-v2.1.3.pt"
    torch.save({"w": torch.ones(3)}, path)
    assert torch.equal(tensors.load(path.read_bytes())["w"], torch.ones(3))


# -- hostile pickles -------------------------------------------------------------------


def test_rce_reduce_is_a_forbidden_global_and_never_runs(no_unpickling):
    assert reason(archive(pickle.dumps(Evil(), protocol=2))) == "forbidden_global"
    assert reason(archive(pickle.dumps({"x": [Evil()]}, protocol=4))) == "forbidden_global"


def test_rce_inside_a_real_torch_save_archive(no_unpickling):
    data = replace_entry(golden_bytes(), "data.pkl", pickle.dumps(Evil(), protocol=2))
    assert reason(data) == "forbidden_global"


@pytest.mark.parametrize(
    "body",
    [
        pkl(b"cbuiltins\neval\n"),
        pkl(b"ctorch\nload\n"),
        pkl(b"ctorch._utils\n_rebuild_parameter\n"),
        pkl(b"ctorch\nTensor\n"),
        pkl(b"X\x05\x00\x00\x00torchX\x04\x00\x00\x00load\x93"),  # STACK_GLOBAL
    ],
)
def test_other_globals_are_forbidden(body, no_unpickling):
    assert reason(archive(body)) == "forbidden_global"


@pytest.mark.parametrize(
    "op",
    [
        b"I1\n",  # INT (text)
        b"\x8b" + struct.pack("<i", 4) + b"\x01\x02\x03\x04",  # LONG4
        b"(i__main__\nX\n",  # INST
        b"}}b",  # BUILD
        b"\x82\x01",  # EXT1
        b"N0",  # POP
        b"N2",  # DUP
        b"Pabc\n",  # PERSID (text)
        b"\x8f",  # EMPTY_SET
        b"S'a'\n",  # STRING
    ],
)
def test_opcodes_outside_the_allow_list(op, no_unpickling):
    assert reason(archive(pkl(op))) in {"forbidden_opcode", "bad_pickle"}


def test_opcode_names_are_refused_before_use():
    huge = pkl(b"\x8b" + struct.pack("<i", 1 << 16) + b"\x01" * (1 << 16))  # LONG4
    assert reason(archive(huge)) == "forbidden_opcode"


def test_huge_long1_is_refused():
    assert reason(archive(pkl(b"\x8a\x20" + b"\x01" * 32))) == "bad_pickle"


def test_memo_bomb_cannot_reuse_a_container():
    # l = []; then [l, l, l, ...] through the memo
    bomb = pkl(b"]q\x00" + b"](" + b"h\x00" * 64 + b"e")
    assert reason(archive(bomb)) == "bad_pickle"


def test_a_list_cannot_be_appended_to_itself():
    cycle = pkl(b"]q\x00h\x00a")
    assert reason(archive(cycle)) == "bad_pickle"


def test_a_container_cannot_be_placed_twice_from_the_stack():
    # t = (l,) where l is a list, then (l, l) via TUPLE2 of two stack refs is impossible
    # without the memo; a tuple of the same list built by BINGET is refused above. A dict
    # inserted in two lists through the memo:
    twice = pkl(b"}q\x01](h\x01e")
    assert reason(archive(twice)) == "bad_pickle"


def test_deep_nesting_is_refused():
    deep = pkl(b"]" * 2000 + b"a" * 1999)
    assert reason(archive(deep)) == "too_deep"
    marks = pkl(b"(" * 100)
    assert reason(archive(marks)) == "too_deep"


@pytest.mark.parametrize(
    "body",
    [
        b"\x80\x02N",  # no STOP
        b"\x80\x02N..",  # bytes after STOP
        b"\x80\x02NN.",  # two values left
        b"\x80\x02a.",  # APPEND on an empty stack
        b"\x80\x02(.",  # mark left open
        b"\x80\x02h\x05.",  # memo never stored
        b"\x80\x02}N]s.",  # unhashable key
        b"\x80\x02}K\x01K\x01K\x01K\x02s.",  # SETITEM on an int
        b"\x80\x02}(K\x01K\x01K\x01K\x02u.",  # a key set twice
        b"\x80\x02\xff.",  # unknown opcode
        b"\x80\x02X\x02\x00\x00\x00\xff\xfe.",  # not UTF-8
        b"\x80\x02X\xff\xff\x00\x00ab.",  # truncated string
        b"\x80\x09N.",  # unknown protocol
    ],
)
def test_malformed_pickles(body):
    assert reason(archive(body)) in {"bad_pickle", "too_deep"}


# -- storages and tensor views ---------------------------------------------------------


def test_a_valid_hand_made_tensor():
    raw = struct.pack("<4f", 1, 2, 3, 4)
    got = tensors.load(one_tensor(1, (2,), (2,), raw=raw))
    assert got.tolist() == [2.0, 4.0]


@pytest.mark.parametrize(
    ("offset", "size", "stride"),
    [
        (4, (1,), (1,)),  # starts past the end
        (0, (5,), (1,)),  # runs past the end
        (1, (2, 2), (2, 1)),  # last element 1 + 2 + 1 = 4
        (0, (1000,), (0,)),  # a broadcast view larger than its storage
        (0, (2, 3), (1,)),  # size and stride of different lengths
    ],
)
def test_views_outside_their_storage(offset, size, stride):
    assert reason(one_tensor(offset, size, stride)) == "bad_tensor"


def test_storage_bytes_must_match_its_numel():
    assert reason(one_tensor(0, (1,), (1,), numel=4, raw=bytes(15))) == "bad_storage"
    assert reason(one_tensor(0, (1,), (1,), numel=4, raw=bytes(17))) == "bad_storage"


def test_storage_entry_missing_or_unreferenced():
    body = pkl(tensor_ops(storage_pid("FloatStorage", "1", 1), 0, (1,), (1,)))
    assert reason(archive(body, {"0": bytes(4)})) == "bad_storage"
    assert reason(archive(pkl(b"N"), {"0": bytes(4)})) == "bad_storage"


def test_one_storage_at_two_dtypes_is_refused():
    a = tensor_ops(storage_pid("FloatStorage", "0", 2), 0, (1,), (1,))
    b = tensor_ops(storage_pid("IntStorage", "0", 2), 0, (1,), (1,))
    assert reason(archive(pkl(b"(" + a + b + b"t"), {"0": bytes(8)})) == "bad_storage"


@pytest.mark.parametrize(
    "pid",
    [
        b"(X\x03\x00\x00\x00fooctorch\nFloatStorage\nX\x01\x00\x00\x000N\x4b\x01tQ",
        storage_pid("FloatStorage", "../0", 1),
        storage_pid("FloatStorage", "0", 1, location="http://x"),
        storage_pid("FloatStorage", "0", -1),
        b"K\x01Q",
    ],
)
def test_bad_persistent_ids(pid):
    assert reason(archive(pkl(pid), {"0": bytes(4)})) == "bad_storage"


def test_tensor_with_hooks_or_odd_arguments():
    pid = storage_pid("FloatStorage", "0", 1)
    hooks = b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00(K\x01t(K\x01t\x89}K\x01K\x02stR"
    assert reason(archive(pkl(hooks), {"0": bytes(4)})) == "bad_tensor"
    short = b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00tR"
    assert reason(archive(pkl(short), {"0": bytes(4)})) == "bad_tensor"


# -- hostile archives ------------------------------------------------------------------


def test_compressed_entries_are_refused_so_no_zip_bomb_expands():
    bomb = archive(pkl(b"N"), {"0": bytes(1 << 20)}, compression=zipfile.ZIP_DEFLATED)
    assert len(bomb) < 10_000
    assert reason(bomb) == "bad_archive"


def test_entry_count_is_bounded_before_the_directory_is_parsed():
    many = archive(pkl(b"N"), extra={f"archive/x{i}": b"" for i in range(50)})
    assert reason(many, torchzip.ArchiveLimits(max_entries=20)) == "too_many_entries"
    assert torchzip.directory(many)[0] == 53


def test_central_directory_size_is_bounded_whatever_the_count_says():
    # zipfile reads records until the directory's byte size is used up: 203 records behind
    # an end record that claims 3
    many = bytearray(archive(pkl(b"N"), extra={f"archive/x{i}": b"" for i in range(200)}))
    eocd = many.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", many, eocd + 8, 3, 3)
    with pytest.raises(InvalidPayload, match="central directory of") as err:
        tensors.load(bytes(many), torchzip.ArchiveLimits(max_entries=20))
    assert err.value.reason == "too_many_entries"


def test_entry_and_pickle_sizes_are_bounded():
    limits = torchzip.ArchiveLimits(max_entry_bytes=100, max_pickle_bytes=64)
    assert reason(archive(pkl(b"N"), {"0": bytes(400)}), limits) == "entry_too_large"
    assert reason(archive(pkl(b"N" * 100 + b"0" * 99)), limits) == "entry_too_large"


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_duplicate_names_are_refused():
    data = archive(pkl(b"N"), extra={"archive/data.pkl": pkl(b"K\x01")})
    assert reason(data) == "bad_archive"


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    "extra",
    [
        {"other/data.pkl": b""},  # a second top folder
        {"archive/../../etc/passwd": b""},
        {"archive/data/0/x": b""},
        {"archive/code.py": b""},
        {"archive/version": b"1"},  # a record twice
    ],
)
def test_unexpected_entries(extra):
    assert reason(archive(pkl(b"N"), extra=extra)) == "bad_archive"


def test_records_are_checked():
    assert reason(replace_entry(save({}), "byteorder", b"big")) == "bad_archive"
    assert reason(replace_entry(save({}), "version", b"x")) == "bad_archive"
    no_version = io.BytesIO()
    with zipfile.ZipFile(no_version, "w") as zf:
        zf.writestr("archive/data.pkl", pkl(b"N"))
    assert reason(no_version.getvalue()) == "bad_archive"


def test_entries_that_claim_more_bytes_than_the_archive_are_refused():
    data = bytearray(archive(pkl(b"N"), {"0": bytes(64)}))
    name = b"archive/data/0"
    cd = data.find(b"PK\x01\x02")
    while data[cd + 46 : cd + 46 + len(name)] != name:  # its central directory record
        cd = data.find(b"PK\x01\x02", cd + 4)
    struct.pack_into("<II", data, cd + 20, 1 << 20, 1 << 20)  # compressed, uncompressed
    assert reason(bytes(data)) == "bad_archive"


def test_corrupted_storage_bytes_fail_the_crc():
    data = bytearray(save({"w": torch.ones(64)}))
    at = data.find(struct.pack("<f", 1.0) * 8)
    data[at] ^= 0xFF
    assert reason(bytes(data)) == "bad_archive"


def test_every_truncation_of_a_real_payload_is_invalid():
    data = golden_bytes()
    for cut in range(0, len(data), 7):
        with pytest.raises(InvalidPayload):
            tensors.load(data[:cut])


def test_not_a_zip_and_not_bytes():
    assert reason(b"PK\x03\x04 not really") == "bad_archive"
    assert reason(b"") == "bad_archive"
    assert reason(12) == "not_bytes"


def test_entries_of_a_real_payload_are_what_the_reader_expects():
    names = {n.split("/", 1)[1] for n in entries(golden_bytes())}
    assert "data.pkl" in names and "byteorder" in names and "version" in names


def test_walk_returns_plain_values_and_tensor_refs():
    tree = pickle_walk.walk(entries(save({"w": torch.ones(2)}))["archive/data.pkl"])
    assert isinstance(tree["w"], pickle_walk.TensorRef)
    assert tree["w"].size == (2,) and tree["w"].storage.dtype == torch.float32


def test_two_entries_over_the_same_bytes_are_refused():
    # a second central-directory record, data/1, pointing at data/0's local header: the
    # overlapping-entries construction of non-recursive zip bombs
    data = archive(pkl(b"N"), {"0": bytes(64)})
    eocd = data.rfind(b"PK\x05\x06")
    cd_size, cd_start = struct.unpack_from("<II", data, eocd + 12)
    central = data[cd_start : cd_start + cd_size]
    name = b"archive/data/0"
    at = central.find(name) - 46
    record_len = 46 + len(name) + sum(struct.unpack_from("<HH", central, at + 30))
    twin = bytearray(central[at : at + record_len])
    twin[46 : 46 + len(name)] = b"archive/data/1"
    new_central = central + bytes(twin)
    count = struct.unpack_from("<H", data, eocd + 10)[0] + 1
    tail = bytearray(data[eocd:])
    struct.pack_into("<HHII", tail, 8, count, count, len(new_central), cd_start)
    forged = data[:cd_start] + new_central + bytes(tail)
    assert reason(forged) == "bad_archive"
