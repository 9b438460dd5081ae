"""Command-line arguments (files, directories, '-') -> Sources with collision-free output keys.

A file's kind is told by its first bytes, never by its extension. Directory walks follow no
symbolic links out of their root, visit each real folder once, and skip anything that is not a
regular file (FIFOs, sockets, devices are never opened).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dsocr_cli.errors import show_path as _show
from dsocr_cli.types import Source, SourceKind

_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
)


def sniff(head: bytes) -> SourceKind | None:
    """The document kind from a file's first bytes, or None when dsocr cannot read it."""
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    return None


# What a folder walk reports when content does not match a document extension; other files are ignored.
DOCUMENT_SUFFIXES = {".pdf", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
# Reasons that mean "not a document, passed over" rather than "a document that failed".
SKIP_REASONS = {"not-a-file", "outside", "broken-link"}


@dataclass(frozen=True)
class Rejected:
    """An argument or walked file that will not be processed, and why (one line)."""

    path: Path
    reason: str
    message: str

    @property
    def skipped(self) -> bool:
        """Passed over (not a document) rather than failed: a skip alone leaves the exit code 0."""
        return self.reason in SKIP_REASONS


def read_kind(path: Path) -> SourceKind | Rejected:
    """A file's kind by its content, or the Rejected saying why it cannot be one (unreadable, empty,
    unsupported)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        return Rejected(path, "unreadable", f"{_show(path)}: cannot be read ({exc.strerror or exc})")
    if not head:
        return Rejected(path, "empty", f"{_show(path)}: the file is empty")
    kind = sniff(head)
    if kind is None:
        return Rejected(path, "unsupported", f"{_show(path)}: neither a PDF nor a supported image (by content)")
    return kind


def expand_arguments(args: Iterable[str], stdin=None) -> list[str]:
    """'-' stands for paths read from stdin, one per line."""
    out: list[str] = []
    for arg in args:
        if arg == "-":
            stream = stdin or sys.stdin
            out.extend(line.rstrip("\r\n") for line in stream if line.strip())
        else:
            out.append(arg)
    return out


def discover(
    args: Iterable[str], want: SourceKind | None = None, exclude: Path | None = None
) -> tuple[list[Source], list[Rejected]]:
    """Sources in argument order (directories sorted), plus what was rejected and why.

    `want` limits directory walks to one kind; files named explicitly are always taken by content.
    `exclude` (the output folder) is never walked into, so OUT inside an input folder is not OCRed.
    In folder walks only files named like documents are reported when unusable; others are ignored.
    """
    skip = Path(os.path.realpath(exclude)) if exclude else None
    found: list[tuple[Path, str, SourceKind]] = []
    rejected: list[Rejected] = []
    for arg in args:
        path = Path(arg)
        try:
            st = path.stat()
        except OSError as exc:
            rejected.append(Rejected(path, "missing", f"{_show(path)}: {exc.strerror or 'not found'}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            for file in _walk(path, rejected, skip):
                kind = read_kind(file)
                if isinstance(kind, Rejected):
                    if file.suffix.lower() in DOCUMENT_SUFFIXES:
                        rejected.append(kind)
                elif want is None or kind == want:
                    found.append((file, file.relative_to(path).as_posix(), kind))
        elif stat.S_ISREG(st.st_mode):
            kind = read_kind(path)
            if isinstance(kind, Rejected):
                rejected.append(kind)
            else:
                found.append((path, path.name, kind))
        else:
            rejected.append(Rejected(path, "not-a-file", f"{_show(path)}: not a regular file"))
    return _with_unique_keys(found), rejected


def _walk(root: Path, rejected: list[Rejected], skip: Path | None = None) -> Iterator[Path]:
    """Regular files under root, sorted; links are followed only while they stay inside root.
    dsocr's own files (.dsocr*) and the folder `skip` are passed over."""
    real_root = Path(os.path.realpath(root))
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            rejected.append(Rejected(folder, "unreadable", f"{_show(folder)}: cannot be listed ({exc.strerror})"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".dsocr") or (skip is not None and Path(os.path.realpath(path)) == skip):
                continue
            if entry.is_symlink() and not _inside(path, real_root):
                rejected.append(Rejected(path, "outside", f"{_show(path)}: link leads outside {_show(root)}"))
                continue
            try:
                st = path.stat()
            except OSError:
                rejected.append(Rejected(path, "broken-link", f"{_show(path)}: broken link or link loop"))
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
            elif stat.S_ISREG(st.st_mode):
                yield path
            else:
                rejected.append(Rejected(path, "not-a-file", f"{_show(path)}: not a regular file"))
    return


def _inside(path: Path, real_root: Path) -> bool:
    real = Path(os.path.realpath(path))
    return real == real_root or real_root in real.parents


def safe_key(relative: str) -> str:
    """A relative POSIX key that cannot leave OUT: no '..', no absolute part, printable names."""
    parts = []
    for part in PurePosixPath(relative).parts:
        if part in ("", ".", "..", "/"):
            continue
        clean = "".join(c if c.isprintable() and c not in "\\" else "_" for c in part)
        clean = clean.encode("utf-8", "replace").decode("utf-8")
        if clean.startswith("."):
            clean = "_" + clean[1:]
        parts.append(clean)
    return "/".join(parts) or "_"


RESERVED_KEYS = {"summary.json", "report.html"}  # names dsocr writes at the top of OUT


def _with_unique_keys(found: list[tuple[Path, str, SourceKind]]) -> list[Source]:
    """The same file named twice is kept once; a key that equals, contains or lies inside another
    (case-insensitively), or a reserved name, gets ~2, ~3 in order."""
    sources: list[Source] = []
    keys: set[str] = set()
    reals: set[str] = set()
    for path, relative, kind in found:
        real = os.path.realpath(path)
        if real in reals:
            continue
        reals.add(real)
        key = base = safe_key(_decodable(relative))
        n = 1
        while _clashes(key.lower(), keys):
            n += 1
            key = f"{base}~{n}"
        keys.add(key.lower())
        sources.append(Source(path, kind, key))
    return sources


def _clashes(key: str, keys: set[str]) -> bool:
    if key in keys or key in RESERVED_KEYS or key.startswith(".dsocr"):
        return True
    prefixes = {"/".join(key.split("/")[:i]) for i in range(1, key.count("/") + 1)}
    return bool(prefixes & keys) or any(k.startswith(key + "/") for k in keys)


def _decodable(text: str) -> str:
    """Names with invalid UTF-8 arrive as surrogates; make them writable."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
