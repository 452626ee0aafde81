"""systemd integration: sd_notify messages and unit files that systemd accepts."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).parent.parent / "contrib" / "systemd"


def test_ready_watchdog_and_stopping_are_notified(make_daemon, env, home):
    notify_path = home.parent / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        env.update(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="200000")
        daemon = make_daemon()
        messages = [notify.recv(4096).decode() for _ in range(3)]
        assert messages[0].splitlines()[0] == "READY=1"
        assert f"MAINPID={daemon.pid}" in messages[0]
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        daemon.process.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in (message := notify.recv(4096).decode()):
            assert message == "WATCHDOG=1"
        assert daemon.process.wait(30) == 0


@pytest.mark.parametrize(
    ("unit", "scope"), [("gsup.service", "--system"), ("gsup-user.service", "--user")]
)
def test_unit_files_verify_cleanly(unit, scope, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed: .ci/run installs it"
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(tmp_path)}
    tmp_path.chmod(0o700)
    result = subprocess.run(
        [analyze, scope, "verify", str(UNITS / unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # verify exits 0 on unknown keys: what it prints is the verdict.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    text = (UNITS / unit).read_text()
    for key in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "KillMode=mixed",
                "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem=strict"):  # fmt: skip
        assert key in text
