"""The value a `torch.save` pickle describes, worked out without unpickling it.

`pickletools.genops` yields the opcodes and their arguments without executing anything;
this module runs its own small stack machine over them and knows only the opcodes and
globals a `torch.save` of containers, primitives and tensors emits:

- containers: dict, list, tuple (and `collections.OrderedDict()`, read as a dict);
- primitives: int (at most 64 bits), float, str, bytes (protocol 2 writes them as
  `_codecs.encode(str, "latin1")`, read as exactly that; `torch.load` refuses the
  `bytes()` it writes for b"", and so does this), bool, None;
- `torch.<dtype>` objects (Templar's quantisation parameters carry one);
- a tensor: `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
  requires_grad, OrderedDict())`, its storage named by a BINPERSID tuple
  `('storage', torch.<X>Storage, key, location, numel)`.

Everything else (BUILD, INST, OBJ, NEWOBJ, EXT, LONG4, text opcodes, any other global, a
REDUCE of anything but the three callables above) is `InvalidPayload`. The result is a tree of plain
values and `TensorRef`s, which `core.templar.tensors` turns into tensors: a container may
sit in one place only (the memo can re-fetch primitives, dtypes and tensors, never a
container), so there are no cycles and no memo bombs, and nesting is bounded.
"""

from __future__ import annotations

import pickletools
import re
from typing import Any

import attrs
import torch

from core.invalid import InvalidPayload

MAX_DEPTH = 32
_MAX_MARKS = 64
_MAX_DIMS = 16
_MAX_INT_BYTES = 8
_LOCATION = re.compile(r"^(cpu|cuda(:[0-9]{1,3})?)$")
_KEY = re.compile(r"^(0|[1-9][0-9]{0,8})$")

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "ByteStorage": torch.uint8,
    "CharStorage": torch.int8,
    "ShortStorage": torch.int16,
    "IntStorage": torch.int32,
    "LongStorage": torch.int64,
    "BoolStorage": torch.bool,
}
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


@attrs.frozen
class StorageRef:
    dtype: torch.dtype
    key: str
    numel: int


@attrs.frozen
class TensorRef:
    """A tensor the pickle asks for: a strided view of storage `storage`."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Global:
    """A callable the pickle names; only ever called by this module's REDUCE."""

    def __init__(self, name: str) -> None:
        self.name = name


_REBUILD = _Global("torch._utils._rebuild_tensor_v2")
_ORDERED_DICT = _Global("collections.OrderedDict")
_ENCODE = _Global("_codecs.encode")  # protocol 2 writes bytes as encode(str, "latin1")


@attrs.frozen
class _StorageType:
    dtype: torch.dtype


def _resolve(module: str, name: str) -> Any:
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _REBUILD
    if (module, name) == ("collections", "OrderedDict"):
        return _ORDERED_DICT
    if (module, name) == ("_codecs", "encode"):
        return _ENCODE
    if module == "torch" and name in STORAGE_DTYPES:
        return _StorageType(STORAGE_DTYPES[name])
    if module == "torch" and name in DTYPES:
        return DTYPES[name]
    raise InvalidPayload("forbidden_global", f"global {module[:64]}.{name[:64]} is not allowed")


class _Mark:
    pass


_MARK = _Mark()
_CONTAINERS = (dict, list, tuple)
_KEY_TYPES = (str, int)
_ATOMS = (str, bytes, int, float, bool, type(None), torch.dtype, TensorRef)
# values placed without a check: nothing of theirs can be shared or nested
_PLAIN = frozenset({*_ATOMS, StorageRef, _StorageType})

_PUSH_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
# opcodes whose argument is the value pushed (ints, floats, strings, bytes)
_PUSH_ARG = frozenset({"BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE",
                       "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES",
                       "BINBYTES8"})  # fmt: skip
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_PUTS = {"BINPUT", "LONG_BINPUT"}
_GETS = {"BINGET", "LONG_BINGET"}


class _Machine:
    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        # containers already inside another, by id (held, so that no id is reused)
        self.placed: dict[int, Any] = {}

    def pop(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise InvalidPayload("bad_pickle", "stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise InvalidPayload("bad_pickle", "no mark to pop to")
        at = self.marks.pop()
        items = self.stack[at + 1 :]
        del self.stack[at:]
        return items

    def place(self, value: Any) -> Any:
        """`value` goes inside a container: a container may be placed once."""
        if type(value) in _PLAIN:
            return value
        if isinstance(value, _Mark | _Global):  # a storage type only ever sits in a pid
            raise InvalidPayload("bad_pickle", f"a {type(value).__name__} used as a value")
        if isinstance(value, _CONTAINERS) and value != ():  # () is a shared singleton
            if id(value) in self.placed:
                raise InvalidPayload("bad_pickle", "a container is referenced twice")
            self.placed[id(value)] = value
        return value

    def top_container(self, kind: type) -> Any:
        if not self.stack or not isinstance(self.stack[-1], kind):
            raise InvalidPayload("bad_pickle", f"expected a {kind.__name__} on the stack")
        return self.stack[-1]

    def setitems(self, target: dict, items: list[Any]) -> None:
        if len(items) % 2:
            raise InvalidPayload("bad_pickle", "odd number of dict items")
        for k, v in zip(items[::2], items[1::2], strict=True):
            if not isinstance(k, _KEY_TYPES) or isinstance(k, bool):
                raise InvalidPayload("bad_pickle", f"dict key of type {type(k).__name__}")
            if k in target:
                raise InvalidPayload("bad_pickle", f"dict key {str(k)[:64]!r} set twice")
            target[k] = self.place(v)


def walk(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The value the pickle `data` describes, with tensors as `TensorRef`; InvalidPayload
    for any opcode, global or shape outside the allow-list."""
    m = _Machine()
    stopped = False
    try:
        for op, arg, pos in pickletools.genops(data):
            if stopped:
                raise InvalidPayload("bad_pickle", "bytes after STOP")
            stopped = _step(m, op.name, arg)
            if stopped and pos != len(data) - 1:
                raise InvalidPayload("bad_pickle", "bytes after STOP")
    except InvalidPayload:
        raise
    except RecursionError:
        raise InvalidPayload("too_deep", "pickle nests too deep") from None
    except Exception as exc:  # genops on truncated or unknown opcodes, unhashables
        raise InvalidPayload("bad_pickle", f"{type(exc).__name__}: {exc}") from None
    if not stopped:
        raise InvalidPayload("bad_pickle", "no STOP opcode")
    if len(m.stack) != 1 or m.marks:
        raise InvalidPayload("bad_pickle", "stack not a single value at STOP")
    result = m.stack[0]
    _check_depth(result, max_depth)
    return result


def _step(m: _Machine, name: str, arg: Any) -> bool:
    st = m.stack
    # the commonest opcodes of a torch.save pickle first: the chain is the walk's cost
    if name in _PUSH_ARG:
        st.append(arg)
    elif name in _PUTS:
        if not st or st[-1] is _MARK:
            raise InvalidPayload("bad_pickle", "memoize with nothing on the stack")
        m.memo[arg] = st[-1]
    elif name in _GETS:
        if arg not in m.memo:
            raise InvalidPayload("bad_pickle", f"memo {arg} was never stored")
        value = m.memo[arg]
        if isinstance(value, _CONTAINERS):
            raise InvalidPayload("bad_pickle", "the memo re-fetches a container")
        st.append(value)
    elif name == "MARK":
        if len(m.marks) >= _MAX_MARKS:
            raise InvalidPayload("too_deep", f"more than {_MAX_MARKS} open marks")
        m.marks.append(len(st))
        st.append(_MARK)
    elif name == "TUPLE":
        st.append(tuple([m.place(v) for v in m.pop_mark()]))
    elif name == "REDUCE":
        args = m.pop()
        func = m.pop()
        st.append(_reduce(m, func, args))
    elif name == "EMPTY_TUPLE":
        st.append(())
    elif name in _PUSH_CONST:
        st.append(_PUSH_CONST[name])
    elif name == "BINPERSID":
        st.append(_storage(m.pop()))
    elif name in _TUPLE_N:
        n = _TUPLE_N[name]
        items = [m.pop() for _ in range(n)][::-1]
        st.append(tuple([m.place(v) for v in items]))
    elif name == "PROTO":
        if not 2 <= arg <= 5:
            raise InvalidPayload("bad_pickle", f"protocol {arg}")
    elif name == "FRAME":
        pass
    elif name == "STOP":
        return True
    elif name == "LONG1":
        if arg.bit_length() > 8 * _MAX_INT_BYTES:
            raise InvalidPayload("bad_pickle", "integer wider than 64 bits")
        st.append(arg)
    elif name == "EMPTY_DICT":
        st.append({})
    elif name == "EMPTY_LIST":
        st.append([])
    elif name == "APPEND":
        value = m.pop()
        m.top_container(list).append(m.place(value))
    elif name == "APPENDS":
        items = m.pop_mark()
        m.top_container(list).extend(m.place(v) for v in items)
    elif name == "SETITEM":
        value = m.pop()
        key = m.pop()
        m.setitems(m.top_container(dict), [key, value])
    elif name == "SETITEMS":
        items = m.pop_mark()
        m.setitems(m.top_container(dict), items)
    elif name == "MEMOIZE":
        if not st or st[-1] is _MARK:
            raise InvalidPayload("bad_pickle", "memoize with nothing on the stack")
        m.memo[len(m.memo)] = st[-1]
    elif name == "GLOBAL":
        module, _, attr = arg.partition(" ")
        st.append(_resolve(module, attr))
    elif name == "STACK_GLOBAL":
        attr = m.pop()
        module = m.pop()
        if not isinstance(module, str) or not isinstance(attr, str):
            raise InvalidPayload("bad_pickle", "STACK_GLOBAL of non-strings")
        st.append(_resolve(module, attr))
    else:
        raise InvalidPayload("forbidden_opcode", f"opcode {name} is not allowed")
    return False


def _storage(pid: Any) -> StorageRef:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise InvalidPayload("bad_storage", "persistent id is not a storage tuple")
    _, kind, key, location, numel = pid
    if not isinstance(kind, _StorageType):
        raise InvalidPayload("bad_storage", "persistent id names no storage type")
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidPayload("bad_storage", "storage key is not a small decimal")
    if not isinstance(location, str) or not _LOCATION.match(location):
        raise InvalidPayload("bad_storage", f"storage location {str(location)[:32]!r}")
    if not _count(numel):
        raise InvalidPayload("bad_storage", "storage size is not a non-negative int")
    return StorageRef(kind.dtype, key, numel)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62


def _reduce(m: _Machine, func: Any, args: Any) -> Any:
    if not isinstance(args, tuple):
        raise InvalidPayload("bad_pickle", "REDUCE arguments are not a tuple")
    if func is _ORDERED_DICT:
        if args != ():
            raise InvalidPayload("bad_pickle", "OrderedDict with arguments")
        return {}
    if func is _ENCODE:
        if len(args) != 2 or not isinstance(args[0], str) or args[1] != "latin1":
            raise InvalidPayload("bad_pickle", "_codecs.encode other than (str, 'latin1')")
        return args[0].encode("latin1")
    if func is not _REBUILD:
        raise InvalidPayload("bad_pickle", "REDUCE of something not callable here")
    if len(args) != 6:
        raise InvalidPayload("bad_tensor", f"tensor rebuilt from {len(args)} arguments")
    storage, offset, size, stride, requires_grad, hooks = args
    if not isinstance(storage, StorageRef):
        raise InvalidPayload("bad_tensor", "tensor without a storage")
    if not _count(offset):
        raise InvalidPayload("bad_tensor", "bad storage offset")
    for dims in (size, stride):
        if not isinstance(dims, tuple) or len(dims) > _MAX_DIMS or not all(map(_count, dims)):
            raise InvalidPayload("bad_tensor", "size or stride is not a tuple of counts")
    if len(size) != len(stride):
        raise InvalidPayload("bad_tensor", "size and stride differ in length")
    if not isinstance(requires_grad, bool) or hooks != {}:
        raise InvalidPayload("bad_tensor", "tensor with gradient state or hooks")
    return TensorRef(storage, offset, size, stride)


def _check_depth(root: Any, limit: int) -> None:
    todo = [(root, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > limit:
            raise InvalidPayload("too_deep", f"value nests deeper than {limit}")
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list | tuple):
            todo.extend((v, depth + 1) for v in value)
        elif not isinstance(value, _ATOMS):
            raise InvalidPayload("bad_pickle", f"a {type(value).__name__} in the result")
