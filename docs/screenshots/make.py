"""Screenshots of the status page for the README: every page, light and dark, and on a phone.

Why a script: the pictures must show what the page really looks like today, so they are
taken, not drawn: the project's simulator, a real daemon polling it (with a webhook notifier
whose receiver is down, so the health panel and the deliveries show a failing notifier) and
Debian's Chromium driven by Playwright, started as the browser tests start it. A run group
of 24 samples is given a known mix (succeeded, failed, running, queued) through the
simulator's hooks, so the overview's bar has every part. A second notifier, also down, gives
up after a few seconds, so the dead letters page has letters; two silences (one active,
holding back the other team's runs, one expired) fill the silences page.

    .venv/bin/python docs/screenshots/make.py          # writes docs/screenshots/*.png

Files: ``{login,overview,runs,run,dead-letters,silences}-{light,dark}.png`` at 1280 px wide
and ``{overview,runs,run,dead-letters,silences}-phone.png`` at 390 px (the page's own phone
layout).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402
from support import (  # noqa: E402
    Daemon,
    Processes,
    clean_env,
    daemon_config,
    free_port,
    http,
    start_daemon,
    start_simulator,
    wait_for,
    write_config,
)
from ui_support import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402

TOKEN = "screenshot-admin-token-0123456789"  # noqa: S105 - a throwaway local daemon
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the receiver is never up
# (outcome, [queued, initializing, running] seconds, samples) of the group shown
MIX = (
    ("SUCCESS", [0.5, 0.5, 2.0], 11),
    ("EXECUTOR_ERROR", [0.5, 0.5, 3.0], 3),
    ("SUCCESS", [0.5, 0.5, 3600.0], 6),
    ("SUCCESS", [3600.0, 1.0, 1.0], 4),
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TALLEST = {"desktop": 1300, "phone": 1500}  # a long page is cut here (the README's images)


def snap(page: Page, name: str, width: int, tallest: int) -> None:
    height = min(tallest, int(page.evaluate("document.documentElement.scrollHeight")))
    clip = {"x": 0, "y": 0, "width": width, "height": height}
    page.screenshot(path=str(HERE / name), full_page=True, clip=clip)  # type: ignore[arg-type]


def stage(procs: Processes, work: Path) -> tuple[Daemon, list[str]]:
    """The simulator, the daemon and the runs it tracks; the failed runs' UUIDs."""
    sim = start_simulator(procs, work / "sim", "--runs", "8", "--run-seconds", "8")
    samples: list[tuple[str, str]] = []
    for outcome, durations, count in MIX:
        for _ in range(count):
            body = {"outcome": outcome, "durations": durations, "kind": "finishing"}
            reply = http("POST", sim.endpoint + "/_sim/runs", body=body)
            samples.append((reply.json()["run_uuid"], outcome))
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: deliveries retry
    config = daemon_config(
        work / "daemon",
        sim=sim,
        port=port,
        admin_token=TOKEN,
        notifiers=[
            {"name": "lab-webhook", "type": "webhook", "url": dead, "secret": SECRET},
            # gives up at once: the dead letters page has letters to show
            {"name": "archive", "type": "webhook", "url": dead, "max_age_seconds": 3},
        ],
    )
    path = write_config(work / "daemon" / "omics-watcher.toml", config)
    daemon = start_daemon(procs, path, port=port, env=clean_env(work / "daemon"), admin_token=TOKEN)
    daemon.wait_ready()
    silences: tuple[tuple[dict[str, str], str, str], ...] = (
        ({"label.team": "rnaseq"}, "4h", "RNA-seq batch rerun, known failures"),
        ({"project_id": "1234567"}, "1h", "maintenance window"),
    )
    for matchers, duration, comment in silences:
        body = {"matchers": matchers, "duration": duration, "comment": comment}
        made = daemon.admin("POST", "/v1/silences", body=body).json()
    daemon.admin("DELETE", f"/v1/silences/{made['id']}")  # the second one ended early
    for n, (uuid, _) in enumerate(samples):
        labels = {"run_group": "plate-2026-11-A", "sample": f"S{n + 1:02d}", "team": "genomics"}
        daemon.admin("POST", "/v1/runs", body={"run_uuid": uuid, "labels": labels})
    for uuid in sim.runs:
        daemon.admin("POST", "/v1/runs", body={"run_uuid": uuid, "labels": {"team": "rnaseq"}})
    failed = [u for u, outcome in samples if outcome != "SUCCESS"]

    def settled() -> bool | None:
        runs = daemon.admin("GET", "/v1/runs?limit=200").json()["runs"]
        done = {r["run_uuid"] for r in runs if r["terminal"]}
        return True if set(failed) <= done and len(done) >= 14 else None

    wait_for(settled, timeout=90, interval=0.5, what="the group's outcomes recorded")
    wait_for(
        lambda: daemon.admin("GET", "/v1/dead-letters?limit=5").json() or None,
        timeout=60,
        interval=0.5,
        what="dead letters of the archive notifier",
    )
    time.sleep(2)  # the enrichment of the last failure, a few delivery attempts
    return daemon, failed


def login(page: Page, daemon: Daemon) -> None:
    page.goto(daemon.url + "/ui/login")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(daemon.url + "/ui/")


def shoot(browser: Browser, daemon: Daemon, failed: str) -> None:
    pages = {
        "overview": "/ui/",
        "runs": "/ui/runs",
        "run": f"/ui/runs/{failed}",
        "dead-letters": "/ui/dead-letters",
        "silences": "/ui/silences",
    }
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport=DESKTOP, color_scheme=scheme)  # type: ignore[arg-type]
        page = context.new_page()
        page.goto(daemon.url + "/ui/login")
        snap(page, f"login-{scheme}.png", DESKTOP["width"], 480)
        login(page, daemon)
        for name, path in pages.items():
            page.goto(daemon.url + path)
            snap(page, f"{name}-{scheme}.png", DESKTOP["width"], TALLEST["desktop"])
        context.close()
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    login(page, daemon)
    for name, path in pages.items():
        page.goto(daemon.url + path)
        snap(page, f"{name}-phone.png", PHONE["width"], TALLEST["phone"])
    context.close()


def main() -> None:
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            daemon, failed = stage(procs, Path(tmp))
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
                )
                try:
                    shoot(browser, daemon, failed[0])
                finally:
                    browser.close()
    finally:
        procs.cleanup()
    for png in sorted(HERE.glob("*.png")):
        print(f"{png.relative_to(ROOT)}  {png.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
