"""Plain helpers of the leaderboard tests (importable; conftest.py is not): submissions on disk, a
tampered copy, and a minimal W3C WebDriver client for headless Chromium (no selenium)."""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

SUITE = "tinyboard"
SUITE_YAML = """\
name: tinyboard
version: 0.1.0
description: "Tiny <script>alert('suite')</script> & <b>board</b> | for leaderboard tests"
reference: "unit tests [x](http://example.invalid)"
batch_size: 6
figure_images: 1
dataset: {name: digits}
model: {name: digits_cnn}
explainers: [gradient, gradient_x_input, sobel]
metrics: [spearman_abs, ssim]
checks:
  - name: cascading_randomization
    verdict: {metric: spearman_abs, threshold: 0.5}
  - name: independent_randomization
    verdict: {metric: spearman_abs, threshold: 0.5, rule: final_step}
"""
METHODS = ("gradient", "gradient_x_input", "sobel")
EVIL_SOURCE = "<img src=x onerror=alert(1)> & \"quoted\""


def write_submission(root: Path, doc: Dict[str, Any], method: Optional[str] = None) -> Path:
    path = root / "submissions" / (method or doc["method"]["name"]) / f"{doc['suite']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def tampered(doc: Dict[str, Any], name: str) -> Dict[str, Any]:
    """A hand-edited copy: one randomized step's mean changed, everything else intact."""
    bad = copy.deepcopy(doc)
    bad["method"]["name"] = name
    rec = next(r for r in bad["records"] if r["step"] != "original" and r["mean"] is not None)
    rec["mean"] = round(rec["mean"] - 0.25, 6)
    return bad


# --------------------------------------------------------------------------- headless Chromium over W3C WebDriver
CHROMIUM = "/usr/bin/chromium"


def chromedriver_path() -> Optional[str]:
    return shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """Just enough of the W3C WebDriver protocol (plain HTTP + JSON) to load, inspect, click and screenshot."""

    def __init__(self, base: str, timeout: float = 30.0):
        self.base, self.timeout = base, timeout
        self.session: Optional[str] = None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}").get("value")
        except urllib.error.HTTPError as err:
            raise AssertionError(f"WebDriver {method} {path}: HTTP {err.code}: {err.read()[:500]!r}") from None

    def start(self, user_data_dir: Path, width: int = 1500, height: int = 1100) -> None:
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}", "--hide-scrollbars"]
        value = self.call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}})
        self.session = value["sessionId"]

    def s(self, method: str, path: str, body: Any = None) -> Any:
        return self.call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.s("POST", "/url", {"url": url})

    def execute(self, script: str, *args: Any) -> Any:
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> Dict[str, str]:
        return self.s("POST", "/element", {"using": "css selector", "value": css})

    def click(self, element: Dict[str, str]) -> None:
        self.s("POST", f"/element/{next(iter(element.values()))}/click", {})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.s("GET", "/screenshot")))
        return path

    def quit(self) -> None:
        if self.session:
            try:
                self.call("DELETE", f"/session/{self.session}")
            finally:
                self.session = None




@contextmanager
def chromedriver_session(profile: Path, width: int = 1500, height: int = 1100) -> Iterator[WebDriver]:
    """Start chromedriver on a free port and a headless Chromium session; always delete the session and
    terminate chromedriver (bounded waits)."""
    driver = chromedriver_path()
    port = _free_port()
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wd = WebDriver(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if (wd.call("GET", "/status") or {}).get("ready"):
                    break
            except (OSError, AssertionError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromedriver did not start on port {port} (exit code {proc.poll()})")
            time.sleep(0.1)
        wd.start(profile, width, height)
        yield wd
    finally:
        try:
            wd.quit()
        except (OSError, AssertionError):
            pass
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
