"""The sandbox of submitted code holds, layer by layer (issue 10: every escape route it was shown).

A malicious method file (written into a tmp dir) tries one escape per call; the route is chosen by the
first pixel of the input, so one worker serves every route. Two workers run it:

* ``hooked``: the production configuration (bubblewrap + the audit hook): each route is *refused*, with
  the hook's message, or *contained* by the OS layer;
* ``os_only``: bubblewrap without the audit hook: the OS layer alone must *contain* every route.

Every test asserts the effect on the host: nothing written into the parent's output or cache directory
or anywhere outside the scratch, no datagram received, no process left, no secret in the maps.
"""

from __future__ import annotations

import os
import select
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from sanitycheck import sandbox
from sanitycheck.errors import AttributionError
from sanitycheck.submissions import RemoteExplainer, SubmissionError, check_maps

needs_bwrap = pytest.mark.skipif(sandbox.bwrap_problem() is not None,
                                 reason=f"the OS sandbox cannot run here: {sandbox.bwrap_problem()}")

SECRET = "hunter2-sandbox-secret"
MARKER = "1234.56789"  # argv of the child that tries to outlive the worker

METHOD = '''\
import os, sys, torch

HOST = {host!r}            # a directory of the host (the test's), where nothing may appear
PARENT_OUT = {parent_out!r}  # stands for the parent's <run>/cache/scores
CACHE = {cache!r}
PORT = {port!r}
MARKER = {marker!r}


def _flag(x, value):
    maps = torch.zeros_like(x.sum(1))
    maps[0, 0, 0] = float(value)
    return maps


def _bytes_map(x, data):
    maps = torch.zeros_like(x.sum(1)).flatten()
    raw = torch.tensor(list(data[: maps.numel()]), dtype=torch.float32)
    maps[: raw.numel()] = raw
    return maps.view_as(x.sum(1))


def _dir():  # the parent's directory where it is visible, else the root: the write goes through dir_fd
    return os.open(PARENT_OUT if os.path.isdir(PARENT_OUT) else "/", os.O_RDONLY | os.O_DIRECTORY)


def dir_fd_open(x):
    fd = _dir()
    out = os.open("forged.pt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(out, b"forged scores")
    return _flag(x, 1)


def dir_fd_mkdir(x):
    fd = _dir()
    os.mkdir("forged_dir", dir_fd=fd)
    return _flag(x, 1)


def _shell():
    return [b"/bin/sh", b"-c", ("id > " + HOST + "/shell_ran").encode()]


def fork_exec(x):
    import _posixsubprocess, subprocess
    r, w = os.pipe()
    _posixsubprocess.fork_exec(_shell(), [b"/bin/sh"], True, (), None, None, -1, -1, -1, -1, -1, -1, r, w,
                               False, False, -1, None, None, None, -1, None, subprocess._USE_VFORK)
    import time; time.sleep(1)
    return _flag(x, 1)


def subprocess_fork_exec(x):
    import subprocess
    r, w = os.pipe()
    subprocess._fork_exec(_shell(), [b"/bin/sh"], True, (), None, None, -1, -1, -1, -1, -1, -1, r, w,
                          False, False, -1, None, None, None, -1, None, subprocess._USE_VFORK)
    import time; time.sleep(1)
    return _flag(x, 1)


def multiprocessing_spawn(x):
    import multiprocessing
    p = multiprocessing.get_context("spawn").Process(target=os.system, args=("touch " + HOST + "/spawned",))
    p.start()
    p.join(20)
    return _flag(x, 1)


def ctypes_system(x):
    import ctypes
    ctypes.pythonapi.system(("touch " + HOST + "/ctypes_ran").encode())
    return _flag(x, 1)


def sqlite_connect(x):
    import sqlite3
    sqlite3.connect(HOST + "/stolen.sqlite").execute("create table t (x)")
    return _flag(x, 1)


def native_import(x):
    import _sqlite3  # a native module the worker had not loaded
    return _flag(x, 1)


def foreign_native(x):  # a native module brought by the submitter (here: an installed one, copied to scratch)
    import glob, importlib, shutil, tempfile
    dynload = next(p for p in sys.path if p.endswith("lib-dynload"))
    for so in sorted(glob.glob(os.path.join(dynload, "*.so"))):
        name = os.path.basename(so).split(".")[0]
        if name not in sys.modules and not name.startswith("_test"):
            break
    where = tempfile.mkdtemp()
    shutil.copyfile(so, os.path.join(where, os.path.basename(so)))
    sys.path.insert(0, where)
    module = importlib.import_module(name)
    return _flag(x, 1 if where in (module.__file__ or "") else 0)


def mkfifo(x):
    os.mkfifo(HOST + "/fifo")
    return _flag(x, 1)


def setxattr(x):
    os.setxattr(HOST + "/victim", "user.sandbox", b"escaped")
    return _flag(x, 1)


def udp_sendto(x):
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"escaped", ("127.0.0.1", PORT))
    return _flag(x, 1)


def write_outside(x):
    with open(HOST + "/written", "w") as f:
        f.write("escaped")
    return _flag(x, 1)


def write_scratch(x):  # the one writable place: allowed, private
    import tempfile
    with open(os.path.join(tempfile.gettempdir(), "scratch.txt"), "w") as f:
        f.write("fine")
    return _flag(x, 1)


def read_shadow(x):
    try:
        with open("/etc/shadow", "rb") as f:
            return _bytes_map(x, f.read())
    except OSError:
        return _flag(x, 0)


def read_env(x):
    return _bytes_map(x, repr(dict(os.environ)).encode())


def raise_env(x):  # smuggling through an exception message
    raise RuntimeError(repr(dict(os.environ)))


def limits(x):  # which rlimits are set (finite): address space, CPU, processes, file size, core
    import resource
    names = ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE"]
    maps = torch.zeros_like(x.sum(1)).flatten()
    for i, name in enumerate(names):
        maps[i] = float(resource.getrlimit(getattr(resource, name))[0] != resource.RLIM_INFINITY)
    maps[len(names)] = float(resource.getrlimit(resource.RLIMIT_CORE)[0] == 0)
    return maps.view_as(x.sum(1))


def see_parent_dirs(x):
    seen = [p for p in (PARENT_OUT, CACHE, HOST) if os.path.exists(p)]
    return _flag(x, len(seen))


def orphan_child(x):
    import subprocess
    subprocess.Popen(["sleep", MARKER], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _flag(x, 1)


ROUTES = [dir_fd_open, dir_fd_mkdir, fork_exec, subprocess_fork_exec, multiprocessing_spawn, ctypes_system,
          sqlite_connect, native_import, foreign_native, mkfifo, setxattr, udp_sendto, write_outside, write_scratch, read_shadow,
          read_env, raise_env, limits, see_parent_dirs, orphan_child]


def probe(model, x, target):
    return ROUTES[int(x[0, 0, 0, 0].item())](x)
'''

ROUTES = ["dir_fd_open", "dir_fd_mkdir", "fork_exec", "subprocess_fork_exec", "multiprocessing_spawn",
          "ctypes_system", "sqlite_connect", "native_import", "foreign_native", "mkfifo", "setxattr", "udp_sendto",
          "write_outside", "write_scratch", "read_shadow", "read_env", "raise_env", "limits", "see_parent_dirs",
          "orphan_child"]


def _model() -> nn.Module:
    """Built from torch classes only: the worker can unpickle it without the tests' modules."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32, 10)).eval()


class Lab:
    def __init__(self, root: Path):
        self.root = root
        self.host = root / "host"
        self.parent_out = root / "runs" / "sub" / "cache" / "scores"
        self.cache = root / "cache"
        for d in (self.host, self.parent_out, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        (self.host / "victim").write_text("x")
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.method = root / "evil.py"
        self.method.write_text(METHOD.format(host=str(self.host), parent_out=str(self.parent_out),
                                             cache=str(self.cache), port=self.udp.getsockname()[1], marker=MARKER))

    def worker(self, audit_hook: bool = True, **kw) -> RemoteExplainer:
        return RemoteExplainer(f"{self.method}:probe", work_dir=self.root / "runs" / "sub", audit_hook=audit_hook,
                               hide=[self.root / "runs"], timeout_s=120, memory_mb=4096, **kw)

    def call(self, remote: RemoteExplainer, route: str):
        x = torch.zeros(1, 1, 32, 32)  # 1024 map values: room for an environment
        x[0, 0, 0, 0] = ROUTES.index(route)
        return remote(_model(), x, torch.tensor([0]))

    def host_effects(self):
        """Everything a route could have left on the host."""
        effects = sorted(p.name for p in self.host.iterdir() if p.name != "victim")
        effects += [f"out/{p.name}" for p in self.parent_out.iterdir()]
        effects += [f"cache/{p.name}" for p in self.cache.iterdir()]
        try:
            if "user.sandbox" in os.listxattr(self.host / "victim"):
                effects.append("xattr")
        except OSError:
            pass
        if select.select([self.udp], [], [], 0.5)[0]:
            effects.append(f"datagram {self.udp.recv(64)!r}")
        return effects


def _orphans():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if MARKER.encode() in cmdline.split(b"\0") and b"evil.py" not in cmdline:
            found.append(pid)
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SANITYCHECK_TEST_SECRET", SECRET)
    root = tmp_path_factory.mktemp("sandbox")
    mp.setenv("SANITYCHECK_CACHE", str(root / "cache"))
    lab = Lab(root)
    yield lab
    lab.udp.close()
    mp.undo()


@pytest.fixture(scope="module")
def hooked(lab):
    if sandbox.bwrap_problem() is not None:
        pytest.skip(f"the OS sandbox cannot run here: {sandbox.bwrap_problem()}")
    with lab.worker() as remote:
        yield remote


@pytest.fixture(scope="module")
def os_only(lab):
    if sandbox.bwrap_problem() is not None:
        pytest.skip(f"the OS sandbox cannot run here: {sandbox.bwrap_problem()}")
    with lab.worker(audit_hook=False) as remote:
        yield remote


ESCAPES = ["dir_fd_open", "dir_fd_mkdir", "fork_exec", "subprocess_fork_exec", "multiprocessing_spawn",
           "ctypes_system", "sqlite_connect", "native_import", "foreign_native", "mkfifo", "setxattr", "udp_sendto",
           "write_outside", "orphan_child"]


@needs_bwrap
@pytest.mark.parametrize("route", ESCAPES)
def test_each_escape_route_is_refused_by_the_audit_hook(lab, hooked, route):
    with pytest.raises(AttributionError, match="sanitycheck sandbox: .*(not allowed|outside the output directory)"):
        lab.call(hooked, route)
    assert lab.host_effects() == []
    assert _orphans() == []


@needs_bwrap
@pytest.mark.parametrize("route", [r for r in ESCAPES if r != "orphan_child"])
def test_each_escape_route_is_contained_by_the_os_layer_alone(lab, os_only, route):
    """Without the audit hook, the call may fail inside (read-only root, no such directory, no network)
    or seem to succeed inside the namespaces; either way nothing reaches the host."""
    try:
        lab.call(os_only, route)
    except AttributionError:
        pass
    assert lab.host_effects() == []


@needs_bwrap
def test_the_worker_cannot_read_etc_shadow_nor_see_the_parents_directories(lab, hooked, os_only):
    for remote in (hooked, os_only):
        assert float(lab.call(remote, "read_shadow").abs().sum()) == 0.0  # unreadable: the flag map of zeros
        assert float(lab.call(remote, "see_parent_dirs")[0, 0, 0]) == 0.0


@needs_bwrap
def test_secrets_of_the_parent_environment_do_not_reach_the_maps(lab, hooked):
    assert os.environ["SANITYCHECK_TEST_SECRET"] == SECRET
    raw = bytes(int(v) for v in lab.call(hooked, "read_env").flatten().tolist() if v)
    text = raw.decode(errors="replace")
    assert "PATH" in text  # the map does carry the worker's environment ...
    assert SECRET not in text and "SANITYCHECK_CACHE" not in text  # ... which holds nothing of the parent's
    assert "'HOME': '/tmp" in text and "'PYTHONNOUSERSITE': '1'" in text
    with pytest.raises(AttributionError, match="PYTHONNOUSERSITE") as info:  # nor through an error message
        lab.call(hooked, "raise_env")
    assert SECRET not in str(info.value) and "SANITYCHECK_CACHE" not in str(info.value)


@needs_bwrap
def test_rlimits_cover_memory_cpu_processes_and_file_size(lab, hooked):
    assert lab.call(hooked, "limits").flatten()[:5].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]


@needs_bwrap
def test_the_scratch_directory_is_writable_and_private(lab, hooked):
    assert float(lab.call(hooked, "write_scratch")[0, 0, 0]) == 1.0
    assert not list(lab.root.rglob("scratch.txt"))


@needs_bwrap
def test_no_child_outlives_the_worker(lab):
    remote = lab.worker(audit_hook=False)
    try:
        lab.call(remote, "orphan_child")
        for _ in range(50):  # the child runs while the worker does (else this test would show nothing)
            if _orphans():
                break
            select.select([], [], [], 0.1)
        assert _orphans(), os.popen("ps -ef").read()
    finally:
        remote.close()
    for _ in range(50):  # the PID namespace is torn down with its init; give the kernel a moment
        if not _orphans():
            break
        select.select([], [], [], 0.1)
    assert _orphans() == []


def test_without_namespaces_untrusted_code_is_refused_with_the_reason(lab, monkeypatch):
    monkeypatch.setitem(sandbox._PROBE, "result", "`bwrap --unshare-all` failed with exit code 1: No permissions")
    with pytest.raises(SubmissionError, match="cannot isolate submitted code on this machine: `bwrap --unshare-all` "
                                              "failed .*No permissions.*--trust-code"):
        lab.worker()


def test_cli_submit_without_namespaces_names_the_reason_and_the_flag(lab, monkeypatch, capsys):
    from sanitycheck.cli import main

    monkeypatch.setitem(sandbox._PROBE, "result", "bubblewrap (`bwrap`) is not installed")
    assert main(["submit", f"{lab.method}:probe", "--dir", str(lab.root / "board"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot isolate submitted code on this machine: bubblewrap (`bwrap`) is not installed" in err
    assert "--trust-code" in err and not (lab.root / "board").exists()


def test_trust_code_runs_with_the_audit_hook_only_and_says_so(lab, monkeypatch):
    monkeypatch.setitem(sandbox._PROBE, "result", "bubblewrap (`bwrap`) is not installed")
    with lab.worker(trust_code=True) as remote:
        assert remote.sandbox == "audit-hook only"
        with pytest.raises(AttributionError, match="sanitycheck sandbox: os.mkdir with dir_fd is not allowed"):
            lab.call(remote, "dir_fd_mkdir")
    assert lab.host_effects() == []


@needs_bwrap
def test_the_bwrap_command_binds_no_secret_and_hides_the_parents_directories(tmp_path):
    cmd = sandbox.bwrap_command(["python"], readable=[tmp_path], python_path=[], hide=[tmp_path / "out"])
    joined = " ".join(cmd)
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--remount-ro"):
        assert flag in cmd
    assert cmd[cmd.index("--cap-drop") + 1] == "ALL"
    assert "/etc/shadow" not in joined and " /etc " not in joined and "--ro-bind / /" not in joined
    assert "/root " not in joined + " "
    (tmp_path / "out").mkdir()
    cmd = sandbox.bwrap_command(["python"], readable=[tmp_path], python_path=[], hide=[tmp_path / "out"])
    i = cmd.index(str((tmp_path / "out").resolve()))
    assert cmd[i - 1] == "--tmpfs"


@pytest.mark.parametrize("maps, message", [
    (None, "returned NoneType, not a tensor"),
    (torch.zeros(2, 8, 8, dtype=torch.float64), "dtype torch.float64, expected torch.float32"),
    (torch.zeros(2, 8, 9), r"shape \(2, 8, 9\), expected \(2, 8, 8\)"),
    (torch.zeros(2, 1, 8, 8), r"shape \(2, 1, 8, 8\), expected \(2, 8, 8\)"),
    (torch.full((2, 8, 8), float("nan")), "128 map values are NaN or infinite"),
])
def test_maps_from_the_worker_are_checked_before_use(maps, message):
    with pytest.raises(AttributionError, match=f"evil \\(sandboxed\\): .*{message}"):
        check_maps("evil", maps, torch.zeros(2, 3, 8, 8))
    assert check_maps("evil", torch.ones(2, 8, 8), torch.zeros(2, 3, 8, 8)).shape == (2, 8, 8)


def test_an_oversized_reply_is_refused_before_it_is_read():
    r, w = os.pipe()
    try:
        sandbox.write_frame(w, b"x" * 4096)
        with pytest.raises(ValueError, match="frame of 4096 bytes exceeds the 1024-byte limit"):
            sandbox.read_frame(r, limit=1024)
    finally:
        os.close(r)
        os.close(w)
    r, w = os.pipe()
    try:
        sandbox.write_frame(w, b"y" * 1024)
        assert sandbox.read_frame(r, limit=1024) == b"y" * 1024
    finally:
        os.close(r)
        os.close(w)
