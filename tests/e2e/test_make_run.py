"""``make run`` end to end: the supervisor serves, approves, stops on Ctrl-C and resumes.

Real processes on free ports: the Temporal dev server, the worker and the API under the supervisor,
talked to over HTTP exactly as a bot and an operator would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client

from activities.market_providers import SimulatedMarketData
from api.stream_limits import WS_MAX_FRAME_BYTES
from launcher.banner import READY_LINE
from launcher.dev_defaults import TOKENS_FILE

REPO = Path(__file__).resolve().parents[2]
# Generous: on a loaded two-core machine the API and the worker take a while to import.
READY_SECONDS = 90.0
STOP_SECONDS = 30.0


def _free_ports(count: int) -> list[int]:
    # Held open together so the kernel hands out distinct ports.
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Gateway:
    """One ``hitl run`` process; its stdout is drained by a thread and kept."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._log: IO[str] = log_path.open("a", encoding="utf-8")
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "run"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        # Drained to the end: the children share the pipe and would block once it is full.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if READY_LINE in line:
                self.ready.set()

    def supervisor_events(self, event: str) -> list[dict[str, Any]]:
        """The supervisor's JSON log lines named ``event``, oldest first."""
        self._log.flush()
        records: list[Any] = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            # uvicorn's own lines are plain text; only JSON lines are log records.
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return [
            record
            for record in records
            if isinstance(record, dict)
            and record.get("logger") == "launcher.supervisor"
            and record.get("event") == event
        ]

    def diagnostics(self) -> str:
        """The end of stdout and stderr, for a failure message."""
        self._log.flush()
        stderr = self.log_path.read_text(encoding="utf-8")[-4000:]
        return "stdout:\n" + "\n".join(self.lines[-40:]) + "\nstderr:\n" + stderr

    def wait_ready(self) -> None:
        """Wait for the banner, or fail with what the gateway said."""
        deadline = time.monotonic() + READY_SECONDS
        while not self.ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {READY_LINE!r} (exit {self.process.poll()})\n{self.diagnostics()}")

    def interrupt(self) -> int:
        """Ctrl-C, as a human would press it; the exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_SECONDS} s after SIGINT\n{self.diagnostics()}")

    def close(self) -> None:
        """Make sure nothing is left running (children die with the supervisor)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        try:
            self._reader.join(STOP_SECONDS)
        finally:
            # Closed even when a time-out interrupts the join: a file left to the garbage
            # collector fails whichever test runs next with a ResourceWarning.
            assert self.process.stdout is not None
            self.process.stdout.close()
            self._log.close()


@contextlib.contextmanager
def running(env: dict[str, str], log_path: Path) -> Iterator[Gateway]:
    """A started and ready gateway, killed at the end if the test did not stop it."""
    gateway = Gateway(env, log_path)
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _read_tokens(path: Path) -> dict[str, str]:
    (line,) = [
        line for line in path.read_text().splitlines() if line.startswith("HITL_API_TOKENS=")
    ]
    entries = (entry.split(":") for entry in line.removeprefix("HITL_API_TOKENS=").split(","))
    return {principal: token for principal, _role, token in entries}


def _create(http: httpx.Client, bot_token: str) -> str:
    trade_id = str(uuid.uuid4())
    answer = http.post(
        "/api/hitl/requests",
        headers=_bearer(bot_token),
        json={
            "trade_id": trade_id,
            "instrument": "EUR/USD",
            "side": "BUY",
            "risk_pct": "1.5",
            "confidence": "0.8",
            "request_price": str(SimulatedMarketData().mid_price("EUR/USD")),
            "reasoning_summary": "end-to-end test",
        },
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "AWAITING_APPROVAL"
    return trade_id


@dataclass(frozen=True)
class Setup:
    """How the tests start the gateway."""

    env: dict[str, str]
    api_port: int
    temporal_port: int

    @property
    def api(self) -> str:
        """The API's root URL."""
        return f"http://127.0.0.1:{self.api_port}"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """The environment of ``make run`` on free ports and a fresh data folder, nothing else set."""
    api_port, temporal_port, ui_port, metrics_port = _free_ports(4)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("HITL_", "TEMPORAL_", "DATABASE_", "MARKET_DATA_"))
    }
    env |= {
        "HITL_DATA_DIR": str(tmp_path / "data"),
        "HITL_API_PORT": str(api_port),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "TEMPORAL_UI_PORT": str(ui_port),
        "HITL_WORKER_METRICS_PORT": str(metrics_port),
    }
    return Setup(env=env, api_port=api_port, temporal_port=temporal_port)


def _assert_all_stopped(setup: Setup) -> None:
    # Every child went with the supervisor: nothing answers on the API or Temporal port.
    assert not _answers(setup.api_port)
    assert not _answers(setup.temporal_port)


@pytest.mark.timeout(300)  # two starts and two stops of the whole gateway
def test_run_approves_stops_on_ctrl_c_and_resumes(setup: Setup, tmp_path: Path) -> None:
    tokens_path = Path(setup.env["HITL_DATA_DIR"]) / TOKENS_FILE

    with running(setup.env, tmp_path / "first.log") as first:
        banner = "\n".join(first.lines)
        assert f"{setup.api}/docs" in banner
        assert stat.S_IMODE(tokens_path.stat().st_mode) == 0o600
        tokens = _read_tokens(tokens_path)
        assert set(tokens) == {"bot-1", "alice", "admin"}
        assert all(token in banner for token in tokens.values())
        with httpx.Client(base_url=setup.api, timeout=20) as http:
            accepted = _create(http, tokens["bot-1"])
            answer = http.post(
                f"/api/hitl/{accepted}/approve",
                headers=_bearer(tokens["alice"]),
                json={"comment": "ok"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "ACCEPTED"
            waiting = _create(http, tokens["bot-1"])
        # uvicorn itself refuses a WebSocket message past --ws-max-size (1009, message too
        # big) before the API could buffer it.
        stream_url = setup.api.replace("http://", "ws://", 1) + "/ws/hitl"
        with websockets.sync.client.connect(stream_url) as stream:
            stream.send("x" * (WS_MAX_FRAME_BYTES + 1))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                stream.recv(timeout=20)
        refusal = closed.value.rcvd
        assert refusal is not None and refusal.code == 1009
        # Said by the protocol layer ("frame exceeds limit of 65536 bytes"): the API's own check
        # closes with 1009 too, but without a reason, and only after reading the message.
        assert str(WS_MAX_FRAME_BYTES) in refusal.reason, refusal
        assert first.interrupt() == 0, first.diagnostics()
        stopped = [event["child"] for event in first.supervisor_events("child stopped")]
        assert stopped == ["API", "worker", "Temporal dev server"]
    _assert_all_stopped(setup)

    with running(setup.env, tmp_path / "second.log") as second:
        assert _read_tokens(tokens_path) == tokens
        with httpx.Client(base_url=setup.api, timeout=20, headers=_bearer(tokens["alice"])) as http:
            detail = http.get(f"/api/hitl/{accepted}")
            assert detail.status_code == 200, detail.text
            approval = detail.json()["approval"]
            assert (approval["status"], approval["decided_by"]) == ("ACCEPTED", "alice")
            pending = http.get("/api/hitl/pending")
            assert pending.status_code == 200, pending.text
            pending_ids = [item["trade_id"] for item in pending.json()["items"]]
            assert waiting in pending_ids
            assert accepted not in pending_ids
        assert second.interrupt() == 0, second.diagnostics()
    _assert_all_stopped(setup)


@pytest.mark.timeout(200)
def test_a_child_that_dies_is_restarted_and_the_rest_keeps_serving(
    setup: Setup, tmp_path: Path
) -> None:
    """Issue #16 item 5: a crashed child (here the worker, killed with SIGKILL) is started again
    with a log line, as compose's restart policy does; nothing else stops, Ctrl-C still does."""
    with running(setup.env, tmp_path / "run.log") as gateway:
        (worker,) = [
            e for e in gateway.supervisor_events("child started") if e["child"] == "worker"
        ]
        os.kill(worker["pid"], signal.SIGKILL)
        deadline = time.monotonic() + READY_SECONDS
        while not [e for e in gateway.supervisor_events("child started") if e["child"] == "worker"][
            1:
        ]:
            if gateway.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker was not restarted\n{gateway.diagnostics()}")
            time.sleep(0.2)
        [crash] = gateway.supervisor_events("child crashed; restarting")
        assert (crash["child"], crash["returncode"]) == ("worker", -signal.SIGKILL)
        with httpx.Client(base_url=setup.api, timeout=20) as http:
            while http.get("/readyz").status_code != 200:  # the new worker polls
                assert time.monotonic() < deadline, gateway.diagnostics()
                time.sleep(0.2)
        assert gateway.process.poll() is None
        assert gateway.interrupt() == 0, gateway.diagnostics()
    _assert_all_stopped(setup)
