"""The one headless browser every viewer test and benchmark drives: Debian's Chromium via Playwright."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
# No sandbox (tests run as root in containers), nothing fetched in the background, no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
]
