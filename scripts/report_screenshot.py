"""Render a run's report.html in headless Chromium and save a screenshot, to look at the page as a
browser draws it (the tests check its content; this checks its looks).

    python scripts/report_screenshot.py lightning_logs/version_0            # -> report.png beside it
    python scripts/report_screenshot.py RUN_DIR --out shot.png --height 4000

Needs Chromium (Debian: apt-get install chromium). Runs it with --no-sandbox (as root in a
container the sandbox cannot start) and a throw-away profile, offline: the page fetches nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(report: Path, out: Path, width: int = 1280, height: int = 2400, timeout: float = 120) -> Path:
    """``report`` (an HTML file) rendered by headless Chromium into the PNG ``out``."""
    browser = find_browser()
    if browser is None:
        raise SystemExit("report_screenshot: no Chromium found (Debian: apt-get install chromium).")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={out.resolve()}", f"--window-size={width},{height}",
               report.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"report_screenshot: {browser} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run folder holding report.html (or the file itself)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: report.png beside the report)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    report = args.run_dir if args.run_dir.suffix == ".html" else args.run_dir / "report.html"
    if not report.is_file():
        raise SystemExit(f"report_screenshot: {report} does not exist (fit or test writes it).")
    out = screenshot(report, args.out or report.with_suffix(".png"), args.width, args.height)
    print(out)


if __name__ == "__main__":
    sys.exit(main())
