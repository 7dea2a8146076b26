/**
 * The inference worker: runs Mimi's exported ONNX graphs with onnxruntime-web off the page's main thread.
 *
 * Driven by `engine/client.ts` through the messages in `engine/messages.ts`; loads the graphs that
 * `mimistack.engine.export` writes (served by `mimistack serve` under /models/) and onnxruntime-web's WebAssembly
 * from /ort/ (copied there by the build, never a CDN).
 *
 * Graphs: the streaming encoder (pcm [1,1,N*frameSize] + state_in_i -> codes [1,K,N] + state_out_i) and decoder
 * (latent [1,D,N] + states -> pcm), and embed (codes [1,K,N] + level_mask [K] -> latent [1,D,N]: a level that is
 * off contributes nothing). Streaming from the zero state is batch mode's arithmetic, so files are encoded and
 * decoded in chunks through the same graphs (with real progress) and live mode runs them one frame at a time.
 * Exports without streaming graphs fall back to the batch encoder.onnx/decoder.onnx (no live mode).
 */

import type * as Ort from 'onnxruntime-web';
import type {
  DecodeResult, EncodeResult, InitOptions, ModelDescription, Progress, Request, Response, StreamDecodeResult,
  StreamStepResult,
} from './messages';

type OrtModule = typeof Ort;
type Feeds = Record<string, Ort.Tensor>;

/** A graph with its input/output names and, for streaming graphs, the zero state (state_in_i -> state_out_i). */
interface Graph {
  session: Ort.InferenceSession;
  input: string;
  output: string;
  initial: Feeds;
}

interface Loaded {
  ort: OrtModule;
  description: ModelDescription;
  encoder: Graph;
  decoder: Graph;
  embed: Ort.InferenceSession;
  /** True when encoder/decoder are the streaming graphs (state carried between calls). */
  stateful: boolean;
  live: { encoder: Feeds; decoder: Feeds } | null;
}

/** Frames per call when a file goes through the streaming graphs (4 s: big enough to be efficient). */
const CHUNK_FRAMES = 50;

const scope = self as unknown as {
  postMessage(message: Response, transfer?: Transferable[]): void;
  onmessage: ((event: MessageEvent<{ id: number; request: Request }>) => void) | null;
};

let model: Loaded | null = null;
let queue: Promise<void> = Promise.resolve();

scope.onmessage = (event) => {
  const { id, request } = event.data;
  queue = queue.then(() => handle(id, request));
};

/** The export folder's manifest, checked against docs/onnx.md: format, version and the sizes the page needs. */
const ONNX_FORMAT = 'mimistack-onnx';
const ONNX_FORMAT_VERSION = 1;
function checkManifest(raw: Record<string, unknown>): Record<string, unknown> {
  if (raw.format !== ONNX_FORMAT) {
    throw new Error(`manifest.json is not a mimistack ONNX export (format ${JSON.stringify(raw.format)})`);
  }
  if (raw.format_version !== ONNX_FORMAT_VERSION) {
    throw new Error(`this page reads ONNX export format version ${ONNX_FORMAT_VERSION}, the manifest says ` +
      `${JSON.stringify(raw.format_version)}: re-export with this mimistack version`);
  }
  const missing = ['config', 'sample_rate', 'frame_size', 'num_levels', 'codebook_size', 'weights_sha256', 'files']
    .filter((key) => raw[key] === undefined);
  if (missing.length) throw new Error(`manifest.json lacks ${missing.join(', ')}; re-export the model`);
  return raw;
}

async function handle(id: number, request: Request): Promise<void> {
  const progress = (value: Progress) => scope.postMessage({ id, progress: value });
  try {
    const [result, transfer] = await dispatch(request, progress);
    scope.postMessage({ id, ok: true, result }, transfer);
  } catch (error) {
    scope.postMessage({ id, ok: false, error: error instanceof Error ? error.message : String(error) });
  }
}

async function dispatch(request: Request, progress: (p: Progress) => void): Promise<[unknown, Transferable[]]> {
  if (request.kind === 'init') {
    model = await load(request.options, progress);
    return [model.description, []];
  }
  const loaded = model;
  if (!loaded) throw new Error('the models are not loaded yet');
  switch (request.kind) {
    case 'encode': {
      const result = await encode(loaded, request.pcm, progress);
      return [result, [result.codes.buffer]];
    }
    case 'decode': {
      const result = await decode(loaded, request.codes, request.numFrames, request.mask, request.numSamples, progress);
      return [result, [result.pcm.buffer]];
    }
    case 'streamReset':
      if (!loaded.stateful) throw new Error('this export has no streaming graphs, so live mode is unavailable');
      loaded.live = { encoder: { ...loaded.encoder.initial }, decoder: { ...loaded.decoder.initial } };
      return [null, []];
    case 'streamStep': {
      const result = await streamStep(loaded, request.pcm, request.mask);
      return [result, [result.codes.buffer, result.pcm.buffer]];
    }
    case 'streamDecode': {
      const result = await streamDecode(loaded, request.codes, request.numFrames, request.mask, request.framesPerStep);
      return [result, [result.pcm.buffer]];
    }
  }
}

// -- loading ----------------------------------------------------------------------------------------------------
type Adapter = { info?: { isFallbackAdapter?: boolean; architecture?: string } };

/** A hardware WebGPU adapter (a software fallback such as SwiftShader is slower than WebAssembly). */
async function webgpuAvailable(allowSoftware: boolean): Promise<boolean> {
  const gpu = (navigator as Navigator & { gpu?: { requestAdapter(): Promise<Adapter | null> } }).gpu;
  if (!gpu) return false;
  try {
    const adapter = await gpu.requestAdapter();
    if (!adapter) return false;
    const software = adapter.info?.isFallbackAdapter === true || /swiftshader/i.test(adapter.info?.architecture ?? '');
    return allowSoftware || !software;
  } catch {
    return false;
  }
}

interface StateSpec {
  name: string;
  output?: string;
  shape: (number | string)[];
  dtype: string;
}

interface StreamSpec {
  input: string;
  output: string;
  states: StateSpec[];
}

async function load(options: InitOptions, progress: (p: Progress) => void): Promise<Loaded> {
  const gpuPresent = options.executionProvider !== 'wasm' && (await webgpuAvailable(options.executionProvider === 'webgpu'));
  if (options.executionProvider === 'webgpu' && !gpuPresent) {
    throw new Error('WebGPU was requested but this browser has no WebGPU adapter; use ?ep=wasm');
  }
  const useWebgpu = gpuPresent;
  // Two builds of onnxruntime-web: the WebGPU one is larger, so the plain WebAssembly one is used without a GPU.
  const ort: OrtModule = useWebgpu ? await import('onnxruntime-web/webgpu') : await import('onnxruntime-web/wasm');
  ort.env.wasm.wasmPaths = options.wasmPaths;
  ort.env.wasm.numThreads = options.numThreads;
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';

  const manifest = checkManifest(await fetchJson(`${options.modelBase}manifest.json`));
  const streams = (manifest.streams ?? {}) as Record<string, StreamSpec>;
  const stateful = options.streaming && !!streams.encoder_stream && !!streams.decoder_stream;
  const variant = options.variant ?? 'fp32';
  const named = (graph: string) => (variant === 'fp32' ? `${graph}.onnx` : `${graph}.${variant}.onnx`);
  const files = stateful
    ? [named('encoder_stream'), named('decoder_stream'), 'embed.onnx']
    : [named('encoder'), named('decoder'), 'embed.onnx'];
  const listed = (manifest.files ?? {}) as Record<string, unknown>;
  const absent = files.filter((file) => !(file in listed));
  if (absent.length) {
    throw new Error(`this export has no ${variant} graphs (${absent.join(', ')}); export them with ` +
      `\`mimistack export-onnx --${variant}\` and serve that folder with --onnx`);
  }
  const buffers: Record<string, Uint8Array> = {};
  let bytes = 0;
  for (const [index, file] of files.entries()) {
    buffers[file] = await fetchBytes(`${options.modelBase}${file}`, (loaded, total) =>
      progress({ stage: 'download', file, loaded, total, fileIndex: index, fileCount: files.length }));
    bytes += buffers[file].length;
  }
  progress({ stage: 'prepare' });
  const open = (name: string) => ort.InferenceSession.create(buffers[name], {
    executionProviders: [useWebgpu ? 'webgpu' : 'wasm'],
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3, // errors only: "some nodes run on the CPU" is expected with WebGPU (shape ops, int64)
  });
  const graph = async (file: string, input: string, output: string, spec?: StreamSpec): Promise<Graph> => {
    const session = await open(file);
    const initial: Feeds = {};
    for (const state of spec?.states ?? []) {
      initial[state.name] = zeros(ort, state.dtype, state.shape.map((d) => (typeof d === 'number' ? d : 1)));
    }
    return { session, input: spec?.input ?? input, output: spec?.output ?? output, initial };
  };
  const encoder = await graph(files[0], 'pcm', 'codes', stateful ? streams.encoder_stream : undefined);
  const decoder = await graph(files[1], 'latent', 'pcm', stateful ? streams.decoder_stream : undefined);
  const embed = await open('embed.onnx');
  const frameSize = Number(manifest.frame_size);
  const sampleRate = Number(manifest.sample_rate);
  const description: ModelDescription = {
    sampleRate,
    frameRate: sampleRate / frameSize,
    frameSize,
    numLevels: Number(manifest.num_levels),
    codebookSize: Number(manifest.codebook_size),
    weightsSha256: String(manifest.weights_sha256),
    executionProvider: useWebgpu ? 'webgpu' : 'wasm',
    numThreads: useWebgpu ? 1 : ort.env.wasm.numThreads ?? options.numThreads,
    streaming: stateful,
    bytes,
    variant,
    manifest,
  };
  return { ort, description, encoder, decoder, embed, stateful, live: null };
}

async function fetchJson(url: string): Promise<Record<string, unknown>> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${await errorText(response)}`);
  return response.json();
}

async function errorText(response: globalThis.Response): Promise<string> {
  const text = await response.text();
  try {
    return JSON.parse(text).error ?? text;
  } catch {
    return text.slice(0, 300);
  }
}

async function fetchBytes(url: string, onProgress: (loaded: number, total: number) => void): Promise<Uint8Array> {
  const response = await fetch(url);
  if (!response.ok || !response.body) throw new Error(`${url}: ${response.status} ${await errorText(response)}`);
  const total = Number(response.headers.get('content-length') ?? 0);
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  let lastReport = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    if (loaded - lastReport > 1 << 20) {
      onProgress(loaded, total);
      lastReport = loaded;
    }
  }
  onProgress(loaded, total || loaded);
  const out = new Uint8Array(loaded);
  let offset = 0;
  for (const chunk of chunks) out.set(chunk, offset), (offset += chunk.length);
  return out;
}

function zeros(ort: OrtModule, dtype: string, shape: number[]): Ort.Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  switch (dtype) {
    case 'int64': return new ort.Tensor('int64', new BigInt64Array(size), shape);
    case 'int32': return new ort.Tensor('int32', new Int32Array(size), shape);
    case 'bool': return new ort.Tensor('bool', new Uint8Array(size), shape);
    case 'float32': return new ort.Tensor('float32', new Float32Array(size), shape);
    default: throw new Error(`unsupported state dtype ${dtype}`);
  }
}

// -- compute -------------------------------------------------------------------------------------------------------
/** Run a graph; for a streaming graph `state` is consumed and the next state returned with the output. */
async function run(graph: Graph, value: Ort.Tensor, state: Feeds): Promise<[Ort.Tensor, Feeds]> {
  const outputs = await graph.session.run({ [graph.input]: value, ...state });
  const next: Feeds = {};
  for (const name of Object.keys(state)) {
    const produced = outputs[name.replace('state_in', 'state_out')];
    if (!produced) throw new Error(`streaming graph returned no ${name.replace('state_in', 'state_out')}`);
    next[name] = produced;
  }
  return [outputs[graph.output], next];
}

function codesTensor(ort: OrtModule, codes: Uint16Array, numLevels: number, numFrames: number): Ort.Tensor {
  const data = new BigInt64Array(codes.length);
  for (let i = 0; i < codes.length; i++) data[i] = BigInt(codes[i]);
  return new ort.Tensor('int64', data, [1, numLevels, numFrames]);
}

function toUint16(tensor: Ort.Tensor): Uint16Array {
  const data = tensor.data as BigInt64Array | Int32Array;
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = Number(data[i]);
  return out;
}

/** [K, n] codes of frames start..start+n out of a level-major [K, total] array. */
function columns(codes: Uint16Array, numLevels: number, total: number, start: number, count: number): Uint16Array {
  const out = new Uint16Array(numLevels * count);
  for (let k = 0; k < numLevels; k++) out.set(codes.subarray(k * total + start, k * total + start + count), k * count);
  return out;
}

async function encode(loaded: Loaded, pcm: Float32Array, progress: (p: Progress) => void): Promise<EncodeResult> {
  const { ort, description: d } = loaded;
  const numFrames = Math.ceil(pcm.length / d.frameSize);
  const codes = new Uint16Array(d.numLevels * numFrames);
  if (numFrames === 0) return { codes, numFrames, milliseconds: 0 };
  const padded = new Float32Array(numFrames * d.frameSize);
  padded.set(pcm);
  const started = performance.now();
  const step = loaded.stateful ? CHUNK_FRAMES : numFrames;
  let state: Feeds = { ...loaded.encoder.initial };
  for (let start = 0; start < numFrames; start += step) {
    const count = Math.min(step, numFrames - start);
    const chunk = padded.subarray(start * d.frameSize, (start + count) * d.frameSize);
    const [output, next] = await run(loaded.encoder, new ort.Tensor('float32', chunk, [1, 1, chunk.length]), state);
    state = next;
    const part = toUint16(output);
    for (let k = 0; k < d.numLevels; k++) codes.set(part.subarray(k * count, (k + 1) * count), k * numFrames + start);
    progress({ stage: 'encode', loaded: start + count, total: numFrames });
  }
  return { codes, numFrames, milliseconds: performance.now() - started };
}

async function latent(loaded: Loaded, codes: Uint16Array, numFrames: number, mask: Float32Array): Promise<Ort.Tensor> {
  const { ort, description: d } = loaded;
  const outputs = await loaded.embed.run({
    codes: codesTensor(ort, codes, d.numLevels, numFrames),
    level_mask: new ort.Tensor('float32', mask, [d.numLevels]),
  });
  return outputs.latent ?? outputs[loaded.embed.outputNames[0]];
}

async function decode(loaded: Loaded, codes: Uint16Array, numFrames: number, mask: Float32Array, numSamples: number,
  progress: (p: Progress) => void): Promise<DecodeResult> {
  const d = loaded.description;
  const pcm = new Float32Array(numFrames * d.frameSize);
  const started = performance.now();
  const step = loaded.stateful ? CHUNK_FRAMES : Math.max(1, numFrames);
  let state: Feeds = { ...loaded.decoder.initial };
  for (let start = 0; start < numFrames; start += step) {
    const count = Math.min(step, numFrames - start);
    const z = await latent(loaded, columns(codes, d.numLevels, numFrames, start, count), count, mask);
    const [output, next] = await run(loaded.decoder, z, state);
    state = next;
    pcm.set(output.data as Float32Array, start * d.frameSize);
    progress({ stage: 'decode', loaded: start + count, total: numFrames });
  }
  return { pcm: pcm.slice(0, numSamples), milliseconds: performance.now() - started };
}

async function streamStep(loaded: Loaded, pcm: Float32Array, mask: Float32Array): Promise<StreamStepResult> {
  const { ort, description: d, live } = loaded;
  if (!live) throw new Error('the live stream was not started (streamReset)');
  // One or more whole frames per step: a caller that fell behind catches up with one call for several frames,
  // which costs far less than as many one-frame calls (the weights and caches are read once per call).
  const numFrames = pcm.length / d.frameSize;
  if (!Number.isInteger(numFrames) || numFrames < 1) {
    throw new Error(`a stream step takes a whole number of ${d.frameSize}-sample frames, got ${pcm.length} samples`);
  }
  const started = performance.now();
  const [codesTensorOut, encoderState] = await run(loaded.encoder, new ort.Tensor('float32', pcm, [1, 1, pcm.length]), live.encoder);
  live.encoder = encoderState;
  const codes = toUint16(codesTensorOut);
  const encoded = performance.now();
  const [out, decoderState] = await run(loaded.decoder, await latent(loaded, codes, numFrames, mask), live.decoder);
  live.decoder = decoderState;
  return {
    numFrames, codes, pcm: (out.data as Float32Array).slice(), encodeMilliseconds: encoded - started,
    decodeMilliseconds: performance.now() - encoded,
  };
}

/** Decode a whole grid through the streaming decoder, `framesPerStep` frames per call (1 = as live mode does when it
 * keeps up), timing every call. */
async function streamDecode(loaded: Loaded, codes: Uint16Array, numFrames: number, mask: Float32Array,
  framesPerStep = 1): Promise<StreamDecodeResult> {
  const d = loaded.description;
  if (!loaded.stateful) throw new Error('this export has no streaming graphs');
  let state: Feeds = { ...loaded.decoder.initial };
  const pcm = new Float32Array(numFrames * d.frameSize);
  const stepMilliseconds: number[] = [];
  const step = Math.max(1, Math.floor(framesPerStep));
  for (let t = 0; t < numFrames; t += step) {
    const count = Math.min(step, numFrames - t);
    const started = performance.now();
    const z = await latent(loaded, columns(codes, d.numLevels, numFrames, t, count), count, mask);
    const [output, next] = await run(loaded.decoder, z, state);
    state = next;
    pcm.set(output.data as Float32Array, t * d.frameSize);
    stepMilliseconds.push(performance.now() - started);
  }
  return { pcm, framesPerStep: step, stepMilliseconds };
}
