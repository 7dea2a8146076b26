"""The local runner (`LocalRunner`): the whole job in this process, one `Codec` loaded once, the next files decoded
in a background thread while the current ones encode. The default without `--address`: on one machine it does what
a plain `for f in files: codec.encode(load_audio(f))` loop does, plus the overlap, with none of Ray's fixed costs
(a cluster to start, one model load per actor, rows through the object store).

- CPU: the codec runs on every CPU this process may use (`threads`, default all; torch's intra-op pool, like the
  loop), one decode thread feeds it. Files are encoded in plan order, so units finish, and their shards are
  written, in order.
- GPU (`device="cuda"`): one codec on the device, several decode threads.
- `batch_seconds` > 0 packs up to 16 decoded files (256 on GPU) into `Codec.encode_batch` calls by duration,
  exactly as the Ray encoder actors do (`workers.encode_files`); 0 (the CPU default) is one `Codec.encode`-equal
  call per file.
- `encoders` > 1 (CPU): that many codecs, each on `threads` torch threads (default 1), each in its own thread
  decoding and encoding whole files, as Ray's CPU actors do, without Ray: parallel over files instead of inside
  one encode (on few cores, torch's intra-op threads synchronise at every operator). Rows are handed to the sink
  in plan order all the same. Codes are those of `Codec.encode` on `threads` threads.

Torch's process-wide thread count is set for the run and restored afterwards. Sits on `units` (`Work`,
`UnitSink`), `workers` (`decode_file`, `encode_files`, `check_weights`), `shards` (`EncodedRow`) and `codec`; used
by `pipeline`. Needs neither Ray nor anything beyond the `[corpus]` extra's pyarrow.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import queue
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ..codec import Codec
from ..engine.options import EngineOptions, TorchOptions
from .errors import CorpusError
from .shards import EncodedRow
from .units import UnitSink, Work, available_cpus
from .workers import FileRow, Pcm, check_weights, decode_file, encode_files

CPU_WINDOW = 16
"""Files that one batching step may group (as the Ray CPU actors' batches), when batching is on."""
GPU_WINDOW = 256
DecodedRow = tuple[FileRow, Pcm | None, str]
GPU_ENCODERS = (
    "--encoders with the local runner runs several CPU codecs; on a GPU one codec batches files "
    "(--batch-seconds): drop --encoders, or use --runner ray on a machine with several GPUs"
)


@dataclasses.dataclass(frozen=True)
class LocalRunner:
    """One process, one Codec: on `threads` CPU threads (default: every CPU), or on the GPU of `work.options`."""

    threads: int | None = None
    encoders: int = 1
    name: str = dataclasses.field(default="local", init=False)

    def execute(self, work: Work, sink: UnitSink) -> None:
        if self.encoders > 1:
            if work.gpu:
                raise CorpusError(GPU_ENCODERS)
            self._execute_parallel(work, sink)
            return
        cpus = available_cpus()
        options = dataclasses.replace(work.options, num_threads=None if work.gpu else self.threads or cpus)
        budget_seconds = work.batch_seconds_for_device()
        window = 1 if budget_seconds <= 0 else GPU_WINDOW if work.gpu else CPU_WINDOW
        decoders = max(1, min(4, cpus - 1)) if work.gpu else 1
        # The first files decode while the model loads.
        with _torch_threads_restored(options), decoded_ahead(work.rows(), decoders, max(2, window)) as decoded:
            codec = Codec.load(work.ref or work.weights, options, revision=work.revision)
            check_weights(codec, work.identity.sha256)
            budget = round(budget_seconds * codec.sample_rate)
            with sink:
                while chunk := list(itertools.islice(decoded, window)):
                    sink.add(_encode_chunk(codec, chunk, budget))
        sink.check_complete(self.name)

    def _execute_parallel(self, work: Work, sink: UnitSink) -> None:
        options = dataclasses.replace(work.options, num_threads=self.threads or 1)
        budget_seconds = work.batch_seconds_for_device()
        window = 1 if budget_seconds <= 0 else CPU_WINDOW
        rows = work.rows()
        chunks = [rows[start : start + window] for start in range(0, len(rows), window)]
        with _torch_threads_restored(options):
            codecs: queue.SimpleQueue[Codec] = queue.SimpleQueue()
            for _ in range(self.encoders):
                codec = Codec.load(work.ref or work.weights, options, revision=work.revision)
                check_weights(codec, work.identity.sha256)
                codecs.put(codec)
            budget = round(budget_seconds * work.identity.sample_rate)

            def run(chunk: list[FileRow]) -> list[EncodedRow]:
                decoded = [(row, *decode_file(row["path"], row["sample_rate"])) for row in chunk]
                codec = codecs.get()
                try:
                    return _encode_chunk(codec, decoded, budget)
                finally:
                    codecs.put(codec)

            pool = ThreadPoolExecutor(max_workers=self.encoders, thread_name_prefix="mimistack-encode")
            pending: collections.deque[Future[list[EncodedRow]]] = collections.deque()
            source = iter(chunks)
            try:
                with sink:
                    pending.extend(pool.submit(run, c) for c in itertools.islice(source, 2 * self.encoders))
                    while pending:
                        done = pending.popleft().result()
                        following = next(source, None)
                        if following is not None:
                            pending.append(pool.submit(run, following))
                        sink.add(done)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        sink.check_complete(self.name)


def _encode_chunk(codec: Codec, chunk: Sequence[DecodedRow], budget: int) -> list[EncodedRow]:
    errors = [error for _, _, error in chunk]
    grids = encode_files(codec, [pcm for _, pcm, _ in chunk], errors, budget)
    out = []
    for (row, pcm, _), grid, error in zip(chunk, grids, errors):
        out.append(
            EncodedRow(
                unit=row["unit"],
                position=row["position"],
                id=row["id"],
                path=row["path"],
                num_samples=0 if pcm is None else int(pcm.shape[0]),
                num_frames=0 if grid is None else grid.num_frames,
                codes=b"" if grid is None else grid.codes.astype("<u2").tobytes(),
                error=error,
            )
        )
    return out


@contextlib.contextmanager
def decoded_ahead(rows: Sequence[FileRow], threads: int, ahead: int) -> Iterator[Iterator[DecodedRow]]:
    """The rows decoded in `threads` background threads, yielded in order, at most `ahead` files decoded or being
    decoded beyond the one handed out (bounded memory). Leaving the block stops the threads (an exception in the
    consumer included): queued files are dropped, the one being decoded is waited for."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mimistack-decode")

    def decode(row: FileRow) -> DecodedRow:
        pcm, error = decode_file(row["path"], row["sample_rate"])
        return row, pcm, error

    source = iter(rows)
    queued: collections.deque[Future[DecodedRow]] = collections.deque()

    def ordered() -> Iterator[DecodedRow]:
        while queued:
            future = queued.popleft()
            following = next(source, None)
            if following is not None:
                queued.append(pool.submit(decode, following))
            yield future.result()

    try:
        queued.extend(pool.submit(decode, row) for row in itertools.islice(source, ahead))  # decoding starts now
        yield ordered()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _torch_threads_restored(options: EngineOptions) -> Iterator[None]:
    """Loading the torch engine with `num_threads` sets torch's process-wide thread count: put it back after."""
    if not isinstance(options, TorchOptions) or options.num_threads is None:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
