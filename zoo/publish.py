"""Publishing a folder: the one way zoo writes an output folder.

Every writer (``zoo convert``, ``zoo plugin new``, and any later one) hands :func:`publish` the
output path and a function that fills a folder. The rules, in the order they are applied:

1. **The output may not overlap the input**: ``--out`` that is an input folder, lies inside one,
   or holds one (a file of the input included) is refused, whatever ``force`` says.
2. **Checked before the work**: an output that exists and is not a folder, a non-empty one
   without ``force``, or a parent that cannot be written is an error before anything is read.
3. **Built aside**: the files are written into a fresh hidden folder beside the output
   (``.<name>.zoo-tmp-<random>``, created with the user's umask), which holds a lock while it is
   written. A folder left by a killed writer (its lock free) is removed by the next
   :func:`publish` into the same place, and only such a folder.
4. **Published by a step that cannot replace what it did not check**: a rename that fails when
   something stands at the output (``renameat2(RENAME_NOREPLACE)`` on Linux; elsewhere
   ``rename``, which cannot replace a non-empty folder). A folder that appeared at the output
   while zoo was writing is left alone; the writer that loses the race fails with one line.
5. **``force`` replaces only zoo's own output**: a folder zoo published (it records each file's
   size and modification time in ``.zoo-written.json``, and none has changed or been added since)
   or one holding nothing but checkpoint files (``config.json``, ``*.safetensors``, ...).
   Anything else is refused, naming a file that would be lost. The old folder is moved aside
   first, checked again there, and then only the files that were checked are deleted, one by
   one (never a recursive delete): a file that appears meanwhile survives, and so does its folder.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, List, Optional

from .errors import ZooError

MARKER = ".zoo-written.json"
LOCK = ".zoo-partial"
TMP_INFIX = ".zoo-tmp-"
OLD_INFIX = ".zoo-old-"
# the files of a checkpoint folder that turn text or images into inputs (tokenizer, image
# processor): an export carries them over, so the written folder is as usable as the source.
# Not among the files force may replace in a folder zoo did not write: a tokenizer may be edited
PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "source.spm", "target.spm", "spiece.model",
    "sentencepiece.bpe.model", "preprocessor_config.json",
)

# what a folder may hold, without zoo's marker, and still be replaced by force
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "zoo.json",
    "*.safetensors",
    "model.safetensors.index.json",
)


class PublishError(ZooError, ValueError):
    """An output folder that zoo will not write or replace; names the path and why."""


# ----------------------------------------------------------------------------- checks


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def check_target(out, *, force: bool = False, inputs: Iterable = ()) -> None:
    """Everything that can be said about ``out`` before any work: raises :class:`PublishError`."""
    out = Path(os.path.abspath(out))
    if os.path.islink(out):
        raise PublishError(f"{out}: is a symbolic link; give the folder it leads to, or another --out")
    real = _real(out)
    for given in inputs:
        src = _real(Path(given))
        if real == src or src in real.parents or real in src.parents:
            how = "is" if real == src else ("lies inside" if src in real.parents else "holds")
            raise PublishError(
                f"{out}: the output {how} the input {given}; choose an --out outside it "
                f"(--force does not change this)"
            )
    if os.path.lexists(out) and not out.is_dir():
        raise PublishError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise PublishError(f"{out}: exists and is not empty; pass --force (force=True) to replace it")
        replaceable(out)
    parent = real.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PublishError(f"{out}: cannot create it, {parent} is not writable")


def _files(folder: Path) -> List[str]:
    """Every entry below ``folder`` that is not a folder (links included, never followed), as
    relative paths."""
    found = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        rel = Path(root).relative_to(folder)
        # a link to a folder is an entry like a file: os.walk lists it in dirs, not followed
        names = names + [d for d in dirs if os.path.islink(os.path.join(root, d))]
        found += [str(rel / n) if str(rel) != "." else n for n in names]
    return sorted(found)


def _stamp(path: Path) -> List[int]:
    st = os.lstat(path)
    return [st.st_size, st.st_mtime_ns]


def replaceable(folder) -> List[str]:
    """The files ``force`` may delete in ``folder`` (relative paths), or :class:`PublishError`
    naming a file that would be lost."""
    folder = Path(folder)
    files = _files(folder)
    try:
        written = json.loads((folder / MARKER).read_text(encoding="utf-8"))["files"]
        if not isinstance(written, dict):
            raise TypeError
    except FileNotFoundError:
        written = None
    except (OSError, ValueError, KeyError, TypeError):
        raise PublishError(f"{folder}: its {MARKER} is not zoo's; zoo will not replace this folder") from None
    for rel in files:
        if written is not None:
            if rel == MARKER:
                continue
            if rel not in written:
                raise PublishError(f"{folder}: --force replaces only what zoo wrote; {folder / rel} would be lost")
            if _stamp(folder / rel) != written[rel]:
                raise PublishError(f"{folder}: {folder / rel} changed since zoo wrote it and would be lost")
        elif os.sep in rel or os.path.islink(folder / rel) or not any(fnmatch.fnmatch(rel, p) for p in CHECKPOINT_FILES):
            raise PublishError(
                f"{folder}: --force replaces only a folder zoo wrote or one holding nothing but "
                f"checkpoint files; {folder / rel} would be lost"
            )
    return files


# ----------------------------------------------------------------------------- renaming


def _renameat2():
    """libc's renameat2, or None where the platform has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
RENAMEAT2 = _renameat2()


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; ``FileExistsError`` if anything stands at ``dst``.

    With ``renameat2(RENAME_NOREPLACE)`` the kernel checks and renames in one step. Without it
    (another platform, or a file system that does not support the flag), ``os.rename`` after a
    check: the one thing it can replace in the gap is an *empty* folder, so nothing is lost."""
    if RENAMEAT2 is not None:
        if RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(exc.errno, os.strerror(exc.errno), str(dst)) from None
        raise


# ----------------------------------------------------------------------------- the temporary folder


def _lock(fd: int, block: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # no advisory locks: never treat another writer's folder as stale
        return block
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        return True
    except OSError:
        return False


def sweep_stale(parent: Path, name: str) -> List[Path]:
    """Remove the temporary folders a killed writer left for ``parent/name``: only folders
    named like zoo's, holding zoo's lock file, whose lock no process holds."""
    removed = []
    with contextlib.suppress(OSError):
        candidates = [p for p in parent.iterdir() if p.name.startswith(f".{name}{TMP_INFIX}")]
        for tmp in candidates:
            if tmp.is_symlink() or not tmp.is_dir():
                continue
            try:
                fd = os.open(tmp / LOCK, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue  # not zoo's, or being published right now
            try:
                if _lock(fd, block=False):
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed.append(tmp)
            finally:
                os.close(fd)
    return removed


def _new_tmp(parent: Path, name: str):
    """A fresh folder beside the output (the umask applies) with its lock held; (path, fd).

    It is made and locked under a name the sweep does not look at, and only then given its
    ``.zoo-tmp-`` name: no sweep can see it unlocked."""
    token = secrets.token_hex(6)
    making = parent / f".{name}.zoo-new-{token}"
    os.mkdir(making, 0o777)
    fd = os.open(making / LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    _lock(fd, block=True)
    tmp = parent / f".{name}{TMP_INFIX}{token}"
    rename_noreplace(making, tmp)
    return tmp, fd


# ----------------------------------------------------------------------------- publishing


def _delete_checked(folder: Path, files: List[str]) -> Optional[Path]:
    """Delete exactly ``files`` (and the marker) below ``folder``, then its emptied folders.
    Returns ``folder`` if something else is left there (it is kept), else None."""
    for rel in files + [MARKER]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / rel)
    dirs = sorted({p for rel in files for p in (folder / rel).parents if folder in p.parents}, key=lambda p: -len(p.parts))
    for d in dirs + [folder]:
        try:
            os.rmdir(d)
        except OSError:
            return folder
    return None


def _write_marker(folder: Path) -> None:
    stamps = {rel: _stamp(folder / rel) for rel in _files(folder) if rel not in (MARKER, LOCK)}
    from .version import __version__

    (folder / MARKER).write_text(json.dumps({"written_by": f"zoo {__version__}", "files": stamps}, indent=1) + "\n")


def publish(out, write: Callable[[Path], None], *, force: bool = False, inputs: Iterable = ()) -> List[str]:
    """Run ``write(folder)`` on a fresh folder and publish it at ``out``; returns the names of the
    files written (top level). See the module docstring for the rules. Raises
    :class:`PublishError` (nothing at ``out`` or elsewhere changed) when a rule refuses."""
    out = Path(os.path.abspath(out))  # "." or "x/.." name the folder they lead to
    inputs = list(inputs)
    check_target(out, force=force, inputs=inputs)
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(parent, out.name)
    tmp, fd = _new_tmp(parent, out.name)
    try:
        write(tmp)
        os.unlink(tmp / LOCK)  # still held through fd: no sweeper can take the folder now
        _write_marker(tmp)
        names = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
        _move_into_place(tmp, out, force)
        return names
    finally:
        os.close(fd)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        with contextlib.suppress(OSError):  # an empty folder: nothing to lose (fails if filled meanwhile)
            os.rmdir(out)
    if not os.path.lexists(out):
        try:
            rename_noreplace(tmp, out)
            return
        except FileExistsError:
            raise PublishError(f"{out}: appeared while zoo was writing (another writer?); it was left as it is") from None
    if not force or os.path.islink(out):  # it was absent, empty, or a real folder when checked
        raise PublishError(f"{out}: appeared while zoo was writing (another writer?); it was left as it is")
    # Move the old folder aside, check it again where no one else writes, and only then put the
    # new one in its place.
    old = out.parent / f".{out.name}{OLD_INFIX}{secrets.token_hex(6)}"
    try:
        rename_noreplace(out, old)
    except FileNotFoundError:
        old = None
    try:
        try:
            files = replaceable(old) if old is not None else []
        except PublishError as exc:
            raise PublishError(f"{out}: changed while zoo was writing; {str(exc).split('; ', 1)[-1]}") from None
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise PublishError(f"{out}: appeared while zoo was writing (another writer?); it was left as it is") from None
    except BaseException:  # whatever happened (Ctrl-C included), the old folder goes back
        _restore(old, out)
        raise
    if old is not None:
        kept = _delete_checked(old, files)
        if kept is not None:
            print(f"zoo: warning: {kept} holds files that appeared while zoo replaced {out}; kept them there",
                  file=sys.stderr)


def _restore(old: Optional[Path], out: Path) -> None:
    """Put the moved-aside folder back; if something now stands at ``out``, say where it is."""
    if old is None:
        return
    try:
        rename_noreplace(old, out)
    except OSError:
        print(f"zoo: warning: the previous {out} is kept at {old}", file=sys.stderr)
