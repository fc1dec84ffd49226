"""Putting a trained adapter live on the running server, by name.

Usage:
    with AlpacaClient(url) as server:
        base = served_base(server)                     # {"name", "path", ...} from /info
        release_adapter(server, Path("loop-run/sft"), adapters_dir, "loop-sft")

An `alpaca-train --lora --no-merge` output is copied into the server's adapters folder: its
`adapter/` folder and `alpaca_train.json` (which /info reports), nothing else (not the
checkpoints). The copy is staged as a hidden folder (`.NAME.staging`, which the server skips) and
renamed into place, so the server never sees half a copy; then `POST /admin/adapters/reload`
takes it up at once, and the release waits until `/v1/models` lists the name. A refusal is
reported with the server's reason.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpaca_serve.client.errors import APIRequestError

if TYPE_CHECKING:
    from alpaca_serve.client.api import AlpacaClient

ADAPTER_DIR = "adapter"  # where alpaca-train --lora keeps the adapter in its output
TRAIN_INFO_FILE = "alpaca_train.json"
LIVE_TIMEOUT_S = 180.0


class ServingError(RuntimeError):
    """The server cannot take the adapter; the message (one line) says why."""


def served_base(server: AlpacaClient) -> dict[str, Any]:
    """The server's base model as /info describes it (`name`, `path`, ...)."""
    info = server.info()
    base = next((m for m in info.get("models", []) if m.get("kind") == "base"), None)
    if base is None:
        raise ServingError(f"{server.server_url}/info names no base model")
    return base


def release_adapter(
    server: AlpacaClient, train_dir: Path, adapters_dir: Path, name: str
) -> dict[str, Any]:
    """Copy the adapter of `train_dir` into `adapters_dir/name`, have the server reload, and
    wait until it serves `name`; returns the adapter's /info entry."""
    if not (train_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        raise ServingError(f"no adapter in {train_dir / ADAPTER_DIR}")
    if not adapters_dir.is_dir():
        raise ServingError(f"--adapters-dir: {adapters_dir} is not a folder")
    staging = adapters_dir / f".{name}.staging"
    target = adapters_dir / name
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(train_dir / ADAPTER_DIR, staging / ADAPTER_DIR)
    if (train_dir / TRAIN_INFO_FILE).is_file():
        shutil.copy2(train_dir / TRAIN_INFO_FILE, staging / TRAIN_INFO_FILE)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    try:
        server.reload_adapters()
    except APIRequestError as err:
        if err.status == 404:
            raise ServingError(
                f"the server at {server.server_url} serves no adapters: start it with "
                f"ALPACA_ADAPTERS_DIR={adapters_dir}"
            ) from err
        raise
    return wait_until_served(server, name, target)


def wait_until_served(
    server: AlpacaClient, name: str, folder: Path, timeout_s: float = LIVE_TIMEOUT_S
) -> dict[str, Any]:
    """Poll until `/v1/models` lists `name` (its /info entry), or fail with the server's
    reason for refusing it, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if name in {model["id"] for model in server.models()}:
            info = server.info()
            return next(m for m in info["models"] if m.get("name") == name)
        info = server.info()
        for refused in info.get("refused_adapters", []):
            if refused.get("name") == name:
                raise ServingError(f"the server refused adapter {name}: {refused.get('reason')}")
        if time.monotonic() > deadline:
            raise ServingError(
                f"the server did not list adapter {name} at /v1/models within {timeout_s:.0f} s; "
                f"is {folder.parent} its adapters folder (ALPACA_ADAPTERS_DIR)?"
            )
        time.sleep(1.0)
