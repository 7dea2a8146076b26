/**
 * The inference worker: runs Mimi's exported ONNX graphs with onnxruntime-web off the page's main thread.
 *
 * Driven by `engine/client.ts` through the messages in `engine/messages.ts`; loads a web bundle (written by
 * `mimistack export-web`, or served by `mimistack serve` under /models/<bundle>/): the streaming encoder (pcm
 * [1,1,N*frameSize] + state_in_i -> codes [1,K,N] + state_out_i, its quantizer tables in codebooks.bin as external
 * data) and decoder (latent [1,D,N] + states -> pcm); the latent itself is summed here from codebooks.bin
 * (`latent.ts`: a level that is off contributes nothing). The files come from Cache Storage when a checked copy is
 * there (`model-cache.ts`). Streaming from the zero state is batch mode's arithmetic, so files are encoded and
 * decoded in chunks through the same graphs (with real progress) and live mode runs them one frame at a time.
 * onnxruntime-web's WebAssembly comes from the page's ort/ folder (copied there by the build, never a CDN).
 */

import type * as Ort from 'onnxruntime-web';
import { Codebooks } from './latent';
import type { GraphSpec } from './manifest';
import type {
  DecodeResult, EncodeResult, InitOptions, ModelDescription, Progress, Request, Response, StreamDecodeResult,
  StreamStepResult,
} from './messages';
import type { FrameDecodeResult, FrameEncodeResult, FrameStreamRequest } from './messages';
import { type ModelFile, modelFile, openModelCache, pruneStale } from './model-cache';

type OrtModule = typeof Ort;
type Feeds = Record<string, Ort.Tensor>;

/** A graph with its input/output names and, for streaming graphs, the zero state (state_in_i -> state_out_i). */
interface Graph {
  session: Ort.InferenceSession;
  input: string;
  output: string;
  initial: Feeds;
  /** state_in name -> the output that carries its next value. */
  stateOutputs: Record<string, string>;
  /** The most frames one call may take (a ring KV cache sized for them: the manifest's max_frames_per_call); 0: any. */
  maxFrames: number;
  /** Samples of the input's last axis per frame (frame_size for pcm, 1 for a latent). */
  frameScale: number;
  tensor: (type: 'float32', data: Float32Array, dims: number[]) => Ort.Tensor;
}

interface Loaded {
  ort: OrtModule;
  description: ModelDescription;
  encoder: Graph;
  decoder: Graph;
  /** The centroids and projections the latent is summed from. */
  codebooks: Codebooks;
  /** True when encoder/decoder are the streaming graphs (state carried between calls): always, with bundles. */
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
    case 'frameStreamReset':
    case 'frameStreamEncode':
    case 'frameStreamDecode':
      return frameStream(loaded, request);
  }
}

// -- loading ----------------------------------------------------------------------------------------------------
type Adapter = { info?: { isFallbackAdapter?: boolean; architecture?: string } };

/** Why WebGPU cannot be used here (one line), or null when a hardware adapter (or, if allowed, a software one) is
 * there. A software fallback such as SwiftShader is slower than WebAssembly. */
async function webgpuProblem(allowSoftware: boolean): Promise<string | null> {
  const gpu = (navigator as Navigator & { gpu?: { requestAdapter(): Promise<Adapter | null> } }).gpu;
  if (!gpu) return 'no WebGPU in this browser';
  try {
    const adapter = await gpu.requestAdapter();
    if (!adapter) return 'WebGPU found no graphics adapter';
    const software = adapter.info?.isFallbackAdapter === true || /swiftshader/i.test(adapter.info?.architecture ?? '');
    return software && !allowSoftware ? 'WebGPU has only a software adapter here (slower than WebAssembly)' : null;
  } catch (error) {
    return `WebGPU failed (${(error as Error).message})`;
  }
}

async function load(options: InitOptions, progress: (p: Progress) => void): Promise<Loaded> {
  const manifest = options.manifest;
  const webgpu = options.executionProvider === 'wasm' ? null : await webgpuProblem(options.executionProvider === 'webgpu');
  if (options.executionProvider === 'webgpu' && webgpu) throw new Error(`WebGPU was requested but ${webgpu}; use ?ep=wasm`);
  const useWebgpu = options.executionProvider !== 'wasm' && webgpu === null;
  // Two builds of onnxruntime-web: the WebGPU one is larger, so the plain WebAssembly one is used without a GPU.
  const ort: OrtModule = useWebgpu ? await import('onnxruntime-web/webgpu') : await import('onnxruntime-web/wasm');
  ort.env.wasm.wasmPaths = options.wasmPaths;
  ort.env.wasm.numThreads = options.numThreads;
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';

  const { encoder: encoderSpec, decoder: decoderSpec } = manifest.graphs;
  const names = [...new Set([encoderSpec.file, decoderSpec.file, manifest.codebooks.file,
    ...(encoderSpec.external_data ?? []), ...(decoderSpec.external_data ?? [])])];
  const files: ModelFile[] = names.map((name) => ({ name, url: new URL(name, options.manifestUrl).href, ...manifest.files[name] }));
  const total = files.reduce((sum, file) => sum + file.bytes, 0);
  const cache = await openModelCache();
  const notes: string[] = cache ? [] : ['this browser offers no cache here, so the models download on every visit'];
  const buffers: Record<string, Uint8Array> = {};
  let done = 0;
  let cachedBytes = 0;
  for (const [fileIndex, file] of files.entries()) {
    let fromCache = false;
    buffers[file.name] = await modelFile(cache, file, (loaded, cached) => {
      fromCache = cached;
      progress({ stage: 'download', file: file.name, loaded: done + loaded, total, fileIndex, fileCount: files.length, fromCache: cached });
    }, (note) => {
      notes.push(note);
      progress({ stage: 'download', file: file.name, loaded: done, total, fileIndex, fileCount: files.length, note });
    });
    done += file.bytes;
    if (fromCache) cachedBytes += file.bytes;
  }
  if (cache) await pruneStale(cache, files).catch(() => 0);

  progress({ stage: 'prepare' });
  const open = (spec: GraphSpec) => ort.InferenceSession.create(buffers[spec.file], {
    executionProviders: [useWebgpu ? 'webgpu' : 'wasm'],
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3, // errors only: "some nodes run on the CPU" is expected with WebGPU (shape ops, int64)
    externalData: (spec.external_data ?? []).map((path) => ({ path, data: buffers[path] })),
  }).catch((error: Error) => {
    throw new Error(`onnxruntime-web could not open ${spec.file}: ${error.message}`);
  });
  const graph = async (spec: GraphSpec): Promise<Graph> => {
    const initial: Feeds = {};
    for (const state of spec.states) {
      initial[state.name] = zeros(ort, state.dtype, state.shape.map((d) => (typeof d === 'number' ? d : 1)));
    }
    const stateOutputs = Object.fromEntries(spec.states.map((state) => [state.name, state.output]));
    return {
      session: await open(spec), input: spec.input, output: spec.output, initial, stateOutputs,
      maxFrames: Number(spec.max_frames_per_call ?? 0), frameScale: spec.input === 'pcm' ? Number(manifest.frame_size) : 1,
      tensor: (type, data, dims) => new ort.Tensor(type, data, dims),
    };
  };
  const encoder = await graph(encoderSpec);
  const decoder = await graph(decoderSpec);
  const codebooks = Codebooks.parse(buffers[manifest.codebooks.file], manifest.codebooks, {
    numLevels: manifest.num_levels, numSemantic: manifest.num_semantic, codebookSize: manifest.codebook_size,
    codebookDim: manifest.codebook_dim, dimension: manifest.dimension,
  });
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
    streaming: true,
    bytes: total,
    cachedBytes,
    bundle: String(manifest.bundle),
    storage: String(manifest.storage),
    webgpu,
    notes,
    manifest,
  };
  return { ort, description, encoder, decoder, codebooks, stateful: true, live: null };
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
/** One graph call; an input longer than the graph's `maxFrames` goes through in calls of at most that many frames
 * (its KV cache ring holds that many), the outputs joined on their last axis. */
async function run(graph: Graph, value: Ort.Tensor, state: Feeds): Promise<[Ort.Tensor, Feeds]> {
  const dims = value.dims;
  const frames = dims[dims.length - 1] / graph.frameScale;
  if (!graph.maxFrames || frames <= graph.maxFrames) return runOnce(graph, value, state);
  const data = value.data as Float32Array;
  const rows = data.length / dims[dims.length - 1];
  const pieces: Ort.Tensor[] = [];
  let current = state;
  for (let start = 0; start < frames; start += graph.maxFrames) {
    const from = start * graph.frameScale;
    const length = Math.min(graph.maxFrames, frames - start) * graph.frameScale;
    const part = new Float32Array(rows * length);
    for (let r = 0; r < rows; r++) part.set(data.subarray(r * dims[dims.length - 1] + from, r * dims[dims.length - 1] + from + length), r * length);
    const [output, next] = await runOnce(graph, graph.tensor('float32', part, [...dims.slice(0, -1), length]), current);
    pieces.push(output);
    current = next;
  }
  return [joinLast(pieces), current];
}

/** Tensors [.., L_i] joined on their last axis (same leading dims and type). */
function joinLast(pieces: Ort.Tensor[]): Ort.Tensor {
  const lead = pieces[0].dims.slice(0, -1);
  const rows = lead.reduce((a, b) => a * b, 1);
  const lengths = pieces.map((piece) => piece.dims[piece.dims.length - 1]);
  const total = lengths.reduce((a, b) => a + b, 0);
  const first = pieces[0].data as Float32Array | BigInt64Array | Int32Array;
  const out = new (first.constructor as new (size: number) => typeof first)(rows * total);
  let offset = 0;
  pieces.forEach((piece, index) => {
    const data = piece.data as typeof first;
    const length = lengths[index];
    for (let r = 0; r < rows; r++) (out as Float32Array).set(data.subarray(r * length, (r + 1) * length) as Float32Array, r * total + offset);
    offset += length;
  });
  return new (pieces[0].constructor as new (type: Ort.Tensor.Type, data: typeof first, dims: number[]) => Ort.Tensor)(
    pieces[0].type, out, [...lead, total]);
}

async function runOnce(graph: Graph, value: Ort.Tensor, state: Feeds): Promise<[Ort.Tensor, Feeds]> {
  const outputs = await graph.session.run({ [graph.input]: value, ...state });
  const next: Feeds = {};
  for (const name of Object.keys(state)) {
    const produced = outputs[graph.stateOutputs[name]];
    if (!produced) throw new Error(`streaming graph returned no ${graph.stateOutputs[name]}`);
    next[name] = produced;
  }
  return [outputs[graph.output], next];
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

/** The decoder's input for level-major codes [K, n] with the levels `mask` keeps (float32 [1, D, n]). */
async function latent(loaded: Loaded, codes: Uint16Array, numFrames: number, mask: Float32Array): Promise<Ort.Tensor> {
  const { ort, codebooks } = loaded;
  return new ort.Tensor('float32', codebooks.latent(codes, numFrames, mask), [1, codebooks.dimension, numFrames]);
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

// -- progressive streams ---------------------------------------------------------------------------------------------
/** The frame streams of progressive streaming (`progressive/`): their states, apart from live mode's. */
const frameStreams: { encoder: Feeds | null; decoder: Feeds | null } = { encoder: null, decoder: null };

async function frameStream(loaded: Loaded, request: FrameStreamRequest): Promise<[unknown, Transferable[]]> {
  const { ort, description: d } = loaded;
  if (request.kind === 'frameStreamReset') {
    frameStreams[request.direction] = { ...loaded[request.direction].initial };
    return [null, []];
  }
  const direction = request.kind === 'frameStreamEncode' ? 'encoder' : 'decoder';
  const state = frameStreams[direction];
  if (!state) throw new Error(`the ${direction} frame stream was not started (frameStreamReset)`);
  if (request.kind === 'frameStreamEncode') {
    const numFrames = request.pcm.length / d.frameSize;
    if (!Number.isInteger(numFrames) || numFrames < 1) {
      throw new Error(`the encoder takes whole ${d.frameSize}-sample frames, got ${request.pcm.length} samples`);
    }
    const [codes, next] = await run(loaded.encoder, new ort.Tensor('float32', request.pcm, [1, 1, request.pcm.length]), state);
    frameStreams.encoder = next;
    const result: FrameEncodeResult = { codes: toUint16(codes), numFrames };
    return [result, [result.codes.buffer]];
  }
  const { codes, numFrames, levels } = request;
  const started = performance.now();
  // Each run of frames with the same level count gets its latent; side by side they go through one decoder call.
  let z: Float32Array | null = null;
  let dimension = 0;
  for (let start = 0; start < numFrames;) {
    let end = start + 1;
    while (end < numFrames && levels[end] === levels[start]) end++;
    const count = end - start;
    const mask = new Float32Array(d.numLevels).fill(1, 0, levels[start]);
    const part = await latent(loaded, columns(codes, d.numLevels, numFrames, start, count), count, mask);
    const data = part.data as Float32Array;
    dimension = data.length / count;
    z ??= new Float32Array(dimension * numFrames);
    for (let j = 0; j < dimension; j++) z.set(data.subarray(j * count, (j + 1) * count), j * numFrames + start);
    start = end;
  }
  if (!z) throw new Error('the decoder takes at least one frame');
  const [out, next] = await run(loaded.decoder, new ort.Tensor('float32', z, [1, dimension, numFrames]), state);
  frameStreams.decoder = next;
  const result: FrameDecodeResult = { pcm: (out.data as Float32Array).slice(), milliseconds: performance.now() - started };
  return [result, [result.pcm.buffer]];
}
