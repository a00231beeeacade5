"""A small tmpfs for tests of real disk faults: full, read-only, freed again.

Mounting needs root. Without it the tests skip, except under CI (`CI=true`), where a
fault test that cannot run is a failure: it would otherwise pass by never running.
"""

import errno
import os
import subprocess
from pathlib import Path

import pytest

BLOCK = b"\0" * 65536


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: not skipped)", pytrace=False)
    pytest.skip(reason)


class Tmpfs:
    """A tmpfs of `size` mounted at `path` for one test; `close()` unmounts it."""

    def __init__(self, path: Path, size: str = "2m"):
        if os.geteuid() != 0:
            unavailable("mounting a tmpfs needs root")
        path.mkdir(parents=True, exist_ok=True)
        mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        if mounted.returncode != 0:
            unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
        self.path = path.resolve()
        self.filler = path / "filler"

    def fill(self) -> int:
        """Write a filler file until the kernel says ENOSPC; returns how many bytes."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                written += os.write(fd, BLOCK)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0, "the tmpfs is not full"
        return written

    def free(self) -> None:
        """Delete the filler: the space is there again."""
        self.filler.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        """Remount `ro` or `rw`; Linux refuses `ro` while a file is open for writing."""
        remounted = _run("mount", "-o", f"remount,{mode}", str(self.path))
        assert remounted.returncode == 0, remounted.stderr

    def open_here(self) -> list[str]:
        """The files under the mount this process holds open."""
        paths = (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
        return sorted(p for p in paths if p.startswith(f"{self.path}/"))

    def close(self) -> None:
        """Unmount; lazily if something still holds a file open."""
        if _run("umount", str(self.path)).returncode != 0:
            _run("umount", "-l", str(self.path))


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)
