"""`gsup web` in a real browser: Debian's Chromium, driven by Playwright through its
executable_path (Playwright cannot download its own browsers here), against a real
`gsup web` and a real daemon."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

from gsup.api import Queues

playwright = pytest.importorskip("playwright.sync_api")
prometheus_parser = pytest.importorskip("prometheus_client.parser")
CHROMIUM = shutil.which("chromium") and "/usr/lib/chromium/chromium"  # Debian's, not its wrapper
if not CHROMIUM or not Path(CHROMIUM).exists():
    pytest.skip("no Chromium: apt install chromium (.ci/run installs it)", allow_module_level=True)
TOKEN = "a-token-of-sixteen-or-more"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


class Web:
    """A `gsup web` process on a free port of 127.0.0.1."""

    def __init__(self, env: dict[str, str], *extra: str, token: str | None = None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {**env, "GSUP_WEB_TOKEN": token} if token else env
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "gsup", "web", "--listen", f"127.0.0.1:{self.port}",
             *extra], env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        assert line == f"gsup: dashboard on http://127.0.0.1:{self.port}/\n", line

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(10)


@pytest.fixture
def web(daemon, env) -> Iterator[Web]:
    server = Web(env)
    yield server
    server.stop()


@pytest.fixture
def page(browser) -> Iterator[object]:
    opened = browser.new_page()
    yield opened
    opened.close()


def followers(home: Path) -> int:
    return Queues(home).client.request("stats")["followers"]


def open_live(page, web: Web, path: str, home: Path) -> None:
    """Open a page and wait until its event stream follows the daemon."""
    page.goto(web.url(path))
    wait_until(lambda: followers(home) == 1, what="the page's stream to follow the daemon")


def test_a_job_added_from_the_cli_appears_on_the_jobs_page_within_a_second(web, page, gsup, home):
    open_live(page, web, "/jobs", home)
    job = gsup.add("jobs:add", "1", "2")
    row = page.locator(f"table.jobs a[href='/jobs/{job}']")
    playwright.expect(row).to_be_visible(timeout=1000)
    gsup.wait(job)
    link = page.locator(f"a[href='/jobs/{job}']")
    done = page.locator("table.jobs tbody tr", has=link).locator(".state.done")
    playwright.expect(done).to_be_visible(timeout=1000)


def test_a_cancelled_jobs_state_changes_on_its_page(web, page, gsup, home, workdir):
    job = gsup.add("jobs:wait_for_file", str(workdir / "never"))
    wait_until(lambda: gsup.running(job), what="the job to run")
    open_live(page, web, f"/jobs/{job}", home)
    playwright.expect(page.locator("h2[data-state=running]")).to_be_visible()
    gsup("cancel", str(job))
    playwright.expect(page.locator("h2[data-state=cancelled]")).to_be_visible(timeout=2000)
    playwright.expect(page.locator("td .state.cancelled").first).to_be_visible()


def test_a_running_jobs_output_is_followed_on_its_page(web, page, gsup, home, workdir):
    (workdir / "talk.py").write_text(
        "import os, time\n"
        "def talk(gate):\n"
        "    print('first line', flush=True)\n"
        "    while not os.path.exists(gate):\n"
        "        time.sleep(0.05)\n"
        "    print('second line', flush=True)\n"
        "    time.sleep(30)\n"
    )
    gate = workdir / "gate"
    job = gsup.add("talk:talk", str(gate))
    wait_until(lambda: gsup.running(job), what="the job to run")
    open_live(page, web, f"/jobs/{job}", home)
    playwright.expect(page.locator("#log-out")).to_have_text("first line\n", timeout=3000)
    gate.touch()
    playwright.expect(page.locator("#log-out")).to_have_text("first line\nsecond line\n",
                                                             timeout=3000)  # fmt: skip
    gsup("cancel", str(job))


def test_a_tasks_progress_advances_on_its_page(web, page, gsup, home, workdir):
    gate = workdir / "gate"
    (workdir / "t.toml").write_text(
        '[task]\nname = "t"\nfloat = 1\n[[transform]]\nname = "a"\ntarget = "jobs:wait_for_file"\n'
        f'units = [["{gate}"], ["{gate}"], ["{gate}"]]\n'
    )
    task = gsup("task", "submit", "t.toml").stdout.strip()
    open_live(page, web, f"/tasks/{task}", home)
    count = page.locator("[data-transform=a] .count")
    playwright.expect(count).to_have_text("0/3")
    gate.touch()
    playwright.expect(count).to_have_text("3/3", timeout=5000)
    playwright.expect(page.locator("h2 .state.completed")).to_be_visible()
    assert page.locator("[data-transform=a] progress").get_attribute("value") == "3"


def test_the_overview_shows_the_pools_and_live_events(web, page, gsup, home, workdir, tmp_path):
    job = gsup.add("jobs:add", "1")
    gsup.wait(job)
    open_live(page, web, "/", home)
    playwright.expect(page.locator("#pool-user h3")).to_have_text("gsup user threads")
    playwright.expect(page.locator("#pool-user tbody tr")).to_have_count(5)
    playwright.expect(page.locator(".daemon.up")).to_contain_text("daemon: running")
    plot = page.locator(".plot.throughput figcaption")
    playwright.expect(plot).to_have_text("state changes per minute, the last hour; at most 3")
    gate = workdir / "gate"
    running = [gsup.add("jobs:wait_for_file", str(gate)) for _ in range(2)]
    for busy in running:
        playwright.expect(page.locator(f"#pool-user a[href='/jobs/{busy}']")).to_be_visible()
    page.goto(web.url("/events"))
    wait_until(lambda: followers(home) == 1, what="the events page to follow")
    failed = gsup.add("jobs:boom")
    gsup.wait(failed)
    newest = page.locator(".live-events tbody tr").first
    playwright.expect(newest).to_contain_text(f"{failed}running → failed")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(web.url("/"))
    shot = Path(os.environ.get("GSUP_SCREENSHOTS", tmp_path)) / "dashboard.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    gate.touch()
    gsup.wait(*running)


def test_metrics_of_the_web_process_parse_with_prometheus_clients_parser(web, gsup):
    job = gsup.add("jobs:add", "1")
    gsup.wait(job)
    status, text = web.get("/metrics")
    assert status == 200
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_parser.text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert found["gsup_up", ()] == 1
    assert found["gsup_jobs_ended_total", (("outcome", "done"), ("pool", "user"))] == 1


def test_unknown_pages_and_ids_are_404_and_the_daemon_goes_on(web, gsup):
    states = "queued, running, done, failed, timeout, cancelled, lost"
    for path, text in (("/nope", "There is no page /nope."), ("/jobs/99", "no job 99"),
                       ("/tasks/7", "no task 7"),
                       ("/jobs?state=bogus", f"no state 'bogus'; choose from {states}"),
                       ("/static/x.js", "no file x.js")):  # fmt: skip
        status, body = web.get(path)
        assert (status, f"<p>{text}</p>" in body.replace("&#x27;", "'")) == (404, True), path
    job = gsup.add("jobs:add", "1")
    assert gsup.wait(job) == {job: "done"}


def test_a_token_is_asked_of_every_request_once_set(daemon, env, browser, gsup):
    web = Web(env, token=TOKEN)
    try:
        assert web.get("/")[0] == 401
        assert web.get("/?token=wrong-token-wrong-token")[0] == 401
        assert web.get("/metrics", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        page = browser.new_page()
        page.goto(web.url(f"/jobs?limit=5&token={TOKEN}"))  # then a cookie carries it
        assert page.url == web.url("/jobs?limit=5")  # the token is out of the address
        playwright.expect(page.locator("table.jobs")).to_be_visible()
        page.goto(web.url("/"))
        playwright.expect(page.locator(".daemon.up")).to_be_visible()
        page.goto(web.url("/jobs"))
        playwright.expect(page.locator("table.jobs")).to_be_visible()
        page.close()
    finally:
        web.stop()


def test_listening_beyond_loopback_needs_a_token(gsup):
    result = gsup("web", "--listen", "0.0.0.0:9", check=False)
    assert (result.returncode, result.stderr) == (1, (
        "gsup: error: listening on 0.0.0.0 reaches beyond this machine and needs a token: set"
        " [web] token in gsup.toml (or GSUP_WEB_TOKEN), at least 16 characters\n"))  # fmt: skip


def test_the_daemon_keeps_working_when_the_web_process_dies(web, page, gsup, home):
    open_live(page, web, "/jobs", home)
    web.process.kill()
    web.process.wait(10)
    wait_until(lambda: followers(home) == 0, what="the daemon to drop the dead follower")
    job = gsup.add("jobs:add", "1")
    assert gsup.wait(job) == {job: "done"}


def test_requests_that_break_the_rules_get_a_clear_status(web, gsup):
    """A name that is not this machine's (DNS rebinding), HEAD, odd numbers: never a 500."""
    job = gsup.add("jobs:shout", "x", "3")
    gsup.wait(job)
    assert web.get("/jobs", {"Host": "attacker.example"})[0] == 421
    assert web.get("/jobs", {"Host": f"localhost:{web.port}"})[0] == 200
    for path in (f"/jobs/{job}/log/out?from=99999999999999999999",
                 f"/jobs/{job}/log/out?from=%C2%B2", "/jobs?limit=abc"):  # fmt: skip
        assert web.get(path)[0] == 200, path
    request = urllib.request.Request(web.url("/stream?since=%C2%B2"), method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert (answer.status, answer.read()) == (200, b"")
    request = urllib.request.Request(web.url("/jobs"), method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405


def test_a_token_in_the_address_is_moved_to_a_cookie_on_this_site_only(daemon, env):
    web = Web(env, token=TOKEN)
    try:
        assert web.get("/metrics", {"Authorization": f"bearer {TOKEN}"})[0] == 200
        connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        connection.request("GET", f"//evil.example/jobs?token={TOKEN}")
        answer = connection.getresponse()
        assert (answer.status, answer.getheader("Location")) == (303, "/evil.example/jobs")
        connection.close()
    finally:
        web.stop()
