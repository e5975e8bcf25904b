"""The bubblewrap command line of one sandboxed run (pure: builds a list of strings).

Usage::

    view = host_view()                                  # interpreter, prefixes, top-level links
    argv = bwrap_argv(settings, view, report_fd=5, info_fd=6, uid=60000, nproc=64)

The view inside the sandbox: ``/usr`` and the interpreter's prefix and base prefix (plus the
directory of pytest and its dependencies when it lies elsewhere) read-only at their host paths,
the host's top-level links into ``/usr`` (``/bin -> usr/bin``, ``/lib``...) recreated, the runner
at ``/opt/sandbox/runner.py``, a fresh ``/proc`` of the sandbox's own pid namespace, a minimal
``/dev`` (null, zero, full, random, urandom, tty, a private devpts), and ``/scratch``: a tmpfs of
``scratch_mb``, mode 1777, the working directory and ``TMPDIR``, also reachable as ``/tmp``
(unless the Python installation itself lies under ``/tmp``: ``/tmp`` is then only its read-only
parent). No host ``/etc``, ``/home``, ``/root``, ``/tmp`` or project directory; parent
directories of the bound prefixes
are created empty (mode 0755, so an unprivileged uid can traverse to an interpreter kept under a
mode-700 ``/root``). The environment is cleared and set to a fixed minimum.

Two modes, by who starts the sandbox (``uid``):

* as root (``uid`` given): pid, net, ipc, uts (and cgroup) namespaces but no user namespace, every
  capability dropped except CAP_SETUID/CAP_SETGID, which the runner uses once to become ``uid``
  (losing them): the tests run as a real unprivileged host uid, so RLIMIT_NPROC applies (the
  kernel exempts uid 0, and in a user namespace made by root the sandbox's uid maps back to 0);
* unprivileged (``uid`` None): every namespace including a user namespace, with further user
  namespaces disabled inside; the tests run as the caller's uid, whose processes (the service's
  own included) all count toward RLIMIT_NPROC, so ``nproc`` must be the caller's own task count
  plus the limit (``Sandbox`` computes it).

bubblewrap always sets no-new-privs and mounts binds nosuid.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from warriorcoder.runtime.settings import SandboxSettings

__all__ = ["ENV", "RUNNER_PATH", "SCRATCH", "HostView", "bwrap_argv", "host_view"]

SCRATCH = "/scratch"
RUNNER_PATH = "/opt/sandbox/runner.py"  # where the runner appears inside the sandbox
_MB = 1024 * 1024
_TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Imported by pytest itself: bound too when installed outside the prefixes.
_PYTEST_DISTS = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments")
ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": SCRATCH,
    "TMPDIR": SCRATCH,
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",  # nothing written beside the solution
    "PYTHONHASHSEED": "0",  # the same set/dict order on every run: reproducible results
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # only pytest and the runner's plugin
}


@dataclass(frozen=True)
class HostView:
    """What of the host the sandbox sees: the interpreter and the read-only directories."""

    python: str  # the interpreter, at its host path
    ro_dirs: tuple[str, ...]  # bound read-only at the same path (besides /usr)
    top_links: tuple[tuple[str, str], ...]  # ("/lib", "usr/lib"): the host's links into /usr
    runner: str  # the runner's host path


def host_view() -> HostView:
    """This interpreter's view: its prefixes, pytest's site directory, the runner file."""
    dirs: list[str] = []
    for p in (sys.prefix, sys.base_prefix):
        _add_dir(dirs, os.path.realpath(p))
    for name in _PYTEST_DISTS:
        spec = find_spec(name)
        if spec is not None and spec.origin:
            origin = Path(spec.origin)
            site = origin.parent.parent if origin.name == "__init__.py" else origin.parent
            _add_dir(dirs, str(site))
    links = []
    for name in _TOP_LINKS:
        path = Path("/", name)
        if path.is_symlink():
            links.append((str(path), os.readlink(path)))
    runner = str(Path(__file__).with_name("runner.py"))
    return HostView(
        python=sys.executable, ro_dirs=tuple(dirs), top_links=tuple(links), runner=runner
    )


def _add_dir(dirs: list[str], path: str) -> None:
    if path == "/usr" or path.startswith("/usr/"):
        return
    if any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs):
        return
    dirs[:] = [d for d in dirs if not d.startswith(path.rstrip("/") + "/")] + [path]


def _parents(paths: list[str]) -> list[str]:
    """Every ancestor directory of ``paths`` (not /), outermost first, once."""
    out: list[str] = []
    for p in paths:
        for parent in reversed(Path(p).parents[:-1]):
            if str(parent) not in out:
                out.append(str(parent))
    return out


def bwrap_argv(
    settings: SandboxSettings,
    view: HostView,
    *,
    report_fd: int,
    info_fd: int,
    uid: int | None,
    nproc: int,
    probe: bool = False,
) -> list[str]:
    """The command line: ``uid`` set when started as root (see the module docstring)."""
    argv = ["bwrap", "--die-with-parent", "--new-session"]
    if uid is not None:
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
        argv += ["--unshare-cgroup-try"]
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for link, target in view.top_links:
        argv += ["--symlink", target, link]
    parents = _parents([*view.ro_dirs, RUNNER_PATH])
    for parent in parents:
        argv += ["--perms", "0755", "--dir", parent]
    for d in view.ro_dirs:
        argv += ["--ro-bind", d, d]
    argv += ["--ro-bind", view.runner, RUNNER_PATH]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", str(settings.scratch_mb * _MB), "--tmpfs", SCRATCH]
    if "/tmp" not in parents and "/tmp" not in view.ro_dirs:
        # (a Python installed under /tmp, e.g. a CI virtualenv, keeps /tmp a read-only parent
        # of its bind; TMPDIR still points at the scratch directory)
        argv += ["--symlink", SCRATCH, "/tmp"]
    argv += ["--chdir", SCRATCH, "--clearenv"]
    for key, value in ENV.items():
        argv += ["--setenv", key, value]
    argv += ["--info-fd", str(info_fd), "--"]
    argv += [view.python, "-I", "-B", RUNNER_PATH, "--report-fd", str(report_fd)]
    argv += ["--cpu-s", str(settings.cpu_s), "--memory-mb", str(settings.memory_mb)]
    argv += ["--nproc", str(nproc), "--fsize-mb", str(settings.scratch_mb)]
    if uid is not None:
        argv += ["--uid", str(uid)]
    if probe:
        argv += ["--probe"]
    return argv
