"""The Ray Data runner (`RayRunner`): files decoded in CPU tasks, encoded by a pool of actors that each hold one
`Codec`, rows streamed back to the driver's `UnitSink`. Used with `--address` (a cluster) or `--runner ray`.

Sits on `units` (`Work`, `UnitSink`), `workers` (`decode_row`, `Encoder`: what runs on the Ray workers), `shards`
(`EncodedRow`) and `errors` (Ray, imported on first use); used by `pipeline`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from types import ModuleType

from .errors import CorpusError, require_ray
from .shards import EncodedRow
from .units import UnitSink, Work, available_cpus
from .workers import Batch, Encoder, decode_row

ACTOR_INIT_DEATHS = 3
"""Encoder actors that may die while starting (a node lost, a worker killed for memory) before a job fails."""


def start_ray(ray: ModuleType, address: str | None, num_cpus: int | None) -> bool:
    """Connect to `address`, or start a private local Ray (dashboard off, bound to 127.0.0.1); reuse one that the
    caller already started. Returns whether this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        return True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave this machine
    ray.init(
        num_cpus=num_cpus or available_cpus(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    return True


def pool_sizes(ray: ModuleType, device: str, encoders: int | None, threads: int | None) -> tuple[int, dict[str, float]]:
    """How many encoder actors, and the resources each one holds."""
    resources: dict[str, float] = ray.cluster_resources()
    if device.startswith("cuda"):
        gpus = int(resources.get("GPU", 0))
        if gpus == 0:
            raise CorpusError("--device cuda, but the Ray cluster has no GPU")
        return encoders or gpus, {"num_gpus": 1, "num_cpus": 1}
    per_actor = threads or 1
    # On CPU, Ray Data fuses the decode step into the encoder actors (same resources): each actor decodes its own
    # files, no pcm crosses the object store, and one actor per CPU keeps every core busy.
    return encoders or max(1, int(resources.get("CPU", 1)) // per_actor), {"num_cpus": per_actor}


def encoded_rows(batch: Batch) -> list[EncodedRow]:
    """The rows of a batch that came back from the `Encoder` actors."""
    return [
        EncodedRow(
            unit=int(batch["unit"][index]),
            position=int(batch["position"][index]),
            id=str(batch["id"][index]),
            path=str(batch["path"][index]),
            num_samples=int(batch["num_samples"][index]),
            num_frames=int(batch["num_frames"][index]),
            codes=bytes(batch["codes"][index]),
            error=str(batch["error"][index]),
        )
        for index in range(len(batch["id"]))
    ]


@dataclasses.dataclass(frozen=True)
class RayRunner:
    """Ray Data on a cluster (`address`) or a private local Ray of `num_cpus` CPUs; `encoders` actors of `threads`
    threads each on CPU (default: one single-threaded actor per CPU), or one per GPU."""

    address: str | None = None
    num_cpus: int | None = None
    encoders: int | None = None
    threads: int | None = None
    name: str = dataclasses.field(default="ray", init=False)

    def execute(self, work: Work, sink: UnitSink) -> None:
        ray = require_ray()
        with warnings.catch_warnings():
            # Ray Data warns about its own deprecated settings while copying its context: noise for our users.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
            owns_ray = start_ray(ray, self.address, self.num_cpus)
            context = ray.data.DataContext.get_current()
            # Ours shows files, hours and throughput; Ray's bars would fight it. Ray Data fails a job on the first
            # encoder actor that dies while starting (its default budget is 0): a node lost, or a worker killed
            # for memory, while the actors load the model. Tolerate a few (a constructor that always fails, such
            # as other weights on a node, still fails the job after them).
            settings = {"enable_progress_bars": False, "max_consecutive_actor_init_deaths": ACTOR_INIT_DEATHS}
            saved = {name: getattr(context, name) for name in settings if hasattr(context, name)}
            for name in saved:
                setattr(context, name, settings[name])
            try:
                self._run(ray, work, sink)
            finally:
                for name, value in saved.items():
                    setattr(context, name, value)
                if owns_ray:
                    ray.shutdown()

    def _run(self, ray: ModuleType, work: Work, sink: UnitSink) -> None:
        size, resources = pool_sizes(ray, work.options.device, self.encoders, self.threads)
        options = dataclasses.replace(work.options, num_threads=None if work.gpu else int(resources["num_cpus"]))
        rows = work.rows()
        blocks = max(1, min(len(rows), max(size * 4, len(rows) // 16)))
        dataset = (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map(decode_row, num_cpus=1)
            .map_batches(
                Encoder,
                batch_size=256 if work.gpu else 16,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=size),
                fn_constructor_kwargs={
                    "weights": work.weights,
                    "revision": work.revision,
                    "options": options,
                    "batch_seconds": work.batch_seconds_for_device(),
                    "weights_sha256": work.identity.sha256,
                },
                **resources,
            )
        )
        batches = None
        with sink:
            try:
                batches = dataset.iter_batches(batch_size=None, batch_format="numpy")
                for batch in batches:
                    sink.add(encoded_rows(batch))
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
        sink.check_complete(self.name)
