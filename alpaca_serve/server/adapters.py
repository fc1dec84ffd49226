"""LoRA adapters served as models beside the base: found, checked, loaded live, retired.

Usage (the app does this; see server/app.py):
    registry = AdapterRegistry(settings, base_name="tiny-llama", base_dir=Path("tiny-llama"))
    await registry.refresh(engine, wait_until_stable=False)  # at start, POST /admin/adapters/reload
    await watch_adapters(registry, lambda: engine)           # a task: rescans every adapters_poll_s
    adapter = registry.resolve("my-adapter")                 # for a request; None for the base

Where adapters come from: every sub-folder of `ALPACA_ADAPTERS_DIR` holding a PEFT adapter
(`adapter_config.json` + `adapter_model.safetensors`, or `alpaca-train --lora --no-merge` output,
whose `adapter/` folder holds them) is a model named after the sub-folder; `ALPACA_ADAPTERS`
(`name=path,...`) names more. Hidden sub-folders (`.name`) are skipped, so a copy can be staged
as `.name` and renamed into place.

The design, in the order things happen:
- Scan: the watcher lists the candidates every `adapters_poll_s` seconds (2 s) and fingerprints
  each one's files (names, sizes, mtimes). It takes up a new or changed folder only when two scans
  in a row saw the same fingerprint, so a folder still being copied is not read half-written.
  Start-up and `POST /admin/adapters/reload` take what is there at once (whoever calls reload says
  the copy is done); the checks below still refuse a truncated file.
- Check, before vLLM sees anything (`inspect_adapter`): vLLM's worker raises on a weight it does
  not support when a request first uses it, and that kills the engine core (measured: an adapter
  holding `lm_head` rows killed it). So: a readable config of a plain LoRA (no DoRA, no bias, no
  `modules_to_save`), rank at most `ALPACA_MAX_LORA_RANK`, a base model that is the served one,
  and a complete safetensors file whose tensors are only `lora_A`/`lora_B` of the projections
  vLLM adapts in a LLaMA-family model, shaped for the served base (layers, widths, vocabulary).
- Load: the engine loads the adapter (`add_lora`, which also proves vLLM accepts it; a failure
  there is returned, not fatal). From then on it is offered under its name.
- Refusal: a bad adapter is logged once (folder and reason), listed in /info's
  `refused_adapters`, and a request for it is a 422 `adapter_refused`; everything else is served
  as before. A refused folder is looked at again when its files change.
- Removal: a folder that disappears stops being offered at once (requests for it are 404);
  requests already running on it finish; the engine drops its weights at the first scan after
  the last one ends. A folder whose files change is removed and loaded again, under a new id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_serve.core.provenance import TRAIN_INFO_FILE, made_at, read_provenance
from alpaca_serve.server.engine import AdapterWeights, Engine
from alpaca_serve.server.settings import ServerSettings

log = logging.getLogger("alpaca.adapters")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAIN_ADAPTER_DIR = "adapter"  # where alpaca-train --lora keeps the adapter in its output
# Projections vLLM puts LoRA on in a LLaMA-family model (it packs q/k/v and gate/up itself).
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
LORA_TENSOR = re.compile(
    r"^base_model\.model\.model\.layers\.(?P<layer>\d+)\.(?P<block>self_attn|mlp)\."
    r"(?P<module>\w+)\.lora_(?P<half>[AB])\.weight$"
)
MERGE_HINT = (
    "vLLM serves only lora_A/lora_B of the projections: serve this adapter merged "
    "(alpaca-train without --no-merge)"
)

# (relative path, size, mtime in ns) of every file of a candidate: what "unchanged" means.
Fingerprint = tuple[tuple[str, int, int], ...]


class AdapterRefusedError(ValueError):
    """The adapter cannot be served; the message says why, in one line."""


@dataclass(frozen=True)
class BaseModel:
    """What an adapter must fit: the served base's name, folder and shapes (from config.json)."""

    name: str
    folder: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, name: str, folder: Path | None) -> BaseModel:
        config: dict[str, Any] = {}
        if folder is not None and (Path(folder) / "config.json").is_file():
            config = json.loads((Path(folder) / "config.json").read_text())
        return cls(name, Path(folder) if folder is not None else None, config)

    def projection_shape(self, module: str) -> tuple[int, int] | None:
        """(in features, out features) of a projection; None when the config does not say."""
        c = self.config
        hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
        if not hidden or not heads:
            return None
        head_dim = c.get("head_dim") or hidden // heads
        kv = (c.get("num_key_value_heads") or heads) * head_dim
        inner = c.get("intermediate_size")
        return {
            "q_proj": (hidden, heads * head_dim),
            "k_proj": (hidden, kv),
            "v_proj": (hidden, kv),
            "o_proj": (heads * head_dim, hidden),
            "gate_proj": (hidden, inner),
            "up_proj": (hidden, inner),
            "down_proj": (inner, hidden),
        }.get(module)

    def is_named_by(self, claimed: str) -> bool:
        """Whether an adapter's `base_model_name_or_path` names this base: the same folder, or
        the same last path component (a hub id `org/name` names a local folder `name`)."""
        if self.folder is not None:
            try:
                if Path(claimed).resolve() == self.folder.resolve():
                    return True
            except OSError:
                pass
        names = {self.name}
        if self.folder is not None:
            names.add(self.folder.name)
        return Path(claimed.rstrip("/")).name in names


@dataclass(frozen=True)
class AdapterFiles:
    """What `inspect_adapter` found in an adapter that passed every check."""

    weights_dir: Path  # the folder holding adapter_config.json, which the engine loads
    rank: int
    alpha: float | None
    target_modules: list[str]
    base_model: str | None


def inspect_adapter(folder: Path, base: BaseModel, max_rank: int) -> AdapterFiles:
    """Check an adapter folder against the served base; AdapterRefusedError says what is wrong.

    Whatever goes wrong while checking is a refusal: a file shaped in a way no check foresaw
    must not stop the server at start-up, nor the watcher's scans."""
    try:
        return _inspect(folder, base, max_rank)
    except AdapterRefusedError:
        raise
    except Exception as err:
        raise AdapterRefusedError(
            f"its files could not be checked ({type(err).__name__}: {err})"
        ) from err


def _inspect(folder: Path, base: BaseModel, max_rank: int) -> AdapterFiles:
    weights_dir = find_weights_dir(folder)
    if weights_dir is None:
        raise AdapterRefusedError(
            f"no {ADAPTER_CONFIG} in it or in its {TRAIN_ADAPTER_DIR}/ folder (not a PEFT adapter)"
        )
    config = _read_adapter_config(weights_dir / ADAPTER_CONFIG)
    rank = _check_config(config, base, max_rank)
    weights = weights_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        others = ", ".join(sorted(p.name for p in weights_dir.glob("adapter_model.*")))
        found = f" (found {others}: only safetensors weights are served)" if others else ""
        raise AdapterRefusedError(f"no {ADAPTER_WEIGHTS}{found}")
    _check_tensors(read_safetensors_header(weights), base, max_rank)
    targets = config.get("target_modules") or []
    return AdapterFiles(
        weights_dir=weights_dir,
        rank=rank,
        alpha=config.get("lora_alpha"),
        target_modules=sorted(targets) if isinstance(targets, list) else [str(targets)],
        base_model=config.get("base_model_name_or_path"),
    )


def find_weights_dir(folder: Path) -> Path | None:
    """The folder itself when it holds adapter_config.json, else its alpaca-train `adapter/`."""
    for candidate in (folder, folder / TRAIN_ADAPTER_DIR):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    return None


def _read_adapter_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterRefusedError(f"{ADAPTER_CONFIG} cannot be read: {err}") from err
    if not isinstance(config, dict):
        raise AdapterRefusedError(f"{ADAPTER_CONFIG} is not a JSON object")
    return config


def _check_config(config: dict[str, Any], base: BaseModel, max_rank: int) -> int:
    """The checks the adapter's config allows; returns its largest rank."""
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise AdapterRefusedError(f"peft_type is {peft_type!r}; only LoRA adapters are served")
    if config.get("use_dora"):
        raise AdapterRefusedError("it is a DoRA adapter (use_dora), which vLLM does not serve")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise AdapterRefusedError(f"it trains biases (bias={config.get('bias')!r}); vLLM has none")
    saved = config.get("modules_to_save") or []
    if saved:
        raise AdapterRefusedError(
            f"it saves whole modules (modules_to_save {sorted(saved)}), such as embeddings "
            f"grown by new tokens; {MERGE_HINT}"
        )
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        raise AdapterRefusedError(
            f"its rank_pattern is a {type(pattern).__name__}, not an object of module -> rank"
        )
    ranks = [config.get("r"), *pattern.values()]
    if not all(isinstance(r, int) and r >= 1 for r in ranks):
        raise AdapterRefusedError(f"its rank r={config.get('r')!r} is not a positive integer")
    if max(ranks) > max_rank:
        raise AdapterRefusedError(
            f"its rank {max(ranks)} is above this server's largest, {max_rank} "
            "(ALPACA_MAX_LORA_RANK)"
        )
    claimed = config.get("base_model_name_or_path")
    if isinstance(claimed, str) and claimed and not base.is_named_by(claimed):
        raise AdapterRefusedError(
            f"it was trained on {claimed!r}, not on the served base {base.name!r}"
        )
    return max(ranks)


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The tensors (name -> {dtype, shape, data_offsets}) of a safetensors file, after checking
    that the file is complete; reads the header only, not the weights."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > min(size - 8, 100_000_000):
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            header = json.loads(file.read(length))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
        raise AdapterRefusedError(f"{path.name} is not a readable safetensors file: {err}") from err
    if not isinstance(header, dict):
        raise AdapterRefusedError(f"{path.name} is not a readable safetensors file")
    header.pop("__metadata__", None)
    for name, tensor in header.items():
        if not isinstance(tensor, dict) or not isinstance(tensor.get("data_offsets", []), list):
            raise AdapterRefusedError(
                f"{path.name} is not a readable safetensors file: its entry for {name[:80]!r} "
                "is not a tensor description"
            )
    end = max((t.get("data_offsets", [0, 0])[1] for t in header.values()), default=0)
    if 8 + length + end != size:
        raise AdapterRefusedError(
            f"{path.name} is {size} bytes but its header describes {8 + length + end}: "
            "truncated or still being copied"
        )
    return header


def _check_tensors(header: dict[str, Any], base: BaseModel, max_rank: int) -> None:
    """Only lora_A/lora_B of supported projections, each pair shaped for the base."""
    if not header:
        raise AdapterRefusedError(f"{ADAPTER_WEIGHTS} holds no tensors")
    layers = base.config.get("num_hidden_layers")
    vocab = base.config.get("vocab_size")
    pairs: dict[tuple[int, str], dict[str, list[int]]] = {}
    for name, tensor in header.items():
        shape = list(tensor.get("shape") or [])
        if "lm_head" in name or "embed_tokens" in name:
            rows = f" ({shape[0]} rows; the base's vocabulary is {vocab})" if shape else ""
            raise AdapterRefusedError(
                f"it holds embedding weights {name}{rows}, as training that adds tokens "
                f"(a [PAD] row) saves; {MERGE_HINT}"
            )
        match = LORA_TENSOR.match(name)
        supported = ATTENTION_MODULES if match and match["block"] == "self_attn" else MLP_MODULES
        if match is None or match["module"] not in supported:
            raise AdapterRefusedError(
                f"tensor {name} is not a lora_A/lora_B weight of a projection vLLM adapts "
                f"({', '.join(ATTENTION_MODULES + MLP_MODULES)})"
            )
        layer = int(match["layer"])
        if layers is not None and layer >= layers:
            raise AdapterRefusedError(
                f"tensor {name} is for layer {layer}; the served base has {layers} layers"
            )
        if len(shape) != 2:
            raise AdapterRefusedError(f"tensor {name} has shape {shape}, not a matrix")
        pairs.setdefault((layer, match["module"]), {})[match["half"]] = shape
    for (layer, module), halves in sorted(pairs.items()):
        where = f"layer {layer} {module}"
        if set(halves) != {"A", "B"}:
            raise AdapterRefusedError(f"{where} has lora_{''.join(halves)} without its pair")
        (rank, in_features), (out_features, rank_b) = halves["A"], halves["B"]
        if rank != rank_b or rank > max_rank:
            raise AdapterRefusedError(
                f"{where}: lora_A is {halves['A']} and lora_B {halves['B']}, not a rank-r pair "
                f"of rank at most {max_rank}"
            )
        expected = base.projection_shape(module)
        if (
            expected is not None
            and None not in expected
            and expected
            != (
                in_features,
                out_features,
            )
        ):
            raise AdapterRefusedError(
                f"{where} maps {in_features} -> {out_features} features; the served base's "
                f"maps {expected[0]} -> {expected[1]} (trained on another model?)"
            )


def fingerprint(folder: Path) -> Fingerprint | None:
    """Every file under `folder` (training checkpoints left out) as (path, size, mtime); None
    when the folder is gone."""
    entries = []
    try:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d != "checkpoints")
            for name in sorted(files):
                path = Path(root) / name
                stat = path.stat()
                entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    except FileNotFoundError:
        return None
    if not Path(folder).is_dir():
        return None
    return tuple(entries)


@dataclass
class Adapter:
    """An adapter being served."""

    name: str
    folder: Path
    files: AdapterFiles
    weights: AdapterWeights  # what the engine knows it by
    fingerprint: Fingerprint
    loaded_at: str
    running: int = 0  # requests generating with it now

    def describe(self, base: BaseModel) -> dict[str, Any]:
        """Its entry in /info's model list."""
        provenance = read_provenance(_marker_dir(self.folder, self.files.weights_dir))
        return {
            "name": self.name,
            "kind": "adapter",
            "base": base.name,
            "path": str(self.folder),
            "rank": self.files.rank,
            "lora_alpha": self.files.alpha,
            "target_modules": self.files.target_modules,
            "trained_on": self.files.base_model,
            "loaded_at": self.loaded_at,
            "prompt_template": provenance.prompt_template,
            "provenance": provenance.as_json(),
            "training_arguments": _training_arguments(self.folder, self.files.weights_dir),
        }


@dataclass
class RefusedAdapter:
    name: str
    folder: Path
    reason: str
    fingerprint: Fingerprint | None
    refused_at: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.folder),
            "reason": self.reason,
            "refused_at": self.refused_at,
        }


def _marker_dir(folder: Path, weights_dir: Path) -> Path:
    """Where alpaca_train.json is: the given folder, or the parent of alpaca-train's adapter/."""
    for candidate in (weights_dir, folder, weights_dir.parent):
        if (candidate / TRAIN_INFO_FILE).is_file():
            return candidate
    return weights_dir


def _training_arguments(folder: Path, weights_dir: Path) -> dict[str, Any] | None:
    path = _marker_dir(folder, weights_dir) / TRAIN_INFO_FILE
    try:
        arguments = json.loads(path.read_text(encoding="utf-8")).get("arguments")
    except (OSError, ValueError, AttributeError):
        return None
    return arguments if isinstance(arguments, dict) else None


class AdapterRegistry:
    """The adapters this server offers, those it refused, and those it is retiring."""

    def __init__(self, settings: ServerSettings, base_name: str, base_dir: Path | None):
        self.settings = settings
        self.base = BaseModel.read(base_name, base_dir)
        self.served: dict[str, Adapter] = {}
        self.refused: dict[str, RefusedAdapter] = {}
        self._retiring: list[Adapter] = []
        self._seen: dict[str, Fingerprint | None] = {}  # the previous scan's fingerprints
        self._next_id = 1
        self._lock = asyncio.Lock()

    def resolve(self, name: str) -> Adapter:
        """The served adapter `name`, counted as running until `release`; KeyError if none."""
        adapter = self.served[name]
        adapter.running += 1
        return adapter

    def release(self, adapter: Adapter) -> None:
        adapter.running -= 1

    def candidates(self) -> dict[str, Path | str]:
        """Name -> folder of every configured adapter, or name -> why the name is unusable."""
        found: dict[str, Path | str] = dict(self.settings.adapter_paths)
        folder = self.settings.adapters_dir
        if folder is not None and folder.is_dir():
            for child in sorted(folder.iterdir()):
                if child.name.startswith(".") or not child.is_dir():
                    continue
                if child.name in found:
                    log.debug("adapter folder %s: name taken by ALPACA_ADAPTERS", child)
                    continue
                found[child.name] = child
        if self.base.name in found:
            found[self.base.name] = "it has the base model's name; rename the folder"
        return found

    async def refresh(self, engine: Engine, wait_until_stable: bool = True) -> None:
        """Rescan: take up new and changed adapters, retire removed ones.

        With `wait_until_stable`, a new or changed folder is taken up only when the previous scan
        saw the same files (the watcher); without, at once (start-up, the reload route).
        """
        async with self._lock:
            found = await asyncio.to_thread(self._scan)
            for name in list(self.served):
                adapter = self.served[name]
                if found.get(name, (None, None))[1] != adapter.fingerprint:
                    self._retire(adapter, "removed" if name not in found else "changed")
            for name in list(self.refused):
                if name not in found:
                    del self.refused[name]
            for name, (folder, print_) in found.items():
                if name in self.served:
                    continue
                refused = self.refused.get(name)
                if refused is not None and refused.fingerprint == print_:
                    continue
                if wait_until_stable and self._seen.get(name) != print_:
                    continue  # new or still changing: look again at the next scan
                await self._take_up(engine, name, folder, print_)
            self._seen = {name: print_ for name, (_, print_) in found.items()}
            await self._drop_retired(engine)

    def _scan(self) -> dict[str, tuple[Path | str, Fingerprint | None]]:
        scanned = {}
        for name, folder in self.candidates().items():
            print_ = fingerprint(folder) if isinstance(folder, Path) else None
            if isinstance(folder, Path) and print_ is None:
                print_ = ()  # a path that does not exist: refused, looked at again if it appears
            scanned[name] = (folder, print_)
        return scanned

    async def _take_up(
        self, engine: Engine, name: str, folder: Path | str, print_: Fingerprint | None
    ) -> None:
        try:
            if isinstance(folder, str):
                raise AdapterRefusedError(folder)
            if not folder.is_dir():
                raise AdapterRefusedError("the folder does not exist")
            files = await asyncio.to_thread(
                inspect_adapter, folder, self.base, self.settings.max_lora_rank
            )
            weights = AdapterWeights(name=name, id=self._next_id, path=str(files.weights_dir))
            self._next_id += 1
            try:
                await engine.add_adapter(weights)
            except Exception as err:  # the engine's own check; it stays up
                raise AdapterRefusedError(f"the engine refused it: {err}") from err
        except AdapterRefusedError as err:
            path = folder if isinstance(folder, Path) else Path(name)
            self.refused[name] = RefusedAdapter(name, path, str(err), print_, made_at())
            log.warning("adapter %s refused (%s): %s", name, path, err)
            return
        self.refused.pop(name, None)
        assert print_ is not None  # a folder's: _scan makes a missing one ()
        self.served[name] = Adapter(name, folder, files, weights, print_, made_at())
        log.info(
            "adapter %s served from %s (rank %d, %s)",
            name,
            folder,
            files.rank,
            ", ".join(files.target_modules) or "no target modules named",
        )

    def _retire(self, adapter: Adapter, why: str) -> None:
        del self.served[adapter.name]
        self._retiring.append(adapter)
        log.info(
            "adapter %s %s: no longer offered (%d request(s) still running on it)",
            adapter.name,
            why,
            adapter.running,
        )

    async def _drop_retired(self, engine: Engine) -> None:
        """Free the engine's copy of retired adapters no request runs on any more."""
        for adapter in [a for a in self._retiring if a.running <= 0]:
            self._retiring.remove(adapter)
            try:
                await engine.remove_adapter(adapter.weights)
            except Exception as err:
                log.warning("adapter %s: the engine could not drop it: %s", adapter.name, err)

    def describe(self) -> dict[str, Any]:
        """The adapters as /info lists them."""
        return {
            "adapters": [a.describe(self.base) for a in self.served.values()],
            "refused_adapters": [r.describe() for r in self.refused.values()],
        }


async def watch_adapters(
    registry: AdapterRegistry, engine: Callable[[], Engine | None], is_ready: Callable[[], bool]
) -> None:
    """Rescan every `adapters_poll_s` seconds once the engine is ready (runs until cancelled)."""
    while True:
        await asyncio.sleep(registry.settings.adapters_poll_s)
        current = engine()
        if current is None or not is_ready() or not current.alive:
            continue
        try:
            await registry.refresh(current)
        except Exception:  # a scan must never stop the watcher, nor the server
            log.exception("adapter scan failed")
