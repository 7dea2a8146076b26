/**
 * Messages between the page (`engine/client.ts`) and the inference worker (`engine/worker.ts`).
 *
 * Arrays travel as transferred buffers. Codes are uint16, level-major `[numLevels, numFrames]`; pcm is float32 at
 * the model's sample rate; `mask` is float32 `[numLevels]` (1 = the level's term is in the latent sum).
 */

export type ExecutionPreference = 'auto' | 'wasm' | 'webgpu';

export interface InitOptions {
  /** URL prefix of the exported graphs (manifest.json, encoder.onnx, ...), e.g. "/models/". */
  modelBase: string;
  /** URL prefix of onnxruntime-web's .wasm/.mjs files, e.g. "/ort/". */
  wasmPaths: string;
  numThreads: number;
  executionProvider: ExecutionPreference;
  /** Use the streaming graphs when the export has them (false: the batch graphs, no live mode). */
  streaming: boolean;
  /** Which exported graphs to run: 'fp32' (exact) or a reduced-precision variant the export wrote. */
  variant?: Variant;
}

export type Variant = 'fp32' | 'fp16' | 'int8';

export interface ModelDescription {
  sampleRate: number;
  frameRate: number;
  frameSize: number;
  numLevels: number;
  codebookSize: number;
  weightsSha256: string;
  executionProvider: 'wasm' | 'webgpu';
  numThreads: number;
  /** Whether the streaming graphs were loaded (chunked progress and live mode). */
  streaming: boolean;
  /** Bytes downloaded for the graphs. */
  bytes: number;
  /** The graph variant that was loaded. */
  variant: Variant;
  manifest: Record<string, unknown>;
}

export type Request =
  | { kind: 'init'; options: InitOptions }
  | { kind: 'encode'; pcm: Float32Array }
  | { kind: 'decode'; codes: Uint16Array; numFrames: number; mask: Float32Array; numSamples: number }
  | { kind: 'streamReset' }
  | { kind: 'streamStep'; pcm: Float32Array; mask: Float32Array }
  | { kind: 'streamDecode'; codes: Uint16Array; numFrames: number; mask: Float32Array; framesPerStep: number };

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
}

export type Response =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: string }
  | { id: number; progress: Progress };
