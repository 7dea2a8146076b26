/**
 * `window.mimistack.bench(options)`: the in-browser engine's speed, as bench/bench_web.py reports it. Loaded by
 * `app.ts` only for `?bench` pages, as its own chunk.
 *
 * Encodes and decodes `seconds` of audio (the open take's, tiled, or a synthetic signal) through the graphs the
 * page uses for files, `repeats` times after a warm-up (medians), then through the streaming decoder frame by
 * frame (live mode while it keeps up) and 2 and 4 frames per call (live mode catching up).
 */

import { readyEngine } from '../browser-engine';
import type { ModelDescription } from '../engine/messages';
import { LevelSelection } from '../levels';
import { store } from '../state';

export interface BenchOptions {
  seconds?: number;
  repeats?: number;
  levels?: string;
  stream?: boolean;
  /** Frames per streaming-decoder call to time besides 1 (default 2 and 4). */
  framesPerStep?: number[];
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);

export async function bench(options: BenchOptions = {}): Promise<Record<string, unknown>> {
  const engine = await readyEngine();
  const model = store.get().model as ModelDescription;
  const seconds = options.seconds ?? 10;
  const repeats = options.repeats ?? 3;
  const samples = Math.round(seconds * model.sampleRate);
  const source = store.get().take?.original;
  const pcm = new Float32Array(samples);
  for (let i = 0; i < samples; i++) {
    pcm[i] = source && source.length ? source[i % source.length] : 0.3 * Math.sin((2 * Math.PI * 180 * i) / model.sampleRate) * Math.sin(i / 4000);
  }
  const selection = options.levels ? LevelSelection.parse(options.levels, model.numLevels) : LevelSelection.all(model.numLevels);
  let grid = (await engine.encode(pcm)).grid; // warm-up
  await engine.decode(grid, selection);
  const encodeMs: number[] = [];
  const decodeMs: number[] = [];
  for (let r = 0; r < repeats; r++) {
    let started = performance.now();
    grid = (await engine.encode(pcm)).grid;
    encodeMs.push(performance.now() - started);
    started = performance.now();
    await engine.decode(grid, selection);
    decodeMs.push(performance.now() - started);
  }
  const result: Record<string, unknown> = {
    seconds, repeats, levels: selection.toString(), executionProvider: model.executionProvider, numThreads: model.numThreads,
    bundle: model.bundle,
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    encodeMs: median(encodeMs), decodeMs: median(decodeMs),
    encodeRealtime: seconds / (median(encodeMs) / 1000), decodeRealtime: seconds / (median(decodeMs) / 1000),
  };
  if (model.streaming && options.stream !== false) {
    const stream = await engine.streamDecode(grid, selection, 1);
    result.streamFrameMsMedian = median(stream.stepMilliseconds);
    result.streamDecodeRealtime = seconds / (sum(stream.stepMilliseconds) / 1000);
    for (const framesPerStep of options.framesPerStep ?? [2, 4]) {
      const chunked = await engine.streamDecode(grid, selection, framesPerStep);
      result[`stream${framesPerStep}StepMsMedian`] = median(chunked.stepMilliseconds);
      result[`stream${framesPerStep}DecodeRealtime`] = seconds / (sum(chunked.stepMilliseconds) / 1000);
    }
  }
  return result;
}
