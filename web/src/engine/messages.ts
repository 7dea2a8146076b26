/**
 * Messages between the page (`engine/client.ts`) and the inference worker (`engine/worker.ts`).
 *
 * Arrays travel as transferred buffers. Codes are uint16, level-major `[numLevels, numFrames]`; pcm is float32 at
 * the model's sample rate; `mask` is float32 `[numLevels]` (1 = the level's term is in the latent sum).
 */

import type { WebManifest } from './manifest';

export type ExecutionPreference = 'auto' | 'wasm' | 'webgpu';

export interface InitOptions {
  /** Absolute URL of the web bundle's manifest.json; the files it lists are fetched relative to it. */
  manifestUrl: string;
  /** That manifest, fetched and checked by the page (`bundles.ts`). */
  manifest: WebManifest;
  /** Absolute URL prefix of onnxruntime-web's .wasm/.mjs files (the page's ort/ folder). */
  wasmPaths: string;
  numThreads: number;
  executionProvider: ExecutionPreference;
}

export interface ModelDescription {
  sampleRate: number;
  frameRate: number;
  frameSize: number;
  numLevels: number;
  codebookSize: number;
  weightsSha256: string;
  executionProvider: 'wasm' | 'webgpu';
  numThreads: number;
  /** Always true with web bundles (their graphs are the streaming ones: chunked progress and live mode). */
  streaming: boolean;
  /** Bytes of the bundle's files, and how many of them came from this browser's cache. */
  bytes: number;
  cachedBytes: number;
  /** The bundle loaded ("exact", "light") and how its weights are stored ("float32", "float16"). */
  bundle: string;
  storage: string;
  /** Why WebGPU is not used, when it is not (one line), or null. */
  webgpu: string | null;
  /** What the user should know about the load (a damaged cached file fetched again, ...). */
  notes: string[];
  manifest: WebManifest;
}

export type Request =
  | { kind: 'init'; options: InitOptions }
  | { kind: 'encode'; pcm: Float32Array }
  | { kind: 'decode'; codes: Uint16Array; numFrames: number; mask: Float32Array; numSamples: number }
  | { kind: 'streamReset' }
  | { kind: 'streamStep'; pcm: Float32Array; mask: Float32Array }
  | { kind: 'streamDecode'; codes: Uint16Array; numFrames: number; mask: Float32Array; framesPerStep: number }
  | FrameStreamRequest;

export interface EncodeResult {
  codes: Uint16Array;
  numFrames: number;
  milliseconds: number;
}

export interface DecodeResult {
  pcm: Float32Array;
  milliseconds: number;
}

export interface StreamStepResult {
  /** How many 80 ms frames this step took (the pcm given was numFrames * frameSize samples). */
  numFrames: number;
  /** uint16 level-major [numLevels, numFrames] codes of these frames. */
  codes: Uint16Array;
  /** float32 [numFrames * frameSize] decoded with the mask given. */
  pcm: Float32Array;
  encodeMilliseconds: number;
  decodeMilliseconds: number;
}

export interface StreamDecodeResult {
  pcm: Float32Array;
  /** Frames per streaming-decoder call. */
  framesPerStep: number;
  /** Time of every call of the streaming decoder (each decodes framesPerStep frames, the last maybe fewer). */
  stepMilliseconds: number[];
}

export interface Progress {
  stage: 'download' | 'prepare' | 'encode' | 'decode';
  file?: string;
  loaded?: number;
  total?: number;
  fileIndex?: number;
  fileCount?: number;
  /** Download progress: the bytes come from this browser's cache. */
  fromCache?: boolean;
  note?: string;
}

export type Response =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: string }
  | { id: number; progress: Progress };

// -- progressive streams (web/src/progressive/) ---------------------------------------------------------------------
/** The frame streams of a progressive stream: an encoder-only one (the sender) and a decoder-only one (the receiver),
 * each carrying its state between calls, apart from live mode's. `levels` is uint8 `[numFrames]`: frame t is decoded
 * with levels 0..levels[t]-1 (0: none, a silent latent). */
export type FrameStreamRequest =
  | { kind: 'frameStreamReset'; direction: 'encoder' | 'decoder' }
  | { kind: 'frameStreamEncode'; pcm: Float32Array }
  | { kind: 'frameStreamDecode'; codes: Uint16Array; numFrames: number; levels: Uint8Array };

export interface FrameEncodeResult {
  /** uint16 level-major [numLevels, numFrames]. */
  codes: Uint16Array;
  numFrames: number;
}

export interface FrameDecodeResult {
  /** float32 [numFrames * frameSize]. */
  pcm: Float32Array;
  milliseconds: number;
}
