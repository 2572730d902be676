#!/usr/bin/env python
"""Rewrite the report screenshots in docs/images/ from a real run of the demo.

Usage (after ``scripts/demo.sh``; needs Debian's chromium)::

    .venv/bin/python scripts/docs_screenshots.py [demo_out] [--participant sub-05]

The group report and one participant's report (default: the demo's oldest subject, 49 years,
whose prediction shows the model's limits with adults) are rendered headless at a fixed size and
saved, downscaled to 256 colours, as ``docs/images/{group,participant}_report.png``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def screenshot(page: Path, target: Path, width: int = 1100, height: int = 1900) -> None:
    """Render ``page`` headless and save its top ``width`` x ``height`` pixels, downscaled."""
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--run-all-compositor-stages-before-draw",
                        f"--user-data-dir={tmp}/profile",
                        "--host-resolver-rules=MAP * ~NOTFOUND",
                        f"--window-size={width},{height}", "--virtual-time-budget=10000",
                        f"--screenshot={full}", page.as_uri()],
                       capture_output=True, check=False, timeout=120)
        if not full.is_file():
            sys.exit(f"chromium wrote no screenshot of {page}")
        with Image.open(full) as image:
            small = image.convert("RGB").resize((width * 4 // 5, height * 4 // 5),
                                                Image.LANCZOS)
            small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target,
                                                                             optimize=True)
    print(f"wrote {target.relative_to(ROOT)} from {page}")


def main(argv: list[str] | None = None) -> int:
    """Screenshot both reports of a demo output folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_out", nargs="?", type=Path, default=ROOT / "demo_out")
    parser.add_argument("--participant", default="sub-05",
                        help="participant whose report is shown (default: %(default)s)")
    args = parser.parse_args(argv)
    derivatives = args.demo_out / "derivatives"
    pages = {"group_report.png": derivatives / "group_report.html",
             "participant_report.png": derivatives / f"{args.participant}.html"}
    for name, page in pages.items():
        if not page.is_file():
            sys.exit(f"{page} is missing: run scripts/demo.sh first")
        screenshot(page.resolve(), ROOT / "docs" / "images" / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
