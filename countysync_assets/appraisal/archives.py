"""Safe extraction of a release archive (ZIP, TAR, TAR.GZ, GZ) into a folder.

An archive from the internet is untrusted. Before a byte is written, every member name is
checked (no absolute paths, no ``..``, no links: the archive is refused); while members stream
out, the total size and each member's compression ratio are bounded (zip bombs) and the CRC is
verified (ZIP's per member, GZ's at the end). Members go into a temporary folder next to the
destination, published by rename only when all of them are complete and verified; on any error
the temporary folder is removed and the previous extraction, if any, stays as it was.
"""

import fnmatch
import gzip
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

CHUNK = 1024 * 1024


class ArchiveError(ValueError):
    """The archive cannot be used; the message names the archive and the problem."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what an archive may expand to."""

    max_bytes: int = 50 * 1024**3
    max_ratio: float = 200.0


@dataclass(frozen=True)
class _Entry:
    name: str
    size: int  # declared uncompressed size (-1 if unknown)
    compressed: int  # compressed size (-1 if unknown)
    link: bool
    regular: bool


def _unsafe(name: str) -> str | None:
    """Why a member name may not be written, or None."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in path.parts:
        return "a path leaving the folder (..)"
    return None


def _zip_entries(archive: zipfile.ZipFile) -> list[_Entry]:
    return [_Entry(i.filename, i.file_size, i.compress_size,
                   stat.S_ISLNK(i.external_attr >> 16), not i.is_dir()) for i in archive.infolist()]


def _tar_entries(archive: tarfile.TarFile) -> list[_Entry]:
    return [_Entry(m.name, m.size, -1, m.issym() or m.islnk(), m.isreg())
            for m in archive.getmembers()]


def _wanted(entries: list[_Entry], patterns: list[str], label: str) -> list[_Entry]:
    """The regular members matching the patterns (by name or base name, case-insensitive);
    the archive is refused if any member is unsafe, and a pattern matching nothing fails."""
    for entry in entries:
        if problem := _unsafe(entry.name):
            raise ArchiveError(f"{label}: member {entry.name!r} is {problem}; the archive was "
                               "refused and nothing was extracted.")
        if entry.link:
            raise ArchiveError(f"{label}: member {entry.name!r} is a link; the archive was "
                               "refused and nothing was extracted.")
    chosen, missing = [], []
    for pattern in patterns:
        hits = [e for e in entries if e.regular and (
            fnmatch.fnmatch(e.name.lower(), pattern.lower())
            or fnmatch.fnmatch(PurePosixPath(e.name).name.lower(), pattern.lower()))]
        if not hits:
            missing.append(pattern)
        chosen += [h for h in hits if h not in chosen]
    if missing:
        names = ", ".join(e.name for e in entries[:20]) or "nothing"
        raise ArchiveError(f"{label}: no member matches {missing}; the archive holds {names}. "
                           "Check the member paths in the district file.")
    return chosen


def _copy(source: IO[bytes], dest: Path, entry: _Entry, label: str, limits: Limits,
          written: list[int], compressed: int) -> None:
    """Stream one member out, within the limits (``written`` is the running total)."""
    size = 0
    with dest.open("wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            written[0] += len(chunk)
            if written[0] > limits.max_bytes:
                raise ArchiveError(f"{label}: expands to more than {limits.max_bytes:,} bytes "
                                   "(the limit); refused as a possible archive bomb.")
            if compressed > 0 and size / compressed > limits.max_ratio:
                raise ArchiveError(f"{label}: member {entry.name!r} expands more than "
                                   f"{limits.max_ratio:,.0f}:1; refused as a possible archive "
                                   "bomb (raise the ratio limit if the file is genuine).")
            out.write(chunk)
    if entry.size >= 0 and size != entry.size:
        raise ArchiveError(f"{label}: member {entry.name!r} holds {size:,} bytes where its "
                           f"header says {entry.size:,}; the archive is damaged.")


@contextmanager
def _published(dest: Path) -> Iterator[Path]:
    """A temporary folder that replaces ``dest`` when the block succeeds, removed otherwise."""
    temp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(temp, dest)
    shutil.rmtree(old, ignore_errors=True)


def extract(archive: Path, kind: str, patterns: list[str], dest: Path,
            limits: Limits = Limits()) -> list[Path]:
    """Extract the members matching ``patterns`` into ``dest`` (flat: base names only)."""
    label = archive.name
    written = [0]
    try:
        with _published(dest) as temp:
            if kind == "zip":
                with zipfile.ZipFile(archive) as zf:
                    for entry in _wanted(_zip_entries(zf), patterns, label):
                        with zf.open(entry.name) as source:  # checks the CRC at the end
                            _copy(source, temp / PurePosixPath(entry.name).name, entry, label,
                                  limits, written, entry.compressed)
            elif kind in ("tar", "tar.gz"):
                with tarfile.open(archive, "r:gz" if kind == "tar.gz" else "r:") as tf:
                    entries = _tar_entries(tf)
                    ratio_base = archive.stat().st_size
                    for entry in _wanted(entries, patterns, label):
                        with tf.extractfile(entry.name) as source:
                            _copy(source, temp / PurePosixPath(entry.name).name, entry, label,
                                  limits, written, ratio_base)
            elif kind == "gz":
                name = archive.name.removesuffix(".gz")
                entry = _Entry(name, -1, archive.stat().st_size, False, True)
                _wanted([entry], patterns, label)
                with gzip.open(archive, "rb") as source:  # checks CRC and length at the end
                    _copy(source, temp / name, entry, label, limits, written, entry.compressed)
            else:
                raise ArchiveError(f"{label}: unknown archive kind {kind!r}.")
            return sorted(dest / p.name for p in temp.iterdir())
    except (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ArchiveError(f"{label}: the archive is damaged or truncated ({err}); download it "
                           "again (delete it to force a fresh download).") from None
