"""What differs between Windows and POSIX for the project's files and processes, in one place.

Most clinicians run 3D Slicer on Windows, where (unlike POSIX):
- `os.fsync` is `_commit`, which needs a handle opened for writing (a read-only one gives EBADF);
- renaming over a file, or opening it, fails with a sharing violation (PermissionError) while another
  process has it open, e.g. the GUI reading heartbeat.json at the moment the worker replaces it;
- there is no /proc and `os.kill(pid, 0)` would terminate the process: liveness needs the Win32 API;
- a project folder may be on a network share (a UNC path or a mapped drive), where SQLite's WAL mode,
  which needs shared memory between the processes, is unsafe;
- a console program started by a background process without a console opens a console window of its own.
The Windows branches take their platform as an argument, so tests on Linux force them.
"""
from __future__ import annotations

import getpass
import ntpath
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable, Mapping, Optional, Sequence, TypeVar

T = TypeVar("T")
RETRY_DELAYS_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)   # 0.8 s in all: a reader holds a small file for microseconds
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "afs", "ncpfs", "9p", "fuse.sshfs", "davfs",
                       "fuse.davfs2", "glusterfs", "ceph", "lustre", "gpfs")
WINDOWS = os.name == "nt"


def retrying(operation: Callable[[], T], delays=RETRY_DELAYS_S) -> T:
    """Run `operation`, again after a short wait while it hits a sharing violation (PermissionError), the
    Windows answer when another process holds the file open for a moment."""
    for delay in delays:
        try:
            return operation()
        except PermissionError:
            time.sleep(delay)
    return operation()


def replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """`os.replace`, retried over a sharing violation."""
    retrying(lambda: os.replace(source, target))


def read_bytes(path: str | os.PathLike) -> bytes:
    """A whole file, retried over a sharing violation (the writer may be replacing it right now)."""
    return retrying(Path(path).read_bytes)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file to the disk through a handle opened for writing (read-only fails on Windows)."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_alive(pid: Optional[int], windows: bool = WINDOWS) -> Optional[bool]:
    """Whether a process runs: True/False, None where it cannot be told (then the heartbeat decides)."""
    if not pid:
        return None
    return _windows_alive(pid) if windows else _posix_alive(pid)


def _posix_alive(pid: int) -> Optional[bool]:
    """Signal 0 checks existence without side effects on POSIX; a zombie (exited, not reaped) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True   # no /proc (macOS): it exists


def _windows_alive(pid: int) -> Optional[bool]:
    """OpenProcess + GetExitCodeProcess (STILL_ACTIVE); `os.kill(pid, 0)` would terminate it on Windows."""
    import ctypes
    from ctypes import wintypes

    query_limited_information, still_active, error_invalid_parameter = 0x1000, 259, 87
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    handle = kernel32.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return False if ctypes.get_last_error() == error_invalid_parameter else True  # no such pid / access denied
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return None
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def on_network_share(folder: str | os.PathLike, windows: bool = WINDOWS,
                     mounts: Optional[str] = None) -> bool:
    """Whether a folder lives on a network file system (SQLite's WAL mode is unsafe there)."""
    if windows:
        return _windows_remote(ntpath.abspath(folder))
    return _mount_type(os.path.abspath(folder), mounts) in NETWORK_FILESYSTEMS


def _windows_remote(folder: str) -> bool:
    if folder.startswith(("\\\\", "//")):
        return True   # a UNC path: \\server\share\...
    import ctypes
    drive_remote = 4
    return ctypes.windll.kernel32.GetDriveTypeW(os.path.splitdrive(folder)[0] + "\\") == drive_remote


def _mount_type(folder: str, mounts: Optional[str] = None) -> Optional[str]:
    """The file system type of the longest mount point above `folder` (/proc/mounts; None without it)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    best, best_type = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = folder == point or folder.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


PACKAGE_PARENT = Path(__file__).resolve().parents[2]   # the folder holding the extremeaug package


def spawn(module_args: Sequence[str], stdout: Optional[IO], stderr: Optional[IO] = None,
          environment: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
    """Start `python -m <module_args>` detached from the caller's terminal and signals, in `environment`
    (this process's by default); `stdout` None shares this process's.

    The working directory is the folder holding this package, never the project folder: `-m` puts the
    working directory first on sys.path, so a file such as argparse.py in a (shared) project folder would
    be imported and run. Inside 3D Slicer `sys.executable` is PythonSlicer, and the engine is not installed
    but shipped in the module's folder, which is why that folder is also prepended to PYTHONPATH."""
    kwargs = {"start_new_session": True} if os.name == "posix" else {
        "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    environment = os.environ if environment is None else environment
    env = dict(environment, PYTHONPATH=os.pathsep.join(
        p for p in (str(PACKAGE_PARENT), environment.get("PYTHONPATH")) if p))
    return subprocess.Popen([sys.executable, "-m", *module_args], stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=stderr if stderr is not None else subprocess.STDOUT, cwd=str(PACKAGE_PARENT),
                            env=env, **kwargs)


def stop_tree(process: subprocess.Popen, windows: bool = WINDOWS) -> None:
    """Stop a process that `spawn` started and every process it started in turn, without waiting (the
    caller polls, a GUI must not block).

    Inside 3D Slicer `sys.executable` is the PythonSlicer launcher, which runs `python-real` as its own
    child: terminating the launcher alone would leave that child computing (and storing) after the
    caller said "cancelled". `spawn` made the launcher a process group leader on POSIX, so the group is
    signalled; on Windows `taskkill /T` ends the tree."""
    if process.poll() is not None:
        return
    if windows:
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def login_name() -> Optional[str]:
    """Who stores a label when the front end names no one (the command line, the Slicer module): the login
    (USERNAME on Windows, LOGNAME/USER or the user database elsewhere)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):   # no user database entry and no variable (a container's numeric user)
        return None


def user_cache_folder(windows: bool = WINDOWS, environment: Optional[Mapping[str, str]] = None) -> Path:
    """The user's folder for what can be made again but is worth keeping between runs (compiled kernels):
    %LOCALAPPDATA%\\ExtremeAugSegment on Windows (roaming profiles do not carry it), else
    $XDG_CACHE_HOME/extremeaug or ~/.cache/extremeaug."""
    env = os.environ if environment is None else environment
    if windows:
        base = env.get("LOCALAPPDATA") or ntpath.join(env.get("USERPROFILE", "~"), "AppData", "Local")
        return Path(ntpath.join(base, "ExtremeAugSegment"))
    return Path(env.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()) / "extremeaug"
