"""Only the daemon's user, or the group its config names, may talk to it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, run_daemon_expecting_exit

import gsup

NOBODY = 65534  # uid of nobody and gid of nogroup on Debian

PING = (
    "import json, socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    "    s.connect(sys.argv[1])\n"
    "except OSError as exc:\n"
    "    print(json.dumps({'connect': exc.strerror})); sys.exit()\n"
    's.sendall(b\'{"verb": "ping", "id": 1}\\n\')\n'
    "print(s.makefile().readline())\n"
)

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")


def _ping_as_nobody(home) -> dict:
    # The system interpreter: nobody cannot enter /root, where a venv's may live.
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python, "a system python3 is needed to act as another user"
    result = subprocess.run(
        [python, "-c", PING, str(home / "gsup.sock")],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_another_user_cannot_reach_the_socket(daemon, home):
    home.parent.chmod(0o711)
    assert _ping_as_nobody(home) == {"connect": "Permission denied"}


def test_another_user_is_refused_even_when_file_permissions_let_it_in(daemon, home):
    home.parent.chmod(0o711)
    home.chmod(0o711)
    (home / "gsup.sock").chmod(0o666)
    assert _ping_as_nobody(home) == {"id": None, "ok": False, "error": "permission denied"}


def test_members_of_the_configured_group_are_let_in(make_daemon, home, env):
    env["GSUP_GROUP"] = "nogroup"
    make_daemon()
    home.parent.chmod(0o711)
    assert stat.S_IMODE(home.stat().st_mode) == 0o750
    assert stat.S_IMODE((home / "gsup.sock").stat().st_mode) == 0o660
    assert (home / "gsup.sock").stat().st_gid == NOBODY
    reply = _ping_as_nobody(home)
    assert reply["ok"] is True


def test_an_unknown_group_stops_the_daemon_with_a_clear_error(env):
    env["GSUP_GROUP"] = "no-such-group-here"
    result = run_daemon_expecting_exit(env)
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "gsup: error: GSUP_GROUP: unknown group 'no-such-group-here'",
    )


FAKE_DAEMON = (  # another user's listener: notes what it is sent, answers with a fake id
    "import os, socket, sys\n"
    "home = sys.argv[1]\n"
    "os.makedirs(home, mode=0o700)\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.bind(os.path.join(home, 'gsup.sock'))\n"
    "s.listen()\n"
    "print('listening', flush=True)\n"
    "while True:\n"
    "    conn, _ = s.accept()\n"
    "    data = conn.recv(1 << 20)\n"
    "    if data:\n"
    "        open(os.path.join(home, 'received'), 'ab').write(data)\n"
    '    conn.sendall(b\'{"id": 1, "ok": true, "ids": [666]}\\n\')\n'
)


def test_a_daemon_another_user_set_up_in_a_shared_folder_is_sent_nothing(home, env, gsup):
    shared = home.parent / "shared"  # as /tmp: anyone may make a folder in it
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)
    home.parent.chmod(0o755)
    trap = shared / "gsup"
    python = shutil.which("python3", path="/usr/bin:/bin")
    fake = subprocess.Popen(
        [python, "-c", FAKE_DAEMON, str(trap)], user=NOBODY, group=NOBODY, extra_groups=[],
        cwd="/", stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert fake.stdout.readline() == "listening\n"
        env["GSUP_HOME"] = str(trap)
        env["SECRET_TOKEN"] = "hunter2"
        result = gsup("add", "--cmd", "--", "true", check=False)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            f"gsup: error: the daemon at {trap}/gsup.sock runs as uid {NOBODY}, not as you, and"
            f" {shared} could have been made by someone else: refusing to send it anything\n"
        )
        assert not (trap / "received").exists()
    finally:
        fake.kill()


def test_a_state_dir_reached_through_another_users_link_is_refused(home, env):
    victims = home.parent / "mine"
    victims.mkdir(mode=0o700)
    link = home.parent / "theirs"
    link.symlink_to(victims)
    os.lchown(link, NOBODY, NOBODY)
    env["GSUP_HOME"] = str(link)
    result = run_daemon_expecting_exit(env)
    assert (result.returncode, result.stderr) == (1, (
        f"gsup: error: state dir {link} is reached through {link}, a link of uid {NOBODY},"
        " who could move it; use the folder it points to, or a folder of your own\n"
    ))  # fmt: skip
    assert stat.S_IMODE(victims.stat().st_mode) == 0o700 and not any(victims.iterdir())


def test_a_journal_another_user_set_up_in_a_shared_folder_is_not_read(make_daemon, gsup, home,
                                                                       env):  # fmt: skip
    make_daemon()
    job = gsup.add("jobs:add", "1", "2")
    gsup.wait(job)
    gsup("stop")
    shared = home.parent / "shared"  # as /tmp: anyone may make a folder in it
    shared.mkdir()
    shared.chmod(0o1777)
    home.parent.chmod(0o755)
    trap = shared / "gsup"
    shutil.copytree(home, trap)  # a journal of someone else's making
    for path in [trap, *trap.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    env["GSUP_HOME"] = str(trap)
    refusal = (
        f"gsup: error: the journal {trap}/journal.sqlite belongs to uid {NOBODY}, not to you,"
        f" and {shared} could have been made by someone else: refusing to read it\n"
    )
    for command in (["jobs"], ["show", str(job)], ["queues"]):
        result = gsup(*command, check=False)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", refusal)


@pytest.mark.parametrize("holder", ["another user", "a group", "a sticky shared folder"])
def test_a_state_dir_in_a_folder_others_can_rename_in_is_refused(home, env, holder):
    folder = home.parent / "projects"
    folder.mkdir()
    if holder == "another user":
        os.chown(folder, NOBODY, NOBODY)
    else:
        folder.chmod(0o1777 if holder == "a sticky shared folder" else 0o775)
    state = folder / "state"
    env["GSUP_HOME"] = str(state)
    if holder == "a sticky shared folder":  # as /tmp: others cannot move what is ours
        daemon = Daemon(state, env).start()  # ready, or it raises
        assert daemon.stop() == 0
        return
    who = f"uid {NOBODY}" if holder == "another user" else f"group {folder.stat().st_gid}"
    result = run_daemon_expecting_exit(env)
    assert (result.returncode, result.stderr) == (1, (
        f"gsup: error: state dir {state} is inside {folder}, where {who} could move it away"
        " and put another in its place; use a folder of your own\n"
    ))  # fmt: skip
    assert not state.exists()


@pytest.mark.parametrize("command", [["prune", "--older-than", "1d"], ["journal", "salvage"]])
def test_no_lock_is_taken_in_another_users_state_dir(make_daemon, gsup, home, env, command):
    make_daemon()
    gsup("stop")
    victim = home.parent / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    (home / "daemon.lock").unlink()
    (home / "daemon.lock").symlink_to(victim)  # planted by the state dir's owner
    os.chown(home, NOBODY, NOBODY)
    result = gsup(*command, check=False)
    assert (result.returncode, result.stderr) == (1, (
        f"gsup: error: state dir {home} is not private (owned by another user or writable by"
        " others); use a folder of its own\n"
    ))  # fmt: skip
    assert victim.read_text() == "precious\n"


def test_a_folder_that_holds_other_files_is_no_state_dir(env, home):
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    home.chmod(0o755)
    result = run_daemon_expecting_exit(env)
    assert (result.returncode, result.stderr) == (1, (
        f"gsup: error: {home} holds other files and no gsup state: give an empty folder, or"
        " one that is not there yet\n"
    ))  # fmt: skip
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]


@pytest.fixture
def readable_install() -> Iterator[str]:
    """This gsup and the packages of the interpreter running the tests (pure Python),
    copied where another user can read them, as an install would be: the checkout may
    sit in a folder only root can enter (a `mktemp -d`)."""
    root = Path(tempfile.mkdtemp(prefix="gsup-install-", dir="/tmp"))
    try:
        root.chmod(0o755)
        skip = shutil.ignore_patterns("__pycache__", "pip", "pip-*", "setuptools", "setuptools-*")
        shutil.copytree(Path(gsup.__file__).parent, root / "gsup", ignore=skip)
        shutil.copytree(sysconfig.get_paths()["purelib"], root / "site", ignore=skip)
        yield os.pathsep.join([str(root), str(root / "site")])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_recover_in_a_state_dir_one_cannot_enter_says_so_in_one_line(home, readable_install):
    """Root enters any folder, so the command runs as another user."""
    home.mkdir(mode=0o700)
    home.parent.chmod(0o711)
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python, "a system python3 is needed to act as another user"
    result = subprocess.run(
        [python, "-P", "-m", "gsup", "recover", "--dry-run"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": readable_install, "GSUP_HOME": str(home)},
        user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        f"gsup: error: cannot read {home}/gsup.toml: Permission denied\n",
    )
