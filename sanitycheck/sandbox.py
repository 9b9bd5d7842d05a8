"""The sandbox worker that runs submitted (untrusted) explainer code: ``python -m sanitycheck.sandbox``.

Only the *maps* come from here. Model states, metrics, aggregation and verdicts are computed
by the parent process (:class:`RemoteExplainer`), so a submission cannot fake its scores — it
can only return maps, which is what it is judged on.

Limits, set before the submitted code is imported:

* memory: ``RLIMIT_AS`` (address space), no core dumps;
* time: the parent kills the worker when a request exceeds the remaining time budget;
* files: a Python audit hook (PEP 578) refuses every write, rename, removal, mode change or
  directory creation outside the worker's output directory, and every subprocess, ``exec``,
  ``fork``, socket connection and ``ctypes`` library load. The hook cannot be removed once set.

This stops ordinary Python code. It is not a boundary against native code: run submissions you
do not trust in a container or VM as well.

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
from typing import Any, Dict

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


def read_frame(fd: int) -> bytes:
    (n,) = _HEADER.unpack(read_exact(fd, _HEADER.size))
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
    return read_exact(fd, n)


def _write_flags() -> int:
    return os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def install_write_guard(allowed_root: Path) -> None:
    """Audit hook: writes only below ``allowed_root``; no processes, sockets or native libraries."""
    root = os.path.realpath(allowed_root)
    forbidden = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                 "os.forkpty", "socket.connect", "socket.bind", "ctypes.dlopen", "os.kill", "os.killpg"}
    path_events = {"os.rename": 2, "os.replace": 2, "os.remove": 1, "os.unlink": 1, "os.rmdir": 1,
                   "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1, "os.symlink": 2,
                   "os.link": 2, "os.utime": 1, "shutil.rmtree": 1, "shutil.copyfile": 2, "shutil.move": 2}

    def inside(path: Any) -> bool:
        if isinstance(path, int):  # an already-open descriptor: its opening was checked
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        real = os.path.realpath(os.fspath(path))
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def hook(event: str, args: tuple) -> None:
        if event in forbidden:
            raise PermissionError(f"sanitycheck sandbox: {event} is not allowed for submitted code")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _write_flags())
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sanitycheck sandbox: writing {path!r} is outside the output directory")
        elif event in path_events:
            for path in args[: path_events[event]]:
                if path is not None and not inside(path):
                    raise PermissionError(f"sanitycheck sandbox: {event} on {path!r} is outside the output directory")

    sys.addaudithook(hook)


def set_limits(memory_mb: int) -> None:
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


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
    set_limits(args.memory_mb)
    # Everything trusted is imported before the guard; the submitted module after it.
    import torch

    from .explainers import get_explainer
    from .targets import ClassTarget
    import captum.attr  # noqa: F401  (our explainers' dependency; loads native code)

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
            _reply(fd_out, {"maps": maps.detach().to("cpu", torch.float32).contiguous()})
        except BaseException as err:  # noqa: BLE001
            _reply(fd_out, {"error": f"{type(err).__name__}: {err}"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sanitycheck.sandbox")
    parser.add_argument("--method", required=True)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--memory-mb", type=int, default=8192)
    parser.add_argument("--fd-in", type=int, required=True)
    parser.add_argument("--fd-out", type=int, required=True)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
