/**
 * The page's handle on the inference worker (`engine/worker.ts`): promises in, progress callbacks out.
 *
 * Used by `takes.ts` (file encode/decode), `live.ts` (one frame at a time from the microphone) and the benchmark
 * (`testing/bench.ts`). Buffers handed to the worker are copied first, so the caller keeps its arrays.
 */

import type { TokenGrid } from '../grid';
import type { LevelSelection } from '../levels';
import type {
  DecodeResult, EncodeResult, InitOptions, ModelDescription, Progress, Request, Response, StreamDecodeResult,
  StreamStepResult,
} from './messages';
import type { FrameDecodeResult, FrameEncodeResult } from './messages';

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  onProgress?: (progress: Progress) => void;
}

export class Engine {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  description: ModelDescription | null = null;

  constructor() {
    this.worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module', name: 'mimistack-inference' });
    this.worker.onmessage = (event: MessageEvent<Response>) => this.receive(event.data);
    this.worker.onerror = (event) => {
      const error = new Error(`the inference worker failed: ${event.message || 'unknown error'}`);
      for (const pending of this.pending.values()) pending.reject(error);
      this.pending.clear();
    };
  }

  private receive(message: Response): void {
    const pending = this.pending.get(message.id);
    if (!pending) return;
    if ('progress' in message) {
      pending.onProgress?.(message.progress);
      return;
    }
    this.pending.delete(message.id);
    if (message.ok) pending.resolve(message.result);
    else pending.reject(new Error(message.error));
  }

  private call<T>(request: Request, transfer: Transferable[] = [], onProgress?: (p: Progress) => void): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, onProgress });
      this.worker.postMessage({ id, request }, transfer);
    });
  }

  async init(options: InitOptions, onProgress?: (p: Progress) => void): Promise<ModelDescription> {
    this.description = await this.call<ModelDescription>({ kind: 'init', options }, [], onProgress);
    return this.description;
  }

  private get model(): ModelDescription {
    if (!this.description) throw new Error('the models are not loaded yet');
    return this.description;
  }

  async encode(pcm: Float32Array, onProgress?: (p: Progress) => void): Promise<{ grid: TokenGrid; milliseconds: number }> {
    const copy = pcm.slice();
    const result = await this.call<EncodeResult>({ kind: 'encode', pcm: copy }, [copy.buffer], onProgress);
    const d = this.model;
    const grid: TokenGrid = {
      codes: result.codes, numLevels: d.numLevels, numFrames: result.numFrames, numSamples: pcm.length,
      sampleRate: d.sampleRate, frameRate: d.frameRate, codebookSize: d.codebookSize, weightsSha256: d.weightsSha256,
      levelsPresent: Array.from({ length: d.numLevels }, (_, i) => i),
    };
    return { grid, milliseconds: result.milliseconds };
  }

  decode(grid: TokenGrid, selection: LevelSelection, onProgress?: (p: Progress) => void): Promise<DecodeResult> {
    const codes = grid.codes.slice();
    const mask = selection.mask();
    return this.call<DecodeResult>({ kind: 'decode', codes, numFrames: grid.numFrames, mask, numSamples: grid.numSamples },
      [codes.buffer, mask.buffer], onProgress);
  }

  streamReset(): Promise<void> {
    return this.call<void>({ kind: 'streamReset' });
  }

  /** One or more whole frames of microphone audio through the streaming encoder and decoder (one call). */
  streamStep(frame: Float32Array, selection: LevelSelection): Promise<StreamStepResult> {
    const pcm = frame.slice();
    const mask = selection.mask();
    return this.call<StreamStepResult>({ kind: 'streamStep', pcm, mask }, [pcm.buffer, mask.buffer]);
  }

  /** Decode a grid with the streaming decoder, `framesPerStep` frames per call (benchmark of live decoding). */
  streamDecode(grid: TokenGrid, selection: LevelSelection, framesPerStep = 1): Promise<StreamDecodeResult> {
    const codes = grid.codes.slice();
    const mask = selection.mask();
    return this.call<StreamDecodeResult>({ kind: 'streamDecode', codes, numFrames: grid.numFrames, mask, framesPerStep },
      [codes.buffer, mask.buffer]);
  }

  /** Start the encoder-only or decoder-only frame stream of a progressive stream from the zero state. */
  frameStreamReset(direction: 'encoder' | 'decoder'): Promise<void> {
    return this.call<void>({ kind: 'frameStreamReset', direction });
  }

  /** Whole frames through the encoder frame stream; the codes are level-major [numLevels, n]. Takes `pcm`'s buffer. */
  frameStreamEncode(pcm: Float32Array): Promise<FrameEncodeResult> {
    return this.call<FrameEncodeResult>({ kind: 'frameStreamEncode', pcm }, [pcm.buffer]);
  }

  /** Level-major codes [numLevels, n] through the decoder frame stream, frame t with levels 0..levels[t]-1. Takes
   * the arrays' buffers. */
  frameStreamDecode(codes: Uint16Array, numFrames: number, levels: Uint8Array): Promise<FrameDecodeResult> {
    return this.call<FrameDecodeResult>({ kind: 'frameStreamDecode', codes, numFrames, levels }, [codes.buffer, levels.buffer]);
  }
}
