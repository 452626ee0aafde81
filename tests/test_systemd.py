"""systemd integration: sd_notify messages and unit files that systemd accepts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest


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


@pytest.mark.parametrize("scope", ["--system", "--user"])
def test_generated_units_verify_cleanly(gsup, scope, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed: .ci/run installs it"
    args = ["--user"] if scope == "--user" else []
    if scope == "--system":
        del gsup.env["GSUP_HOME"]  # the system unit's default state dir: /var/lib/gsup
    text = gsup("service", "install", "--print", *args).stdout
    unit = tmp_path / "gsup.service"
    unit.write_text(text)
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(tmp_path)}
    tmp_path.chmod(0o700)
    result = subprocess.run(
        [analyze, scope, "verify", str(unit)], capture_output=True, text=True, env=env, timeout=60
    )
    # verify exits 0 on unknown keys: what it prints is the verdict.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    home = gsup.home if scope == "--user" else Path("/var/lib/gsup")
    script = Path(sys.executable).parent / "gsup"
    command = str(script) if script.exists() else f"{sys.executable} -m gsup"
    assert f"\nExecStart={command} daemon --home {home}\n" in text
    for key in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "KillMode=mixed",
                "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem=strict",
                f"ReadWritePaths=-{home}"):  # fmt: skip
        assert f"\n{key}" in text


def test_service_install_writes_a_user_unit_once(gsup, tmp_path):
    gsup.env["XDG_CONFIG_HOME"] = str(tmp_path)
    unit = tmp_path / "systemd" / "user" / "gsup.service"
    wrote = gsup("service", "install", "--user")
    assert wrote.stdout == (
        f"wrote {unit}; enable and start it with:\n"
        "  systemctl --user daemon-reload && systemctl --user enable --now gsup.service\n"
    )
    assert unit.read_text() == gsup("service", "install", "--user", "--print").stdout
    assert gsup.home.is_dir()  # made: ProtectSystem=strict would keep the daemon from it
    again = gsup("service", "install", "--user", check=False)
    assert (again.returncode, again.stderr) == (
        1,
        f"gsup: error: {unit} exists; --force replaces it\n",
    )
    assert gsup("service", "install", "--user", "--force").returncode == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="needs a user other than root (root may write)")
def test_a_system_unit_needs_root(gsup):
    refused = gsup("service", "install", check=False)
    assert (refused.returncode, refused.stderr) == (
        1,
        "gsup: error: writing /etc/systemd/system/gsup.service needs root (or --print to"
        " see the unit)\n",
    )


def test_a_system_unit_for_a_user_that_does_not_exist_is_refused(gsup):
    refused = gsup("service", "install", "--run-as", "no-such-user-here", check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("gsup: error: no user 'no-such-user-here' here: create it")
