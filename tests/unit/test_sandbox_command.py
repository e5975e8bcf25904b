"""The bubblewrap command line, built for a fixed host view (no bwrap run)."""

from __future__ import annotations

import sys

from warriorcoder.runtime.settings import SandboxSettings
from warriorcoder.sandbox.command import RUNNER_PATH, HostView, bwrap_argv, host_view

VIEW = HostView(
    python="/venv/bin/python",
    ro_dirs=("/venv", "/root/.pyenv/versions/3.11.7"),
    top_links=(("/bin", "usr/bin"), ("/lib", "usr/lib")),
    runner="/src/warriorcoder/sandbox/runner.py",
)
SETTINGS = SandboxSettings(cpu_s=7, memory_mb=300, scratch_mb=16, max_processes=12)


def _pairs(argv: list[str], option: str, n: int = 1) -> list[list[str]]:
    return [argv[i + 1 : i + 1 + n] for i, a in enumerate(argv) if a == option]


def _runner_args(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1 :]


def test_as_root_no_user_namespace_and_only_setuid_setgid_kept():
    argv = bwrap_argv(SETTINGS, VIEW, report_fd=5, info_fd=6, uid=60003, nproc=12)
    sandbox = argv[: argv.index("--")]
    for flag in ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"):
        assert flag in sandbox
    assert "--unshare-all" not in sandbox and "--unshare-user" not in sandbox
    assert sandbox[sandbox.index("--cap-drop") + 1] == "ALL"
    assert _pairs(sandbox, "--cap-add") == [["CAP_SETUID"], ["CAP_SETGID"]]
    assert "--die-with-parent" in sandbox and "--new-session" in sandbox
    runner = _runner_args(argv)
    assert runner[:4] == ["/venv/bin/python", "-I", "-B", RUNNER_PATH]
    assert runner[runner.index("--uid") + 1] == "60003"
    assert runner[runner.index("--report-fd") + 1] == "5"
    assert sandbox[sandbox.index("--info-fd") + 1] == "6"


def test_unprivileged_user_namespace_with_nested_ones_disabled():
    argv = bwrap_argv(SETTINGS, VIEW, report_fd=5, info_fd=6, uid=None, nproc=140)
    sandbox = argv[: argv.index("--")]
    assert {"--unshare-all", "--unshare-user", "--disable-userns"} <= set(sandbox)
    assert "--cap-add" not in sandbox
    runner = _runner_args(argv)
    assert "--uid" not in runner
    assert runner[runner.index("--nproc") + 1] == "140"


def test_filesystem_view_is_read_only_but_the_scratch_tmpfs():
    argv = bwrap_argv(SETTINGS, VIEW, report_fd=5, info_fd=6, uid=60000, nproc=12)
    sandbox = argv[: argv.index("--")]
    assert "--bind" not in sandbox and "--dev-bind" not in sandbox  # nothing writable of the host
    assert _pairs(sandbox, "--ro-bind", 2) == [
        ["/usr", "/usr"],
        ["/venv", "/venv"],
        ["/root/.pyenv/versions/3.11.7", "/root/.pyenv/versions/3.11.7"],
        ["/src/warriorcoder/sandbox/runner.py", RUNNER_PATH],
    ]
    assert _pairs(sandbox, "--symlink", 2) == [
        ["usr/bin", "/bin"],
        ["usr/lib", "/lib"],
        ["/scratch", "/tmp"],
    ]
    # parents created traversable (the host's /root is mode 700), outermost first
    dirs = [p for (p,) in _pairs(sandbox, "--dir")]
    assert dirs == ["/root", "/root/.pyenv", "/root/.pyenv/versions", "/opt", "/opt/sandbox"]
    assert all(sandbox[sandbox.index("--dir", i) - 1] == "0755" for i in range(len(sandbox)) if
               sandbox[i] == "--dir")  # fmt: skip
    i = sandbox.index("--tmpfs")
    assert sandbox[i - 4 : i + 2] == ["--perms", "1777", "--size", str(16 * 2**20), "--tmpfs",
                                      "/scratch"]  # fmt: skip
    assert _pairs(sandbox, "--proc") == [["/proc"]] and _pairs(sandbox, "--dev") == [["/dev"]]
    assert sandbox[sandbox.index("--chdir") + 1] == "/scratch"


def test_environment_is_cleared_and_limits_are_passed_on():
    argv = bwrap_argv(SETTINGS, VIEW, report_fd=5, info_fd=6, uid=60000, nproc=12)
    sandbox = argv[: argv.index("--")]
    assert "--clearenv" in sandbox
    env = dict((k, v) for k, v in _pairs(sandbox, "--setenv", 2))
    assert env["HOME"] == env["TMPDIR"] == "/scratch"
    assert env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] == "1"
    runner = _runner_args(argv)
    limits = {runner[i]: runner[i + 1] for i in range(4, len(runner) - 1, 2)}
    assert limits == {
        "--report-fd": "5",
        "--cpu-s": "7",
        "--memory-mb": "300",
        "--nproc": "12",
        "--fsize-mb": "16",
        "--uid": "60000",
    }
    assert (
        bwrap_argv(SETTINGS, VIEW, report_fd=5, info_fd=6, uid=None, nproc=1, probe=True)[-1]
        == "--probe"
    )


def test_host_view_of_this_interpreter():
    view = host_view()
    assert view.python == sys.executable
    assert view.runner.endswith("warriorcoder/sandbox/runner.py")
    # every prefix is covered by one bound directory, none nested in another or under /usr
    for prefix in (sys.prefix, sys.base_prefix):
        assert prefix.startswith("/usr/") or any(
            (prefix + "/").startswith(d + "/") for d in view.ro_dirs
        )
    for a in view.ro_dirs:
        assert not a.startswith("/usr/")
        assert not any(a != b and a.startswith(b + "/") for b in view.ro_dirs)


def test_tmp_is_the_scratch_dir_unless_python_lives_under_it():
    argv = bwrap_argv(SETTINGS, VIEW, report_fd=5, info_fd=6, uid=None, nproc=12)
    assert ["/scratch", "/tmp"] in _pairs(argv, "--symlink", 2)
    # a CI virtualenv under /tmp: /tmp must stay the (read-only) parent of its bind, and a
    # symlink there would make bwrap fail ("Can't make symlink at /tmp: File exists")
    ci = HostView(
        python="/tmp/ci/.tox/py/bin/python",
        ro_dirs=("/tmp/ci/.tox/py", "/root/.pyenv/versions/3.11.7"),
        top_links=VIEW.top_links,
        runner=VIEW.runner,
    )
    argv = bwrap_argv(SETTINGS, ci, report_fd=5, info_fd=6, uid=None, nproc=12)
    assert all(target != "/tmp" for _, target in _pairs(argv, "--symlink", 2))
    assert ["0755", "--dir", "/tmp"] in _pairs(argv, "--perms", 3)
    assert ["TMPDIR", "/scratch"] in _pairs(argv, "--setenv", 2)
