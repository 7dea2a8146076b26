"""Audio captured in real time for the sender: an array or a file paced to real time, or the microphone.

Sits on `audio` (`iter_audio`) and `protocol` (`StreamError`); used by `sender` (through the `AudioSource`
protocol), `cli.stream` (`FileSource`, `MicSource`), the tests and `bench/bench_stream.py` (`ArraySource`). The
microphone needs `sounddevice` and PortAudio, imported only when one is opened.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np
import soxr
from numpy.typing import ArrayLike, NDArray

from ..audio import iter_audio
from .protocol import StreamError

logger = logging.getLogger(__name__)


class AudioSource(Protocol):
    """Audio captured in real time: `start()` returns the wall-clock time of the first sample; `chunks()` then
    yields float32 pcm `[n]` at 24 kHz as it is captured (a file is paced to real time)."""

    num_samples: int | None

    def start(self) -> float: ...

    def chunks(self) -> AsyncIterator[NDArray[np.float32]]: ...


class _InputStream(Protocol):
    """The part of `sounddevice.InputStream` a microphone source uses."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class ArraySource:
    """pcm float32 `[N]` played out in real time, one frame every `frame_size / sample_rate` seconds."""

    def __init__(self, pcm: ArrayLike, *, sample_rate: int = 24_000, frame_size: int = 1920) -> None:
        self.pcm: NDArray[np.float32] = np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1)
        if self.pcm.size == 0:
            raise ValueError("the source holds no samples")
        self.sample_rate, self.frame_size = sample_rate, frame_size
        self.num_samples: int | None = self.pcm.size
        self._start = 0.0

    def start(self) -> float:
        self._start = time.time()
        return self._start

    async def chunks(self) -> AsyncIterator[NDArray[np.float32]]:
        for begin in range(0, self.pcm.size, self.frame_size):
            chunk = self.pcm[begin : begin + self.frame_size]
            await _sleep_until(self._start + (begin + chunk.size) / self.sample_rate)
            yield chunk


class FileSource:
    """An audio file (any format `mimistack.audio` reads), resampled to 24 kHz and paced to real time."""

    def __init__(self, path: str | Path, *, sample_rate: int = 24_000, frame_size: int = 1920) -> None:
        self.path = Path(path)
        self.sample_rate, self.frame_size = sample_rate, frame_size
        self._chunks = iter_audio(self.path, chunk_seconds=frame_size / sample_rate, sample_rate=sample_rate)
        self.num_samples: int | None = None
        self._start = 0.0

    def start(self) -> float:
        self._start = time.time()
        return self._start

    async def chunks(self) -> AsyncIterator[NDArray[np.float32]]:
        captured = 0
        for chunk in self._chunks:
            captured += chunk.size
            await _sleep_until(self._start + captured / self.sample_rate)
            yield chunk


class MicSource:
    """The default input device through `sounddevice` (PortAudio), resampled to 24 kHz, for `seconds` or until
    `stop()`."""

    def __init__(
        self,
        *,
        seconds: float | None = None,
        sample_rate: int = 24_000,
        frame_size: int = 1920,
        device: str | int | None = None,
    ) -> None:
        try:
            import sounddevice  # type: ignore[import-untyped]
        except (ImportError, OSError) as error:  # OSError: the package is there but PortAudio is not
            raise StreamError(
                f"--mic needs the sounddevice package and the PortAudio library "
                f"(pip install sounddevice; apt-get install libportaudio2): {error}"
            ) from None
        self._sounddevice: ModuleType = sounddevice
        self.seconds, self.sample_rate, self.frame_size, self.device = seconds, sample_rate, frame_size, device
        self.num_samples: int | None = None
        self._queue: asyncio.Queue[NDArray[np.float32]] = asyncio.Queue()
        self._stream: _InputStream | None = None
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        self._stopped.set()

    def start(self) -> float:
        loop = asyncio.get_running_loop()
        info = self._sounddevice.query_devices(self.device, "input")
        device_rate = int(info["default_samplerate"])
        resampler = soxr.ResampleStream(device_rate, self.sample_rate, 1, dtype="float32")

        def callback(data: NDArray[np.float32], frames: int, when: object, status: object) -> None:
            if status:
                logger.warning("microphone: %s", status)
            loop.call_soon_threadsafe(self._queue.put_nowait, resampler.resample_chunk(data[:, 0].copy()))

        self._stream = self._sounddevice.InputStream(
            samplerate=device_rate,
            channels=1,
            dtype="float32",
            device=self.device,
            callback=callback,
            blocksize=round(device_rate * self.frame_size / self.sample_rate),
        )
        self._stream.start()
        return time.time()

    async def chunks(self) -> AsyncIterator[NDArray[np.float32]]:
        captured = 0
        limit = math.inf if self.seconds is None else round(self.seconds * self.sample_rate)
        stop = asyncio.create_task(self._stopped.wait())
        try:
            while captured < limit and not self._stopped.is_set():
                get = asyncio.create_task(self._queue.get())
                done, _ = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    break
                chunk = get.result()
                if captured + chunk.size > limit:
                    chunk = chunk[: int(limit - captured)]
                captured += chunk.size
                if chunk.size:
                    yield chunk
        finally:
            stop.cancel()
            if self._stream is not None:
                self._stream.stop()
                self._stream.close()


async def _sleep_until(wall_time: float) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
