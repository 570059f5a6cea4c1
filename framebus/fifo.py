"""FIFO life cycle for the writer side: create safely, open without blocking, size the pipe.

Safety rules: a path that exists and is not a FIFO (regular file, symlink, directory, device)
is refused and never opened for writing, so a misconfigured path cannot clobber a file.
Opening uses O_NOFOLLOW and re-checks the opened descriptor, closing the race between the
check and the open.
"""

from __future__ import annotations

import array
import errno
import fcntl
import grp
import os
import stat
import termios
from pathlib import Path

from framebus.errors import FifoError

PIPE_MAX_SIZE_PATH = Path("/proc/sys/fs/pipe-max-size")

_KIND = {
    stat.S_IFREG: "a regular file",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symlink",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def describe_kind(mode: int) -> str:
    """A human name for a file type."""
    return _KIND.get(stat.S_IFMT(mode), "not a FIFO")


def ensure_fifo(path: Path, mode: int = 0o660, group: str | None = None) -> bool:
    """Create the FIFO if absent (True if created); refuse anything that is not a FIFO."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        try:  # the group first: a refused one must leave no FIFO behind
            gid = -1 if group is None else grp.getgrnam(group).gr_gid
        except (KeyError, ValueError):
            raise FifoError(f"{path}: group {group!r} does not exist") from None
        if not path.parent.is_dir():  # a typo must not quietly become a new directory tree
            raise FifoError(f"{path}: cannot create the FIFO: directory {path.parent} does not "
                            "exist (framebus makes only fifo_dir itself)") from None
        try:
            os.mkfifo(path, mode)
            try:
                os.chmod(path, mode)  # mkfifo's mode is filtered by the umask
                if gid != -1:
                    os.chown(path, -1, gid)
            except OSError:
                path.unlink(missing_ok=True)
                raise
        except OSError as exc:  # read-only file system, permissions, a file as parent ...
            raise FifoError(f"{path}: cannot create the FIFO: {exc.strerror}") from None
        return True
    except OSError as exc:
        raise FifoError(f"{path}: cannot inspect: {exc.strerror}") from None
    if not stat.S_ISFIFO(info.st_mode):
        raise FifoError(f"{path} exists and is {describe_kind(info.st_mode)}, not a FIFO: "
                        "refusing to touch it")
    return False


def missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def fifo_key(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the FIFO at ``path`` (not followed); None if it is not one."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISFIFO(info.st_mode) else None


def remove_made_fifo(path: Path, key: tuple[int, int]) -> bool:
    """Unlink ``path`` only while it is still the very FIFO we made (``key`` from
    :func:`fifo_key` at creation): a path someone else made since is left alone."""
    if fifo_key(path) != key:
        return False
    try:
        path.unlink()
    except OSError:
        return False
    return True


class FifoMissing(FifoError):
    """The subscriber's FIFO path no longer exists (someone deleted it)."""


def open_writer(path: Path) -> int | None:
    """Open a FIFO for writing without blocking; None while no reader has it open (ENXIO)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        if exc.errno == errno.ENOENT:
            raise FifoMissing(f"{path}: deleted") from None
        if exc.errno == errno.ELOOP:
            raise FifoError(f"{path} is a symlink: refusing to follow it") from None
        raise FifoError(f"{path}: cannot open: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISFIFO(mode):
        os.close(fd)
        raise FifoError(f"{path} is {describe_kind(mode)}, not a FIFO: refusing to write")
    return fd


def unread_bytes(fd: int) -> int:
    """Bytes sitting in the pipe behind ``fd`` (FIONREAD works on either end)."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def pipe_max_size() -> int:
    """The largest pipe an unprivileged process may ask for."""
    try:
        return int(PIPE_MAX_SIZE_PATH.read_text())
    except (OSError, ValueError):
        return 1 << 20


def set_pipe_size(fd: int, wanted: int) -> int:
    """Grow the pipe towards ``wanted`` (clamped to pipe-max-size); return the size obtained."""
    size = min(wanted, pipe_max_size())
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)  # e.g. the user's pipe quota is used up


class FifoRefused(FifoError):
    """A requested FIFO path is not allowed (outside the allowed directories, a symlink,
    not a FIFO): nothing was written."""


class NoReader(FifoError):
    """The FIFO exists but nobody has it open for reading."""


def inside(path: str, directories: list[Path]) -> bool:
    """True if the resolved ``path`` lies inside one of the (resolved) directories."""
    for directory in directories:
        root = os.path.realpath(directory)
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def check_allowed_path(path: Path, allowed: list[Path]) -> None:
    """Refuse relative paths, '..' and anything that resolves outside ``allowed``."""
    if not path.is_absolute():
        raise FifoRefused(f"{path}: must be an absolute path")
    if ".." in path.parts:
        raise FifoRefused(f"{path}: '..' is not allowed")
    if not inside(os.path.realpath(path), allowed):
        raise FifoRefused(f"{path}: outside the allowed FIFO directories")


def open_requested_fifo(path: Path, allowed: list[Path]) -> int:
    """Open a caller's FIFO for one non-blocking write, after every safety check.

    The path must resolve inside ``allowed`` (so no symlink leads out), must be a FIFO before
    it is opened (devices are never opened), is opened with O_NOFOLLOW, and must be the same
    FIFO, still inside ``allowed``, once open.
    """
    check_allowed_path(path, allowed)
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise FifoRefused(f"{path}: no such FIFO") from None
    if not stat.S_ISFIFO(before.st_mode):
        raise FifoRefused(f"{path} is {describe_kind(before.st_mode)}, not a FIFO")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise NoReader(f"{path}: no reader has the FIFO open") from None
        raise FifoRefused(f"{path}: cannot open: {exc.strerror}") from None
    after = os.fstat(fd)
    opened = os.readlink(f"/proc/self/fd/{fd}")
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or not inside(
        opened, allowed
    ):
        os.close(fd)
        raise FifoRefused(f"{path}: changed while being opened")
    return fd
