"""The sandbox worker that runs submitted (untrusted) explainer code: ``python -m sanitycheck.sandbox``.

Only the *maps* come from here. Model states, metrics, aggregation and verdicts are computed
by the parent process (:class:`RemoteExplainer`), so a submission cannot fake its scores — it
can only return maps, which is what it is judged on.

Two layers:

1. **The operating system** (:func:`bwrap_command`, Debian's ``bubblewrap``): the worker runs in new
   user, mount, PID, network, IPC and UTS namespaces with no capabilities, in an empty read-only root
   where only the system directories, a few files of ``/etc``, the Python installation, the virtual
   environment, the sanitycheck package and the method's source are bound read-only. ``/tmp`` is a
   private tmpfs, the only writable place. The parent's cache, output and leaderboard directories are
   not there; ``/etc/shadow`` and the home directory are not there; there is no network (not even the
   host's loopback); the environment is cleared. When the worker exits or is killed, its PID namespace
   goes with it: no child outlives it.
2. **A Python audit hook** (PEP 578, :func:`install_write_guard`), set before the submitted code is
   imported and impossible to remove: no writes outside the scratch directory (nor by relative path or
   ``dir_fd``), no processes, sockets, ``ctypes``, sqlite, FIFOs, extended attributes, or native modules
   that were not loaded before.

rlimits (set before the submitted code is imported): address space, CPU time, file size, processes
(``RLIMIT_NPROC`` counts this user's tasks machine-wide, so the limit is their count plus a margin),
no core dumps. The parent kills the worker when a request exceeds the remaining time budget.

Without namespaces (no ``bwrap``, or user namespaces disabled) ``submit`` refuses to run code unless
told ``--trust-code``; then only the audit hook stands, which stops ordinary Python code but is not a
boundary against native code.

Protocol: length-prefixed frames on two inherited pipes. Parent → worker: ``torch.save`` of
``{"op": "explain", "state_key", "model" (only for a new state), "x", "classes"}`` or
``{"op": "exit"}``. Worker → parent: ``torch.save`` of plain tensors and strings, which the parent
reads with ``torch.load(weights_only=True)`` — never a pickle from the untrusted side.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

_HEADER = struct.Struct("<Q")
MAX_FRAME = 1 << 31


def write_frame(fd: int, payload: bytes) -> None:
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_exact(fd: int, n: int) -> bytes:
    chunks, remaining = [], n
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, limit: int = MAX_FRAME) -> bytes:
    (n,) = _HEADER.unpack(read_exact(fd, _HEADER.size))
    if n > min(limit, MAX_FRAME):
        raise ValueError(f"frame of {n} bytes exceeds the {min(limit, MAX_FRAME)}-byte limit")
    return read_exact(fd, n)


def _write_flags() -> int:
    return os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


#: audit events refused outright (prefixes end with a dot): processes, sockets, native code, databases,
#: extended attributes and the garbage collector's object walks (a way back to patched-out functions)
FORBIDDEN_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "pty.spawn", "sqlite3.connect", "sqlite3.connect/handle", "sqlite3.enable_load_extension",
    "sqlite3.load_extension", "os.setxattr", "os.removexattr", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "sys._current_frames", "os.add_dll_directory", "mmap.__new__", "os.startfile",
    "webbrowser.open", "urllib.Request", "ftplib.connect", "http.client.connect", "smtplib.connect",
    "imaplib.open", "poplib.connect", "telnetlib.Telnet.open", "os.chroot", "os.setuid", "os.setgid",
})
FORBIDDEN_PREFIXES = ("ctypes.", "socket.", "_posixsubprocess.", "winreg.", "msvcrt.")
#: path events: (number of leading path arguments, positions of their dir_fd arguments)
PATH_EVENTS = {"os.rename": (2, (2, 3)), "os.replace": (2, (2, 3)), "os.remove": (1, (1,)), "os.unlink": (1, (1,)),
               "os.rmdir": (1, (1,)), "os.mkdir": (1, (2,)), "os.chmod": (1, (2,)), "os.chown": (1, (3,)),
               "os.truncate": (1, ()), "os.symlink": (2, (2,)), "os.link": (2, (2, 3)), "os.utime": (1, (3,)),
               "shutil.rmtree": (1, ()), "shutil.copyfile": (2, ()), "shutil.move": (2, ()),
               "shutil.chown": (1, ()), "shutil.make_archive": (1, ()), "shutil.unpack_archive": (2, ())}


def _refuse(what: str) -> "PermissionError":
    return PermissionError(f"sanitycheck sandbox: {what} is not allowed for submitted code")


def install_write_guard(allowed_root: Path) -> None:
    """Audit hook (PEP 578), the second layer: writes only below ``allowed_root`` and by absolute path;
    no ``dir_fd`` writes, processes, sockets, ``ctypes``, sqlite, FIFOs, extended attributes, or native
    modules that :func:`native_refusal` refuses. The hook cannot be removed once set."""
    root = os.path.realpath(allowed_root)
    _block_unaudited_calls()
    finder = _NativeImportGuard(set(sys.modules))
    sys.meta_path.insert(0, finder)

    def inside(path: Any) -> bool:
        if isinstance(path, int):  # an already-open descriptor: its opening was checked
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        path = os.fspath(path)
        if not os.path.isabs(path):  # relative to the cwd or to an unknown dir_fd: refused
            return False
        real = os.path.realpath(path)
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def hook(event: str, args: tuple) -> None:
        if event in FORBIDDEN_EVENTS or event.startswith(FORBIDDEN_PREFIXES):
            raise _refuse(event)
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _write_flags())
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sanitycheck sandbox: writing {path!r} is outside the output directory "
                                      f"(write by absolute path under {root})")
        elif event in PATH_EVENTS:
            n_paths, dir_fds = PATH_EVENTS[event]
            for i in dir_fds:
                if i < len(args) and isinstance(args[i], int) and args[i] not in (-1, None):
                    raise _refuse(f"{event} with dir_fd")
            for path in args[:n_paths]:
                if path is not None and not inside(path):
                    raise PermissionError(f"sanitycheck sandbox: {event} on {path!r} is outside the output directory")
        elif event == "import":
            meta_path = args[3] if len(args) > 3 else None  # None when raised by _imp.create_dynamic
            if isinstance(meta_path, list) and not any(f is finder for f in meta_path):
                raise _refuse("removing the native-module guard from sys.meta_path")

    sys.addaudithook(hook)


#: installed native modules refused to submitted code although they ship with Python: files, shared memory,
#: sockets, terminals and databases outside the audited API
DENIED_NATIVE = frozenset({"_sqlite3", "_ctypes", "_multiprocessing", "_posixshmem", "mmap", "_socket", "_ssl",
                           "_curses", "_curses_panel", "readline", "_dbm", "_gdbm", "_tkinter", "termios",
                           "_xxsubinterpreters", "_xxinterpchannels", "_testcapi", "_testinternalcapi"})


def _installed_roots() -> tuple:
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             sysconfig.get_paths().get("platlib", sys.prefix), sysconfig.get_paths().get("stdlib", sys.prefix)}
    return tuple(os.path.realpath(r).rstrip(os.sep) + os.sep for r in roots if r)


def native_refusal(name: str, origin: Any, loaded: frozenset, roots: tuple) -> Optional[str]:
    """Why loading the native module ``name`` from ``origin`` is refused (None: allowed). Allowed: those
    loaded before the guard, and installed ones (under the Python installation or the virtual
    environment) outside :data:`DENIED_NATIVE` — trusted libraries import such modules lazily
    (``torch._dynamo`` imports ``_lsprof``). Refused: a native module from anywhere else (the scratch
    directory, the method's directory) and the denied ones."""
    if name in loaded:
        return None
    if name.rpartition(".")[2] in DENIED_NATIVE:
        return f"loading the native module {name!r} (files, sockets, shared memory or a database)"
    real = os.path.realpath(str(origin)) if origin else ""
    if not real.startswith(roots):
        return f"loading the native module {name!r} from {origin!r} (outside the Python installation)"
    return None


class _NativeImportGuard:
    """First on ``sys.meta_path``: refuses native extension modules that :func:`native_refusal` refuses."""

    def __init__(self, loaded: set):
        self.loaded = frozenset(loaded)
        self.roots = _installed_roots()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        import importlib.machinery

        if name in self.loaded:
            return None
        for finder in sys.meta_path[1:]:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                if isinstance(spec.loader, importlib.machinery.ExtensionFileLoader) or (
                        spec.origin or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                    why = native_refusal(name, spec.origin, self.loaded, self.roots)
                    if why:
                        raise ImportError(f"sanitycheck sandbox: {why} is not allowed for submitted code")
                return None
        return None


def _block_unaudited_calls() -> None:
    """Replace the functions that raise no audit event: FIFOs and device nodes, the raw process
    spawner (``_posixsubprocess.fork_exec``, used by ``subprocess`` and multiprocessing's spawn),
    and the loader of native modules."""
    import _imp

    loaded = set(sys.modules)

    def refused(what: str):
        def call(*_a: Any, **_k: Any) -> Any:
            raise _refuse(what)
        return call

    for module in (os, sys.modules.get("posix")):
        if module is None:
            continue
        for name in ("mkfifo", "mknod", "memfd_create", "pidfd_open", "setns", "unshare"):
            if hasattr(module, name):
                setattr(module, name, refused(f"os.{name}"))
    try:
        import _posixsubprocess

        _posixsubprocess.fork_exec = refused("_posixsubprocess.fork_exec")
        if "subprocess" in sys.modules:  # subprocess keeps its own reference, called after its audit event
            sys.modules["subprocess"]._fork_exec = refused("_posixsubprocess.fork_exec")  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - not POSIX
        pass
    create_dynamic = _imp.create_dynamic

    roots = _installed_roots()

    def guarded_create_dynamic(spec: Any, *rest: Any) -> Any:
        why = native_refusal(str(getattr(spec, "name", spec)), getattr(spec, "origin", None), frozenset(loaded), roots)
        if why:
            raise _refuse(why)
        return create_dynamic(spec, *rest)

    _imp.create_dynamic = guarded_create_dynamic


def set_limits(memory_mb: int, cpu_s: int = 0, max_procs: int = 0, file_mb: int = 0) -> None:
    """rlimits of the worker: address space, core dumps, and (when given) CPU time, processes, file size."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cpu_s:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    if max_procs:
        resource.setrlimit(resource.RLIMIT_NPROC, (max_procs, max_procs))
    if file_mb:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))


# ------------------------------------------------------------------------- the OS layer (bubblewrap)
SCRATCH = "/tmp"  # the sandbox's only writable directory (a private tmpfs)
_PROBE: Dict[str, Optional[str]] = {}


def bwrap_problem() -> Optional[str]:
    """Why the OS sandbox cannot run here (None when it can): probed once per process."""
    if "result" in _PROBE:
        return _PROBE["result"]
    import shutil
    import subprocess

    exe = shutil.which("bwrap")
    if exe is None:
        problem: Optional[str] = ("bubblewrap (`bwrap`) is not installed; install it (Debian/Ubuntu: "
                                  "`apt-get install bubblewrap`, or `make test`)")
    else:
        try:
            probe = subprocess.run([exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
                                    "--die-with-parent", "--new-session", "--cap-drop", "ALL", "true"],
                                   capture_output=True, timeout=30)
            problem = None if probe.returncode == 0 else (
                f"`bwrap --unshare-all` failed with exit code {probe.returncode}: "
                f"{probe.stderr.decode(errors='replace').strip()[:300]} (user namespaces are probably disabled "
                "here: kernel.unprivileged_userns_clone, a container without CAP_SYS_ADMIN, or AppArmor)")
        except (OSError, subprocess.TimeoutExpired) as err:
            problem = f"cannot run `bwrap`: {err}"
    _PROBE["result"] = problem
    return problem


def _tasks_of_this_user() -> int:
    """Threads owned by this process's real uid (RLIMIT_NPROC counts them across the whole machine)."""
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return n


def process_limit(extra: int = 256) -> int:
    """An RLIMIT_NPROC for the worker: this user's current tasks plus ``extra`` (a fork bomb stops there)."""
    return _tasks_of_this_user() + extra


_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group",
              "host.conf", "hosts", "alternatives", "fonts")
_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def bwrap_command(worker: Sequence[str], *, readable: Sequence[Path], python_path: Sequence[Path],
                  hide: Sequence[Path] = (), scratch_mb: int = 1024, env: Optional[Dict[str, str]] = None) -> List[str]:
    """The ``bwrap`` command line that runs ``worker`` isolated by the operating system.

    New user, mount, PID, network, IPC, UTS and cgroup namespaces; no capabilities; a new session; the
    worker dies with its parent. The file system is an empty read-only root with, bound read-only: the
    system directories, a few files of /etc (not shadow, gshadow, ssh keys ...), the Python installation,
    the virtual environment, the sanitycheck package and ``readable`` (the method's source). ``/tmp`` is a
    private tmpfs of ``scratch_mb`` MiB, the only writable place. ``hide`` (the parent's cache, output and
    leaderboard directories) are covered by empty tmpfs where they lie under a bound path. The environment is
    cleared and rebuilt from ``env`` and a minimal PATH/HOME/TMPDIR/PYTHONPATH."""
    import shutil

    cmd: List[str] = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
                      "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox", "--clearenv"]
    bound: List[str] = []
    # the scratch tmpfs first: what is bound below (a method file under /tmp) lies on top of it
    cmd.extend(["--size", str(scratch_mb << 20), "--tmpfs", SCRATCH])

    def ro(path: str) -> None:
        real = os.path.realpath(path)
        if not os.path.exists(real) or _under(real, bound):
            return
        bound.append(real)
        cmd.extend(["--ro-bind", real, real])

    for name in _SYSTEM_DIRS:
        path = "/" + name
        if os.path.islink(path):
            cmd.extend(["--symlink", os.readlink(path), path])
        elif os.path.isdir(path):
            ro(path)
    for name in _ETC_FILES:
        path = "/etc/" + name
        if os.path.exists(path):
            cmd.extend(["--ro-bind", path, path])
    for path in sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix,
                                                       os.path.dirname(os.path.realpath(sys.executable)))}, key=len):
        ro(path)
    if sys.executable != os.path.realpath(sys.executable):  # the venv's python links into the installation
        ro(os.path.dirname(os.path.abspath(sys.executable)))
    site_dirs = [p for p in sys.path if os.path.basename(p.rstrip(os.sep)) in ("site-packages", "dist-packages")
                 and os.path.isdir(p)]  # the user site or a PYTHONPATH one, when torch is installed there
    for path in site_dirs + [str(p) for p in readable]:
        ro(path)
    cmd.extend(["--proc", "/proc", "--dev", "/dev"])
    for path in hide:
        real = os.path.realpath(path)
        if os.path.isdir(real) and _under(real, bound):
            cmd.extend(["--tmpfs", real])
    cmd.extend(["--remount-ro", "/", "--chdir", SCRATCH])
    variables = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": SCRATCH, "TMPDIR": SCRATCH, "LANG": "C.UTF-8",
                 "PYTHONPATH": os.pathsep.join([os.path.realpath(p) for p in python_path]
                                               + [os.path.realpath(p) for p in site_dirs
                                                  if not _under(os.path.realpath(p), [os.path.realpath(sys.prefix),
                                                                                      os.path.realpath(sys.base_prefix)])]),
                 "PYTHONNOUSERSITE": "1",
                 "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "MPLCONFIGDIR": SCRATCH}
    variables.update(env or {})
    for key, value in variables.items():
        cmd.extend(["--setenv", key, value])
    return cmd + ["--"] + list(worker)


#: parent variables passed to the worker: thread counts and allocator settings only (nothing secret)
PASSED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_MMAP_MAX_",
              "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "SANITYCHECK_DETERMINISTIC")


def _reply(fd: int, obj: Dict[str, Any]) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_frame(fd, buf.getvalue())


def serve(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "tmp").mkdir(exist_ok=True)
    os.chdir(out)
    os.environ.update({"HOME": str(out), "TMPDIR": str(out / "tmp"), "MPLCONFIGDIR": str(out / "tmp")})
    set_limits(args.memory_mb, cpu_s=args.cpu_s, file_mb=args.file_mb)
    # Everything trusted is imported before the guard; the submitted module after it.
    import torch

    from .explainers import get_explainer
    from .targets import ClassTarget
    import captum.attr  # noqa: F401  (our explainers' dependency; loads native code)

    if args.max_procs:  # after the imports above started their threads; counts this user's tasks machine-wide
        set_limits(args.memory_mb, max_procs=args.max_procs)
    if not args.no_audit_hook:
        install_write_guard(out)
    fd_in, fd_out = args.fd_in, args.fd_out
    try:
        explainer = get_explainer(args.method, **json.loads(args.params))
        _reply(fd_out, {"ok": "ready", "name": str(explainer.name), "config": json.dumps(explainer.config(), default=str),
                        "code_hash": str(explainer.code_hash()), "requires_model": bool(explainer.requires_model),
                        "channel_reduction": str(explainer.channel_reduction),
                        "input_kind": str(getattr(explainer, "input_kind", "image"))})
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides
        _reply(fd_out, {"error": f"cannot load method {args.method!r}: {type(err).__name__}: {err}"})
        return 1
    models: Dict[str, Any] = {}
    while True:
        try:
            request = torch.load(io.BytesIO(read_frame(fd_in)), weights_only=False)  # from the trusted parent
        except EOFError:
            return 0
        if request["op"] == "exit":
            return 0
        try:
            key = request["state_key"]
            if request.get("model") is not None:
                models.clear()
                models[key] = request["model"].eval()
            maps = explainer(models[key], request["x"], ClassTarget(request["classes"]))
            if not isinstance(maps, torch.Tensor) or not maps.dtype.is_floating_point:
                kind = maps.dtype if isinstance(maps, torch.Tensor) else type(maps).__name__
                raise TypeError(f"maps must be a real floating-point tensor, got {kind}")
            _reply(fd_out, {"maps": maps.detach().to("cpu", torch.float32).contiguous()})
        except BaseException as err:  # noqa: BLE001
            _reply(fd_out, {"error": f"{type(err).__name__}: {err}"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sanitycheck.sandbox")
    parser.add_argument("--method", required=True)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--memory-mb", type=int, default=8192)
    parser.add_argument("--cpu-s", type=int, default=0, help="RLIMIT_CPU, seconds (0: none)")
    parser.add_argument("--max-procs", type=int, default=0, help="RLIMIT_NPROC (0: none)")
    parser.add_argument("--file-mb", type=int, default=0, help="RLIMIT_FSIZE, MiB (0: none)")
    parser.add_argument("--no-audit-hook", action="store_true",
                        help="tests only: run without the audit hook, to show the OS layer holds on its own")
    parser.add_argument("--fd-in", type=int, required=True)
    parser.add_argument("--fd-out", type=int, required=True)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
