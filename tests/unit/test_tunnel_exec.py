"""Commands run over the tunnel's own SSH session (`exec_in_tunnel`): the session the user
authenticated once, so `milex agent stop` and the like never ask a second factor again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from milex.ssh_errors import PromptUnavailable, TunnelError
from milex.tunnel_control import TunnelFiles, TunnelStatus, exec_in_tunnel
from milex.tunnel_service import RemoteAgent, TunnelService, _listen


class Session:
    """What TunnelService asks of an SshSession to run a command: exec, and what it shows."""

    def __init__(self, failure: TunnelError | None = None) -> None:
        self.failure = failure
        self.ran: list[tuple[str, float]] = []
        self.mode, self.connected_at, self.last_failure = None, None, ""

    def exec(self, command: str, timeout: float) -> tuple[int, str, str]:
        if self.failure is not None:
            raise self.failure
        self.ran.append((command, timeout))
        return 3, f"ran {command}\n", "a warning\n"


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


@contextmanager
def serving_commands(session: Session) -> Iterator[TunnelService]:
    files = TunnelFiles.of("m")
    status = TunnelStatus(machine="m", state="up")
    service = TunnelService(session, RemoteAgent(None), status, files, 60)  # type: ignore[arg-type]
    listener = _listen(files.path("exec"))
    serving = threading.Thread(target=service.serve_commands, args=(listener,))
    serving.start()
    try:
        yield service
    finally:
        service.stop.set()
        serving.join()
        listener.close()


def test_a_command_runs_on_the_tunnels_session_with_its_status_and_output(runtime: Path) -> None:
    session = Session()
    with serving_commands(session):
        assert exec_in_tunnel("m", "milex-agent stop --path ~/milex", 30.0) == (
            3, "ran milex-agent stop --path ~/milex\n", "a warning\n",
        )  # fmt: skip
    assert session.ran == [("milex-agent stop --path ~/milex", 30.0)]


def test_without_a_tunnel_the_caller_opens_its_own_session(runtime: Path) -> None:
    assert exec_in_tunnel("m", "true", 30.0) is None


def test_a_tunnel_that_would_need_a_code_says_so_and_stops(runtime: Path) -> None:
    failure = PromptUnavailable("the server asks 'Verification code:': restart the tunnel from a terminal")
    with (
        serving_commands(Session(failure)) as service,
        pytest.raises(PromptUnavailable, match="Verification"),
    ):
        exec_in_tunnel("m", "true", 30.0)
    assert service.stop.is_set()  # the next command starts the tunnel in the foreground, where it can ask
