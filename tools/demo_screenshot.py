"""The README's picture of the demo (docs/images/demo.png), taken in headless Chromium from a
running server: an instruction of the Alpaca evaluation set asked in the Chat tab, its streamed
answer shown with the rating buttons.

Usage:
    alpaca-serve &                                   # the default model, the demo at /ui
    python -m tools.demo_screenshot --server-url http://127.0.0.1:8000 --out docs/images/demo.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
INSTRUCTION = "Give three tips for staying healthy."
# Gradio marks a component's status tracker `.pending` while its event is queued and
# `.generating` while a generator streams into it; both go once the event has finished.
CHAT_BUSY = "#chat-tab .pending, #chat-tab .generating"


def wait_until_chat_finished(page, timeout_s: float) -> None:
    """Until the Chat tab's event (a streamed answer) has finished and its last update rendered."""
    page.wait_for_function(
        "busy => !document.querySelector(busy)", arg=CHAT_BUSY, timeout=timeout_s * 1000
    )


def take(server_url: str, out: Path, instruction: str, timeout_s: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        page.goto(f"{server_url}/ui/")
        page.locator("#instruction textarea").fill(instruction)
        page.locator("#send").click()
        page.locator('#chatbot [aria-label^="bot\'s message"]').first.wait_for()
        wait_until_chat_finished(page, timeout_s)
        page.locator("#instruction textarea").blur()
        page.evaluate("window.scrollTo(0, 0)")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo_screenshot", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--server-url", default="http://127.0.0.1:8000", help="a running server")
    parser.add_argument("--out", type=Path, default=Path("docs/images/demo.png"), help="the PNG")
    parser.add_argument("--instruction", default=INSTRUCTION, help="what to ask in the chat")
    parser.add_argument("--timeout-s", type=float, default=300, help="how long the answer may take")
    args = parser.parse_args(argv)
    take(args.server_url.rstrip("/"), args.out, args.instruction, args.timeout_s)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
