"""The shared prompt's KV state kept on disk, so that a new process loads it instead of evaluating it.

All rows of a call share one evaluated prompt prefix (instructions, labels, examples: about 490
tokens for 77 labels), and a fresh process pays its evaluation before the first row: seconds on a
CPU. Loading the same state from a file takes milliseconds. A row's answer must not change, so a
state is used only where it is, bit for bit, the one an evaluation would give: its file is keyed by
everything that shapes it (the model file's sha256, the exact tokens, the context's sizes and KV
type, batch invariance, the device, llama.cpp's build and the CPU's kernels), and the runtime puts
it in the cells an evaluation fills (from cell 0, in order: attention adds cells in cell order).

One folder under the duckllm home holds one file per state, named by its key. A writer writes a
temporary file, fsyncs it and renames it into place, so several processes may write at once and
a reader never sees part of a file. Each file carries its key, length and checksum; one that does
not verify is ignored, removed and, once evaluated again, replaced. The folder is bounded: past its
cap the least recently used states go (a read touches its file). A folder that cannot be written
costs a warning and the speed-up, never an answer.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Sequence

FOLDER = "prefix"                 # under the duckllm home
SUFFIX = ".kvstate"
DEFAULT_MAX_MB = 1024            # the folder's cap (Settings.prefix_cache_mb, DUCKLLM_PREFIX_CACHE_MB)
# Shorter prefixes are evaluated and not kept. On a CPU loading wins from a handful of tokens
# (bench/first_answer.py --crossover); the shortest prompts duckllm makes take 44 tokens.
MIN_TOKENS = 32
STALE_TEMP_SECONDS = 3600         # a temporary file this old was left by a writer that died
_FORMAT = 1                       # bump when the file layout or the key's contents change
_MAGIC = b"DLLMPFX\x00"
_HEADER = struct.Struct("<8sI32sIQI")   # magic, format, key, tokens, payload bytes, payload crc32


def folder_in(home: Path) -> Path:
    return Path(home) / FOLDER


def usage(folder: Path) -> tuple[int, int]:
    """(states, bytes) kept in a folder."""
    files = _states(Path(folder))
    return len(files), sum(size for _, size, _ in files)


def clear(folder: Path) -> tuple[int, int]:
    """Delete every kept state; (states, bytes) removed."""
    removed = bytes_ = 0
    for path, size, _ in _states(Path(folder)):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed, bytes_ = removed + 1, bytes_ + size
    return removed, bytes_


def _states(folder: Path) -> list[tuple[Path, int, int]]:
    """(path, bytes, mtime in ns) of each state file; a file removed meanwhile is left out."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        if entry.name.endswith(SUFFIX):
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            found.append((Path(entry.path), stat.st_size, stat.st_mtime_ns))
    return found


class PrefixStore:
    """One model's prefix states in a folder: files by key, verified, bounded, least recently used
    first out. The runtime binds it to its context (bind) and restores and saves sequences there."""

    def __init__(self, folder: Path, model_id: str, *, max_bytes: int = DEFAULT_MAX_MB << 20,
                 min_tokens: int = MIN_TOKENS):
        self.folder = Path(folder)
        self.model_id = model_id
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._unwritable: str | None = None      # why this process no longer writes states

    def bind(self, context, llama, **settings) -> ContextStates:
        """This store for one llama.cpp context (runtime.llama_resources.Context; llama: the
        llama_cpp module, for its build). settings: the context's values that shape a state
        (sizes, KV type, batch invariance, layers offloaded); the build and the devices are added here."""
        return ContextStates(self, context, self.basis(settings, _build(llama)))

    def basis(self, settings: dict, build: dict) -> bytes:
        """The key's part common to every prefix of one context: all but the tokens."""
        described = json.dumps({"format": _FORMAT, "model": self.model_id, "settings": settings,
                                "build": build}, sort_keys=True, default=str)
        return hashlib.sha256(described.encode()).digest()

    @staticmethod
    def key(basis: bytes, tokens: Sequence[int]) -> bytes:
        return hashlib.sha256(basis + struct.pack(f"<{len(tokens)}i", *tokens)).digest()

    def path_of(self, key: bytes) -> Path:
        return self.folder / f"{key.hex()}{SUFFIX}"

    # ---- files ---------------------------------------------------------------------------

    def read(self, key: bytes, n_tokens: int) -> bytearray | None:
        """The state kept under key, verified; None when there is none or it does not verify (a
        file that does not is removed, so that the next save replaces it)."""
        path = self.path_of(key)
        try:
            with open(path, "rb") as f:
                data = self._verified(f, key, n_tokens)
        except OSError:
            return None
        if data is None:
            self._remove(path)
            return None
        try:
            os.utime(path)           # the least recently used go first
        except OSError:
            pass
        return data

    @staticmethod
    def _verified(f, key: bytes, n_tokens: int) -> bytearray | None:
        """The payload of an open state file when its header names this key and its length and
        checksum match; else None."""
        header = f.read(_HEADER.size)
        if len(header) != _HEADER.size:
            return None
        magic, fmt, stored_key, stored_tokens, length, crc = _HEADER.unpack(header)
        if (magic, fmt, stored_key, stored_tokens) != (_MAGIC, _FORMAT, key, n_tokens):
            return None
        if os.fstat(f.fileno()).st_size != _HEADER.size + length:
            return None
        data = bytearray(length)
        if f.readinto(data) != length or zlib.crc32(data) != crc:
            return None
        return data

    def write(self, key: bytes, n_tokens: int, payload) -> None:
        """Keep a state: written whole to a temporary file, then renamed into place; then the
        folder is brought back under its cap."""
        if self._unwritable or _HEADER.size + len(payload) > self.max_bytes:
            return
        header = _HEADER.pack(_MAGIC, _FORMAT, key, n_tokens, len(payload), zlib.crc32(payload))
        temp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path_of(key))
            temp = None
        except OSError as e:
            self._fail(f"cannot write {self.folder} ({e.strerror or e})")
        finally:
            if temp is not None:
                self._remove(Path(temp))
        self.evict()

    def evict(self) -> None:
        """Remove the least recently used states until the folder is under its cap, and the
        temporary files of writers that died."""
        states = sorted(_states(self.folder), key=lambda s: s[2])
        total = sum(size for _, size, _ in states)
        for path, size, _ in states:
            if total <= self.max_bytes:
                break
            self._remove(path)
            total -= size
        stale = time.time() - STALE_TEMP_SECONDS
        for temp in self.folder.glob(".*.tmp"):
            try:
                if temp.stat().st_mtime < stale:
                    temp.unlink()
            except OSError:
                pass

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass         # removed by another process meanwhile, or not ours to remove

    def _fail(self, reason: str) -> None:
        if self._unwritable:
            return       # said once
        self._unwritable = reason
        print(f"duckllm: warning: prompt prefix states are not kept for this process: {reason}. "
              f"Queries go on; a new process evaluates its prompt again. To keep them, free disk "
              f"space or fix the folder's permissions, or set DUCKLLM_HOME to a writable directory.",
              file=sys.stderr)


class ContextStates:
    """A PrefixStore bound to one llama.cpp context: a sequence's state saved to and restored from
    it through llama.cpp's sequence state API."""

    def __init__(self, store: PrefixStore, context, basis: bytes):
        self.store, self.context, self._basis = store, context, basis

    def worth(self, tokens: Sequence[int]) -> bool:
        """Whether a prefix of this length is kept (and so looked for)."""
        return len(tokens) >= self.store.min_tokens

    def kept(self, tokens: Sequence[int]) -> bool:
        """Whether a state is kept for tokens (restore() still checks it)."""
        return self.worth(tokens) and self.store.path_of(PrefixStore.key(self._basis, tokens)).exists()

    def restore(self, seq: int, tokens: Sequence[int]) -> bool:
        """Load the state kept for tokens into seq; True when seq now holds it. The caller empties
        the KV cache first, so the state fills cells from 0 in order, as evaluation does. On False
        seq holds nothing."""
        if not self.worth(tokens):
            return False
        data = self.store.read(PrefixStore.key(self._basis, tokens), len(tokens))
        if data is None:
            return False
        return self.context.state_set(seq, data)

    def save(self, seq: int, tokens: Sequence[int]) -> None:
        """Keep seq's state as that of tokens (it must hold exactly them, evaluated from cell 0)."""
        if not self.worth(tokens):
            return
        data = self.context.state_get(seq, self.store.max_bytes)
        if data:
            self.store.write(PrefixStore.key(self._basis, tokens), len(tokens), data)


def _build(llama) -> dict:
    """What of the build and the machine shapes a state: llama-cpp-python's version (it pins
    llama.cpp's), the CPU features and backends llama.cpp was built with, and the devices."""
    return {"llama_cpp_python": getattr(llama, "__version__", "?"),
            "system": llama.llama_print_system_info().decode(errors="replace").strip(),
            "devices": _devices()}


def _devices() -> list[str]:
    """ggml's devices (the CPU's model name, each GPU's): a state from another GPU or CPU model
    may differ in its last bits. Read through ggml's backend API; empty where it is not there."""
    try:
        from llama_cpp._ggml import libggml
        libggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        libggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        libggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        libggml.ggml_backend_dev_description.restype = ctypes.c_char_p
        libggml.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
        return [libggml.ggml_backend_dev_description(libggml.ggml_backend_dev_get(i)).decode(errors="replace")
                for i in range(libggml.ggml_backend_dev_count())]
    except (ImportError, AttributeError, OSError):   # an older or custom build: the system info names its kernels
        return []
