"""The page's model bundles and the static site: what `mimistack serve` serves under `/models/` and what
`mimistack export-web` writes.

Part of `engine.export`: sits on `web` (`export_web_bundles`, the bundle format of `docs/web.md`) and `_files` (whole
folders published by rename); used by `server.app`, `cli.onnx` and the browser implementation of `parity`.

A site folder is the built page (`server/static`, from `npm run build --prefix web`) plus `models/bundles.json` and
one folder per bundle under `models/`. Any static file server serves it; the page learns from `bundles.json`'s
`"server": false` that there is no API behind it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._files import cache_dir, publish_dir, staging_dir
from ..._version import __version__
from ...errors import MimistackError
from .web import BUNDLES_NAME, bundles_index, export_web_bundles, read_web_manifest

PAGE_DIR = Path(__file__).resolve().parents[2] / "server" / "static"
"""Where the page's build lands (`npm run build --prefix web`), served by `mimistack serve` and copied into sites."""
SITE_MODELS = "models"
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


class SiteError(MimistackError):
    """A site or bundle that cannot be written: the page is not built, the folder is taken, no export."""


@dataclasses.dataclass(frozen=True)
class SiteResult:
    """What `write_site` wrote: the folder, each bundle's manifest, and the models index."""

    out_dir: Path
    bundles: dict[str, dict[str, Any]]
    index: dict[str, Any]


def _lock(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


def cached_bundles(onnx_dir: Path, bundles: Sequence[str]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The `bundles` of an export folder in the cache (`<cache>/web/<weights sha256>/<bundle>`), the missing or
    outdated ones made on first use, together (seconds: no tracing, the export's graphs are rewritten); returns
    {bundle: (folder, manifest)}."""
    from ..onnx_format import read_manifest

    root = cache_dir() / "web" / str(read_manifest(onnx_dir)["weights_sha256"])
    with _lock(root):
        found: dict[str, tuple[Path, dict[str, Any]]] = {}
        for name in bundles:
            folder = root / name
            if (folder / "manifest.json").is_file():
                manifest = read_web_manifest(folder)
                if manifest.get("mimistack_version") == __version__ and manifest.get("bundle") == name:
                    found[name] = (folder, manifest)
        missing = {name: root / name for name in bundles if name not in found}
        if missing:
            root.mkdir(parents=True, exist_ok=True)
            made = export_web_bundles(onnx_dir, dict(missing), force=True)
            found.update({name: (missing[name], manifest) for name, manifest in made.items()})
        return {name: found[name] for name in bundles}


def write_site(
    onnx_dir: Path,
    out_dir: str | os.PathLike[str],
    static_dir: Path = PAGE_DIR,
    *,
    bundles: Sequence[str] = ("exact", "light"),
    default: str = "exact",
    audio: np.ndarray | None = None,
    force: bool = False,
) -> SiteResult:
    """Write a static site into `out_dir`: the built page from `static_dir` and the `bundles` of the export folder
    `onnx_dir` under `models/` (an existing non-empty folder is replaced only with `force`, and only if it is an
    earlier site). `audio`: mono float32 at the model's rate to measure the light bundle on."""
    target = Path(out_dir)
    if not (static_dir / "index.html").is_file() or not (static_dir / "ort").is_dir():
        raise SiteError(
            f"the page is not built ({static_dir} has no index.html and ort/): run "
            "`npm ci --prefix web && npm run build --prefix web` in a source checkout first"
        )
    if not target.parent.is_dir():
        raise SiteError(f"the parent folder of {target} does not exist")
    if target.exists():
        if not target.is_dir():
            raise SiteError(f"{target} exists and is not a folder")
        if any(target.iterdir()):
            if not force:
                raise SiteError(f"{target} exists and is not empty; pass --force to replace it")
            if not (target / SITE_MODELS / BUNDLES_NAME).is_file():
                raise SiteError(f"{target} is not a mimistack site (no {SITE_MODELS}/{BUNDLES_NAME}); choose another")
    if not bundles:
        raise SiteError("no bundle asked for: give exact, light or both")
    with staging_dir(target) as staging:
        shutil.copytree(static_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".gitignore"))
        models = staging / SITE_MODELS
        models.mkdir()
        manifests = export_web_bundles(onnx_dir, {name: models / name for name in bundles}, audio=audio)
        index = bundles_index(manifests, default=default, server=False)
        (models / BUNDLES_NAME).write_text(json.dumps(index, indent=2, allow_nan=False) + "\n")
        (staging / ".nojekyll").write_text("")  # GitHub Pages: serve the folder as it is
        publish_dir(staging, target)
    return SiteResult(out_dir=target, bundles=manifests, index=index)
