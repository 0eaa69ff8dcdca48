"""Screenshots of a run's map and of a zone card for the README (headless Debian chromium).

Run with ``.venv/bin/python scripts/screenshots.py OUT_DIR [--zone 59172] [--to docs/img]``
after ``territoria run --out OUT_DIR``. Chromium runs without network (the map is offline;
its background tiles are not drawn), through playwright with ``/usr/bin/chromium``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path, help="run folder (territoria run --out)")
    parser.add_argument("--zone", default="59172")
    parser.add_argument("--to", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    map_html, card = args.out / "map.html", args.out / "zones" / f"{args.zone}.html"
    for path in (map_html, card):
        if not path.exists():
            print(f"{path}: missing (run `territoria run --out {args.out}` first; "
                  f"`territoria explain {args.zone} --html` for a zone that is not flagged)", file=sys.stderr)
            return 2
    from playwright.sync_api import sync_playwright

    args.to.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=FLAGS,
                                                   viewport={"width": 1280, "height": 860})
        page = ctx.new_page()
        page.route("http*://**", lambda route: route.abort())  # offline, as on the planners' machines
        page.goto(map_html.resolve().as_uri(), timeout=180_000)
        page.wait_for_selector(".leaflet-interactive, canvas", timeout=180_000)
        page.wait_for_timeout(3000)
        page.screenshot(path=str(args.to / "map.png"))
        page.goto(card.resolve().as_uri())
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.to / "zone_card.png"), full_page=False)
        ctx.close()
    print(f"written: {args.to / 'map.png'}, {args.to / 'zone_card.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
