/**
 * `window.mimistack`: the page's state for the end-to-end tests (tests/e2e/drive.mjs, tests/test_web_e2e.py) and
 * the benchmark (bench/bench_web.py). Loaded by `app.ts` only for `?test` or `?bench` pages, as its own chunk.
 */

import { readyEngine } from '../browser-engine';
import { base64ToBytes, bytesToBase64, type TokenGrid } from '../grid';
import { LevelSelection } from '../levels';
import { progressiveResults } from '../progressive/results';
import { store } from '../state';
import { setSelection } from '../ui/levels';
import type { bench as benchFunction } from './bench';

function float32Base64(values: Float32Array | null | undefined): string | null {
  return values ? bytesToBase64(new Uint8Array(values.buffer, values.byteOffset, values.byteLength)) : null;
}

function makeHooks(bench?: typeof benchFunction) {
  return {
    /** A JSON summary: what is open, whether the page is idle with the current selection decoded, the engine. */
    state: () => {
      const state = store.get();
      const take = state.take;
      return {
        phase: state.phase,
        take: take?.name ?? null,
        idle: state.working === 0 && !!take?.decodedSelection && take.decodedSelection.equals(state.selection),
        mode: state.mode,
        selection: state.selection.toString(),
        decodedSelection: take?.decodedSelection?.toString() ?? null,
        numFrames: take?.grid?.numFrames ?? null,
        numSamples: take?.grid?.numSamples ?? null,
        error: state.error,
        engineError: state.engineError,
        executionProvider: state.model?.executionProvider ?? null,
        numThreads: state.model?.numThreads ?? null,
        streaming: state.model?.streaming ?? false,
        crossOriginIsolated: globalThis.crossOriginIsolated === true,
        live: state.captureKind === 'live' ? { ...state.live.stats, columns: state.live.columns.length } : null,
        capture: state.capture ? { kind: state.captureKind, seconds: state.capture.seconds } : null,
      };
    },
    /** The take's arrays as base64 little-endian bytes: codes (uint16), decoded and original (float32). */
    dump: () => {
      const take = store.get().take;
      const codes = take?.grid?.codes;
      return {
        codes: codes ? bytesToBase64(new Uint8Array(codes.buffer, codes.byteOffset, codes.byteLength)) : null,
        decoded: float32Base64(take?.decoded),
        original: float32Base64(take?.original),
      };
    },
    setSelection: (text: string) => setSelection(LevelSelection.parse(text, store.get().selection.numLevels), true),
    /** The progressive panel's last reception and transmission (null before its first use); with `arrays`, the
     * received tokens (uint16 frame-major) and pcm (float32), and the codes sent (uint16 level-major), as base64. */
    progressive: (arrays = false) => progressiveResults.snapshot?.(arrays) ?? null,
    /** The in-browser engine on arrays, for `mimistack parity`'s browser implementation: float32 pcm in, uint16
     * level-major codes out; codes of the first `levels` levels in, float32 pcm out (base64 little-endian). */
    encodePcm: async (pcm: string) => {
      const bytes = base64ToBytes(pcm);
      const { grid } = await (await readyEngine()).encode(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length >> 2));
      return { codes: bytesToBase64(new Uint8Array(grid.codes.buffer, grid.codes.byteOffset, grid.codes.byteLength)), numFrames: grid.numFrames };
    },
    decodeCodes: async (codes: string, numFrames: number, levels: number) => {
      const engine = await readyEngine();
      const model = engine.description!;
      const given = new Uint16Array(base64ToBytes(codes).slice().buffer);
      const grid: TokenGrid = {
        codes: new Uint16Array(model.numLevels * numFrames), numLevels: model.numLevels, numFrames,
        numSamples: numFrames * model.frameSize, sampleRate: model.sampleRate, frameRate: model.frameRate,
        codebookSize: model.codebookSize, weightsSha256: model.weightsSha256, levelsPresent: [...Array(levels).keys()],
      };
      grid.codes.set(given.subarray(0, levels * numFrames));
      const selection = LevelSelection.parse(levels === 1 ? '0' : `0-${levels - 1}`, model.numLevels);
      return float32Base64((await engine.decode(grid, selection)).pcm);
    },
    /** As `encodePcm` and `decodeCodes`, but the whole input in one call of the frame streams (as a live stream
     * that caught up does): the worker splits a call longer than the bundle's `max_frames_per_call`. */
    encodePcmOneCall: async (pcm: string) => {
      const engine = await readyEngine();
      const frameSize = engine.description!.frameSize;
      const bytes = base64ToBytes(pcm);
      const given = new Float32Array(bytes.slice().buffer);
      const padded = new Float32Array(Math.ceil(given.length / frameSize) * frameSize);
      padded.set(given);
      await engine.frameStreamReset('encoder');
      const { codes, numFrames } = await engine.frameStreamEncode(padded);
      return { codes: bytesToBase64(new Uint8Array(codes.buffer, codes.byteOffset, codes.byteLength)), numFrames };
    },
    decodeCodesOneCall: async (codes: string, numFrames: number, levels: number) => {
      const engine = await readyEngine();
      await engine.frameStreamReset('decoder');
      const given = new Uint16Array(base64ToBytes(codes).slice().buffer);
      const { pcm } = await engine.frameStreamDecode(given, numFrames, new Uint8Array(numFrames).fill(levels));
      return float32Base64(pcm);
    },
    /** Only on `?bench` pages (`testing/bench.ts`). */
    bench,
  };
}

export type Hooks = ReturnType<typeof makeHooks>;

declare global {
  interface Window {
    mimistack?: Hooks;
  }
}

export function installHooks(bench?: typeof benchFunction): void {
  window.mimistack = makeHooks(bench);
}
