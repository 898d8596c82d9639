"""Screenshot a gruablate ``report.html`` in headless Chromium: one full-page PNG.

    python docs/screenshot_report.py runs/quick/report/report.html docs/quick/report.png

The check a person makes by eye — does every figure, table and equation render in a
browser — made repeatable. Chromium's ``--screenshot`` captures the window, not the
page, so the page is shot in a window taller than it and the blank space below it is
cropped; a page that fills the whole window is shot again in one twice as tall.

Needs Chromium (Debian: ``apt-get install -y chromium``); ``--browser`` or the
``CHROMIUM`` environment variable name another binary. Exit status 2 with a one-line
error when there is no browser or no report.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1280
FIRST_HEIGHT = 8000
MAX_HEIGHT = 64000  # beyond this a screenshot is not worth looking at anyway
MARGIN = 24  # blank pixels kept below the page's last content
TIMEOUT_S = 180


class ScreenshotError(Exception):
    """Why no screenshot was made, in one line."""


def find_browser(explicit: str | None = None) -> str:
    """The Chromium binary: ``explicit``, ``$CHROMIUM``, or the first of
    :data:`BROWSERS` on the PATH."""
    for name in (explicit, os.environ.get("CHROMIUM"), *BROWSERS):
        if name and (found := shutil.which(name)):
            return found
    raise ScreenshotError(
        f"Chromium not found (looked for {', '.join(BROWSERS)}); install it, e.g. "
        "`apt-get install -y chromium`, or pass --browser PATH")


def shoot(browser: str, page: Path, out: Path, height: int) -> None:
    """One screenshot of ``page`` in a ``WIDTH`` × ``height`` window."""
    # A fresh profile per shot: a profile in use by another Chromium would be locked.
    with tempfile.TemporaryDirectory(prefix="gruablate-shot-") as profile:
        cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox",
               "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
               "--no-first-run", "--force-device-scale-factor=1",
               f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}",
               # The report fetches nothing, so a short budget is only for layout.
               "--virtual-time-budget=5000", f"--screenshot={out}", page.as_uri()]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ScreenshotError(f"{browser} took over {TIMEOUT_S} s; no screenshot") from None
    if res.returncode != 0 or not out.is_file():
        last = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise ScreenshotError(f"{browser} failed (exit {res.returncode}): {last}")


def content_height(png: Path) -> int:
    """Rows down to the last one that differs from the page's background (taken from
    the bottom-left pixel), plus :data:`MARGIN`; 0 for a blank image."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    background = pixels[-1, 0]
    rows = np.flatnonzero((pixels != background).any(axis=(1, 2)))
    return 0 if not len(rows) else min(int(rows[-1]) + 1 + MARGIN, pixels.shape[0])


def screenshot(page: Path, out: Path, browser: str | None = None) -> tuple[int, int]:
    """Write the full-page screenshot of ``page`` to ``out``; returns its size."""
    if not page.is_file():
        raise ScreenshotError(f"no report at {page}")
    exe = find_browser(browser)
    out.parent.mkdir(parents=True, exist_ok=True)
    height = FIRST_HEIGHT
    with tempfile.TemporaryDirectory(prefix="gruablate-shot-") as tmp:
        raw = Path(tmp) / "raw.png"
        while True:
            shoot(exe, page.resolve(), raw, height)
            used = content_height(raw)
            if used == 0:
                raise ScreenshotError(f"{exe} rendered a blank page for {page}")
            if used < height or height >= MAX_HEIGHT:
                break
            height = min(2 * height, MAX_HEIGHT)  # the page runs past the window
        with Image.open(raw) as image:
            image.crop((0, 0, image.width, used)).save(out, optimize=True)
            return image.width, used


def main(argv: list[str] | None = None) -> int:
    """Command line: ``screenshot_report.py REPORT_HTML OUT_PNG [--browser PATH]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("report", type=Path, help="the report.html to render")
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--browser", help="Chromium binary (default: found on the PATH)")
    args = parser.parse_args(argv)
    try:
        width, height = screenshot(args.report, args.out, args.browser)
    except ScreenshotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out} ({width} × {height} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
