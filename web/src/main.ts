/**
 * The mimistack page: open or record audio, see Mimi's 32 x T token grid, choose levels, hear the result.
 *
 * Wires the views (`views/stack.ts`, `views/signal.ts`), the player (`player.ts`), the microphone (`live.ts`) and
 * the two ways to compute: in this browser with onnxruntime-web (`engine/client.ts`; nothing is uploaded) or on
 * the server that serves the page (`server-api.ts`; for long files). `window.mimistack` exposes the state to the
 * end-to-end tests (tests/test_web_e2e.py) and the benchmark (bench/bench_web.py).
 *
 * URL options: ?threads=N (WebAssembly threads), ?ep=wasm|webgpu|auto, ?mode=browser|server,
 * ?browserLimit=SECONDS (longer files go to the server), ?streaming=0 (skip the live-mode graphs).
 */

import './styles.css';
import { decodeAudioFile, download, encodeWav } from './audio-io';
import { Engine } from './engine/client';
import type { ExecutionPreference, ModelDescription, Progress, Variant } from './engine/messages';
import { bytesToBase64, gridDuration, type TokenGrid } from './grid';
import { Capture, type LiveFrame } from './live';
import { bitrate, formatBitrate, LevelSelection } from './levels';
import { readMimi, writeMimi } from './mimi-format';
import { Player, type Track } from './player';
import { serverDecode, serverEncode, serverInfo, serverModels, type ServerInfo } from './server-api';
import { type SignalStyle, SignalView } from './views/signal';
import { StackView } from './views/stack';

type Mode = 'browser' | 'server';

interface Take {
  name: string;
  /** The bytes opened (kept for the server-side mode, which re-reads the file itself). */
  bytes: Uint8Array | null;
  original: Float32Array | null;
  grid: TokenGrid | null;
  decoded: Float32Array | null;
  decodedSelection: LevelSelection | null;
  encodeSeconds: number | null;
  decodeSeconds: number | null;
  encodedBy: Mode | 'live' | 'file';
}

const LIVE_WINDOW_FRAMES = 250; // 20 s of tokens on screen while live
const MOSHI_LEVELS = 8;
const params = new URLSearchParams(location.search);
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

const state = {
  info: null as ServerInfo | null,
  model: null as ModelDescription | null,
  engine: null as Engine | null,
  engineError: null as string | null,
  mode: (params.get('mode') === 'server' ? 'server' : 'browser') as Mode,
  selection: LevelSelection.all(32),
  take: null as Take | null,
  phase: 'starting',
  working: 0,
  error: null as string | null,
  capture: null as Capture | null,
  captureKind: null as 'record' | 'live' | null,
  liveColumns: [] as Uint16Array[],
  /** The last LIVE_WINDOW_FRAMES frames heard and decoded, for the rolling waveforms. */
  liveInput: [] as Float32Array[],
  liveOutput: [] as Float32Array[],
  liveStats: { frames: 0, encodeMilliseconds: 0, decodeMilliseconds: 0, backlog: 0 },
};

let stack: StackView;
const originalView = new SignalView($('original-view'), '#7dd3fc');
const decodedView = new SignalView($('decoded-view'), '#fbbf24');
const player = new Player();

// -- status, progress and errors ----------------------------------------------------------------------------
function showError(message: string | null): void {
  state.error = message;
  const box = $('error');
  box.hidden = !message;
  $('error-text').textContent = message ?? '';
  if (message) console.warn(`mimistack: ${message}`);
}

function progress(text: string | null, fraction?: number): void {
  const box = $('progress');
  box.hidden = text === null;
  $('progress-text').textContent = text ?? '';
  const fill = $('progress-fill');
  fill.classList.toggle('indeterminate', fraction === undefined);
  fill.style.width = fraction === undefined ? '30%' : `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
}

async function busy<T>(label: string, work: () => Promise<T>): Promise<T> {
  state.working += 1;
  state.phase = label;
  document.body.classList.add('working');
  try {
    return await work();
  } finally {
    state.working -= 1;
    if (state.working === 0) {
      state.phase = 'ready';
      document.body.classList.remove('working');
    }
  }
}

function describeEngine(): string {
  if (state.engineError) return 'in-browser engine unavailable';
  if (!engineReady) return 'in-browser engine not loaded';
  if (!state.model) return 'loading models…';
  const m = state.model;
  const threads = m.executionProvider === 'wasm' ? ` · ${m.numThreads} thread${m.numThreads === 1 ? '' : 's'}` : '';
  const variant = m.variant && m.variant !== 'fp32' ? ` · ${m.variant} graphs` : '';
  return `${m.executionProvider === 'webgpu' ? 'WebGPU' : 'WebAssembly'}${threads}${variant}${m.streaming ? ' · live ready' : ''}`;
}

function renderStatus(): void {
  const info = state.info;
  $('status-model').textContent = info ? `${info.weights} · ${info.num_levels} levels · ${info.codebook_size} codes` : '';
  $('status-engine').textContent = describeEngine();
  $('status-engine').classList.toggle('bad', !!state.engineError);
  $('status-where').textContent = state.mode === 'browser' ? 'audio stays in this page' : 'audio is sent to this server';
  $('status-where').classList.toggle('server', state.mode === 'server');
  ($('mode') as HTMLSelectElement).value = state.mode;
  const live = $('live') as HTMLButtonElement;
  live.disabled = !state.model?.streaming || state.captureKind === 'record';
  live.title = state.model?.streaming ? 'stream from the microphone through the model, hearing the selected levels'
    : 'live mode needs the streaming graphs in the browser engine';
  ($('record') as HTMLButtonElement).disabled = state.captureKind === 'live';
}

// -- the level selection ------------------------------------------------------------------------------------
let decodeTimer: number | undefined;

function setSelection(selection: LevelSelection, immediate = false): void {
  state.selection = selection;
  stack.setSelection(selection);
  renderSelection();
  window.clearTimeout(decodeTimer);
  if (state.captureKind === 'live') return; // live mode applies the selection to the next frame itself
  decodeTimer = window.setTimeout(() => void decodeTake(), immediate ? 0 : 150);
}

function renderSelection(): void {
  const info = state.info;
  const selection = state.selection;
  const count = selection.size;
  const rate = info ? bitrate(count, info.frame_rate, info.codebook_size) : 0;
  $('selection-text').textContent = count === 0 ? 'no levels' : `levels ${selection} (${count} of ${selection.numLevels})`;
  $('bitrate').textContent = formatBitrate(rate);
  $('experimental').hidden = selection.isPrefix || count === 0;
  const prefix = $('prefix') as HTMLInputElement;
  prefix.classList.toggle('custom', !selection.isPrefix);
  if (selection.isPrefix && count > 0) prefix.value = String(count);
  $('prefix-value').textContent = selection.isPrefix ? String(count) : 'custom';
  for (const button of document.querySelectorAll<HTMLButtonElement>('[data-preset]')) {
    button.classList.toggle('on', presetSelection(button.dataset.preset ?? '').equals(selection));
  }
}

function presetSelection(name: string): LevelSelection {
  const levels = state.selection.numLevels;
  if (name === 'semantic') return LevelSelection.prefix(1, levels);
  if (name === 'moshi') return LevelSelection.prefix(MOSHI_LEVELS, levels);
  return LevelSelection.all(levels);
}

// -- takes: open, encode, decode ------------------------------------------------------------------------------
function newTake(name: string, bytes: Uint8Array | null, original: Float32Array | null, encodedBy: Take['encodedBy']): Take {
  return { name, bytes, original, grid: null, decoded: null, decodedSelection: null, encodeSeconds: null, decodeSeconds: null, encodedBy };
}

function sampleRate(): number {
  return state.info?.sample_rate ?? 24000;
}

/** `?variant=fp16|int8`: reduced-precision graphs (if the export has them; errors vs fp32 in its manifest). */
function graphVariant(): Variant {
  const wanted = params.get('variant') ?? 'fp32';
  if (wanted !== 'fp32' && wanted !== 'fp16' && wanted !== 'int8') {
    throw new Error(`unknown ?variant=${wanted}; expected fp32, fp16 or int8`);
  }
  return wanted;
}

function browserLimitSeconds(): number {
  return Number(params.get('browserLimit') ?? 120);
}

async function openFile(file: File): Promise<void> {
  showError(null);
  $('notice').hidden = true;
  player.stop();
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (file.name.toLowerCase().endsWith('.mimi') || isMimi(bytes)) {
    const { grid, truncation } = readMimi(bytes, file.name);
    const take = newTake(file.name, null, null, 'file');
    take.grid = grid;
    installTake(take);
    $('source-info').textContent = `${file.name} · .mimi token file · ${formatTime(gridDuration(grid))} · levels `
      + `${new LevelSelection(grid.numLevels, grid.levelsPresent)} of ${grid.numLevels} · ${bytes.length} bytes`;
    if (truncation) showError(`${file.name}: ${truncation}`);
    const present = new LevelSelection(grid.numLevels, grid.levelsPresent.filter((l) => state.selection.has(l)));
    setSelection(present.size ? present : new LevelSelection(grid.numLevels, grid.levelsPresent), true);
    return;
  }
  await busy('reading', async () => {
    progress(`Reading ${file.name}…`);
    const { pcm, sourceRate, channels } = await decodeAudioFile(bytes, sampleRate()).catch((error: Error) => {
      throw new Error(`${file.name}: ${error.message}`);
    });
    const take = newTake(file.name, bytes, pcm, state.mode);
    installTake(take);
    $('source-info').textContent = `${file.name} · ${formatTime(pcm.length / sampleRate())} · ${sourceRate} Hz`
      + `${sourceRate !== sampleRate() ? ` → ${sampleRate()} Hz` : ''} · ${channels === 1 ? 'mono' : `${channels} channels mixed to mono`}`;
    if (state.mode === 'browser' && pcm.length / sampleRate() > browserLimitSeconds()) {
      state.mode = 'server';
      notice(`${file.name} is ${formatTime(pcm.length / sampleRate())} long: it is encoded and decoded by the server `
        + `(in-browser limit ${browserLimitSeconds()} s). Switch "Compute" back to use this browser.`);
      renderStatus();
    }
    await encodeTake(take);
  });
  await decodeTake();
}

function isMimi(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && String.fromCharCode(...bytes.subarray(0, 4)) === 'MIMI' && bytes[4] === 0;
}

function installTake(take: Take): void {
  state.take = take;
  player.set('original', take.original, sampleRate());
  player.set('decoded', null, sampleRate());
  const duration = take.grid ? gridDuration(take.grid) : (take.original?.length ?? 0) / sampleRate();
  originalView.set(take.original, sampleRate(), duration);
  decodedView.set(null, sampleRate(), duration);
  stack.setGrid(take.grid);
  renderTake();
}

async function encodeTake(take: Take): Promise<void> {
  if (!take.original) return;
  const seconds = take.original.length / sampleRate();
  const started = performance.now();
  if (state.mode === 'server') {
    progress(`Encoding ${formatTime(seconds)} on the server…`);
    if (!take.bytes) throw new Error('this take has no file to upload');
    const { grid } = await serverEncode(take.bytes, take.name);
    take.grid = grid;
    take.encodedBy = 'server';
  } else {
    const engine = await readyEngine();
    progress(`Encoding ${formatTime(seconds)} in this browser…`);
    take.grid = (await engine.encode(take.original, frameProgress(`Encoding ${formatTime(seconds)} in this browser`, started))).grid;
    take.encodedBy = 'browser';
  }
  take.encodeSeconds = (performance.now() - started) / 1000;
  progress(null);
  if (state.take === take) {
    stack.setGrid(take.grid);
    renderTake();
  }
}

let decoding: Promise<void> = Promise.resolve();

/** Decode the take with the current selection (queued: the latest selection wins). */
function decodeTake(): Promise<void> {
  decoding = decoding.then(() => decodeNow()).catch((error) => showError(String(error?.message ?? error)));
  return decoding;
}

async function decodeNow(): Promise<void> {
  const take = state.take;
  const selection = state.selection;
  if (!take?.grid || (take.decodedSelection && take.decodedSelection.equals(selection))) return;
  await busy('decoding', async () => {
    const grid = take.grid as TokenGrid;
    const seconds = gridDuration(grid);
    const started = performance.now();
    let pcm: Float32Array;
    if (state.mode === 'server') {
      progress(`Decoding levels ${selection} on the server…`);
      pcm = await serverDecode(grid, selection);
    } else {
      const label = `Decoding ${formatTime(seconds)} with levels ${selection} in this browser`;
      progress(`${label}…`);
      pcm = (await (await readyEngine()).decode(grid, selection, frameProgress(label, started))).pcm;
    }
    progress(null);
    take.decodeSeconds = (performance.now() - started) / 1000;
    if (state.take !== take) return;
    take.decoded = pcm;
    take.decodedSelection = selection;
    player.set('decoded', pcm, sampleRate());
    decodedView.set(pcm, sampleRate(), gridDuration(grid));
    renderTake();
  });
}

function renderTake(): void {
  const take = state.take;
  const grid = take?.grid;
  $('grid-info').textContent = grid
    ? `${grid.numLevels} levels × ${grid.numFrames} frames · ${formatTime(gridDuration(grid))}`
      + (take?.encodeSeconds ? ` · encoded ${take.encodedBy === 'server' ? 'on the server' : 'in the browser'} in ${take.encodeSeconds.toFixed(2)} s` : '')
    : '';
  $('decoded-label').textContent = state.captureKind === 'live' ? 'streamed with the levels selected at each moment'
    : take?.decodedSelection
    ? `levels ${take.decodedSelection} · ${formatBitrate(bitrate(take.decodedSelection.size, grid?.frameRate ?? 12.5, grid?.codebookSize ?? 2048))}`
      + (take.decodeSeconds ? ` · decoded in ${take.decodeSeconds.toFixed(2)} s` : '')
      + (take.decodedSelection.isPrefix ? '' : ' · experimental')
    : '—';
  $('original-label').textContent = state.captureKind ? 'microphone, last 20 s'
    : take?.original ? take.name : (take ? `${take.name} (tokens only)` : '—');
  for (const id of ['download-mimi', 'download-mimi-selected']) ($(id) as HTMLButtonElement).disabled = !grid;
  ($('download-wav') as HTMLButtonElement).disabled = !take?.decoded;
  ($('download-original') as HTMLButtonElement).disabled = !take?.original;
  renderPlayer();
}

/** Progress of a chunked encode or decode, reported by the worker in frames. */
function frameProgress(label: string, started: number): (p: Progress) => void {
  const frameRate = state.info?.frame_rate ?? 12.5;
  return (p) => {
    if (p.loaded === undefined || !p.total) return;
    const elapsed = (performance.now() - started) / 1000;
    progress(`${label}… ${formatTime(p.loaded / frameRate)} of ${formatTime(p.total / frameRate)} · ${elapsed.toFixed(1)} s`, p.loaded / p.total);
  };
}

// -- the in-browser engine -----------------------------------------------------------------------------------------
let engineReady: Promise<Engine> | null = null;

function readyEngine(): Promise<Engine> {
  engineReady ??= startEngine();
  return engineReady;
}

async function startEngine(): Promise<Engine> {
  const engine = new Engine();
  state.engine = engine;
  const isolated = globalThis.crossOriginIsolated === true;
  const wanted = Number(params.get('threads') ?? (isolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1));
  const numThreads = isolated ? Math.max(1, wanted) : 1;
  const executionProvider = (params.get('ep') ?? 'auto') as ExecutionPreference;
  try {
    await waitForGraphs();
    state.model = await engine.init({
      modelBase: '/models/', wasmPaths: '/ort/', numThreads, executionProvider, streaming: params.get('streaming') !== '0',
      variant: graphVariant(),
    }, showLoadProgress);
    progress(null);
    return engine;
  } catch (error) {
    state.engineError = (error as Error).message;
    progress(null);
    throw new Error(`the in-browser engine could not start: ${state.engineError}. The server-side mode still works.`);
  } finally {
    renderStatus();
  }
}

/** The server exports the graphs on first use of a checkpoint (minutes for the official model): wait for them. */
async function waitForGraphs(): Promise<void> {
  const started = performance.now();
  for (;;) {
    const status = await serverModels();
    if (status.ready) return;
    if (status.error) throw new Error(status.error);
    const elapsed = Math.round((performance.now() - started) / 1000);
    progress(`The server is exporting the ONNX graphs (first use of these weights: a few minutes)… ${elapsed} s`);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function showLoadProgress(p: Progress): void {
  if (p.stage === 'download') {
    const total = p.total ? ` / ${(p.total / 1e6).toFixed(1)} MB` : '';
    progress(`Loading models: ${p.file} ${((p.loaded ?? 0) / 1e6).toFixed(1)}${total} (${(p.fileIndex ?? 0) + 1} of ${p.fileCount})`,
      ((p.fileIndex ?? 0) + (p.total ? (p.loaded ?? 0) / p.total : 0)) / (p.fileCount ?? 1));
  } else if (p.stage === 'prepare') {
    progress('Preparing the models…');
  }
}

// -- playback ---------------------------------------------------------------------------------------------------
function renderPlayer(): void {
  const take = state.take;
  const playing = player.isPlaying;
  ($('play-original') as HTMLButtonElement).disabled = !take?.original;
  ($('play-decoded') as HTMLButtonElement).disabled = !take?.decoded;
  ($('ab') as HTMLButtonElement).disabled = !(take?.original && take?.decoded);
  ($('stop') as HTMLButtonElement).disabled = !playing;
  $('play-original').classList.toggle('on', playing && player.heard === 'original');
  $('play-decoded').classList.toggle('on', playing && player.heard === 'decoded');
  $('ab').textContent = `A/B: hearing ${player.heard === 'original' ? 'A (original)' : 'B (decoded)'}`;
  $('signal-original').classList.toggle('heard', playing && player.heard === 'original');
  $('signal-decoded').classList.toggle('heard', playing && player.heard === 'decoded');
}

function animatePlayhead(): void {
  const position = player.position();
  stack.setPlayhead(state.captureKind ? null : position);
  originalView.setPlayhead(position);
  decodedView.setPlayhead(position);
  requestAnimationFrame(animatePlayhead);
}

function play(track: Track): void {
  if (player.isPlaying && player.heard !== track) player.switchTo(track);
  else player.play(track, player.position() ?? 0);
}

// -- microphone -----------------------------------------------------------------------------------------------
async function toggleCapture(kind: 'record' | 'live'): Promise<void> {
  showError(null);
  if (state.capture) {
    await finishCapture();
    return;
  }
  player.stop();
  const engine = kind === 'live' ? await readyEngine() : null;
  const model = state.model;
  const frameSize = model?.frameSize ?? state.info?.frame_size ?? 1920;
  state.liveColumns = [];
  state.liveInput = [];
  state.liveOutput = [];
  state.liveStats = { frames: 0, encodeMilliseconds: 0, decodeMilliseconds: 0, backlog: 0 };
  const take = newTake(kind === 'live' ? 'live stream' : 'recording', null, null, kind === 'live' ? 'live' : 'browser');
  installTake(take);
  state.capture = await Capture.start({
    sampleRate: sampleRate(), frameSize, engine, selection: () => state.selection,
    monitor: ($('monitor') as HTMLInputElement).checked, onFrame: onLiveFrame,
  });
  state.captureKind = kind;
  renderTake();
  $(kind).classList.add('active');
  $(kind).textContent = kind === 'live' ? '■ Stop live' : '■ Stop recording';
  renderStatus();
}

function onLiveFrame(frame: LiveFrame): void {
  const s = state.liveStats;
  s.frames += 1;
  s.encodeMilliseconds = frame.encodeMilliseconds;
  s.decodeMilliseconds = frame.decodeMilliseconds;
  s.backlog = frame.backlog;
  const seconds = state.capture?.seconds ?? 0;
  if (frame.codes) state.liveColumns.push(frame.codes);
  for (const [list, value] of [[state.liveInput, frame.input], [state.liveOutput, frame.output]] as const) {
    if (!value) continue;
    list.push(value);
    if (list.length > LIVE_WINDOW_FRAMES) list.shift();
  }
  const frameMs = 1000 / (state.info?.frame_rate ?? 12.5);
  $('source-info').textContent = state.captureKind === 'live'
    ? `Live · ${formatTime(seconds)} · ${s.frames} frames · step ${(s.encodeMilliseconds + s.decodeMilliseconds).toFixed(1)} ms `
      + `(encode ${s.encodeMilliseconds.toFixed(1)} + decode ${s.decodeMilliseconds.toFixed(1)}) of ${frameMs} ms per frame`
      + (s.backlog > 1 ? ` · falling behind by ${s.backlog} frames` : '')
    : `Recording · ${formatTime(seconds)}`;
  if (s.frames % 3 !== 0) return; // redraw at about 4 Hz
  const frameSize = frame.input.length;
  if (frame.codes) {
    stack.setGrid(columnsToGrid(state.liveColumns, state.liveColumns.length * frameSize), LIVE_WINDOW_FRAMES);
  }
  const windowSeconds = (LIVE_WINDOW_FRAMES * frameSize) / sampleRate();
  originalView.set(rolling(state.liveInput, frameSize), sampleRate(), windowSeconds);
  if (frame.output) decodedView.set(rolling(state.liveOutput, frameSize), sampleRate(), windowSeconds);
}

/** The last frames right-aligned in a LIVE_WINDOW_FRAMES-long buffer (silence before the first). */
function rolling(frames: Float32Array[], frameSize: number): Float32Array {
  const out = new Float32Array(LIVE_WINDOW_FRAMES * frameSize);
  frames.forEach((frame, i) => out.set(frame, (LIVE_WINDOW_FRAMES - frames.length + i) * frameSize));
  return out;
}

function columnsToGrid(columns: Uint16Array[], numSamples: number): TokenGrid {
  const model = state.model as ModelDescription;
  const frames = columns.length;
  const codes = new Uint16Array(model.numLevels * frames);
  columns.forEach((column, t) => column.forEach((token, level) => (codes[level * frames + t] = token)));
  return {
    codes, numLevels: model.numLevels, numFrames: frames, numSamples, sampleRate: model.sampleRate, frameRate: model.frameRate,
    codebookSize: model.codebookSize, weightsSha256: model.weightsSha256, levelsPresent: Array.from({ length: model.numLevels }, (_, i) => i),
  };
}

async function finishCapture(): Promise<void> {
  const capture = state.capture as Capture;
  const kind = state.captureKind as 'record' | 'live';
  state.capture = null;
  $(kind).classList.remove('active');
  $(kind).textContent = kind === 'live' ? '◉ Live' : '● Record';
  await busy('finishing', async () => {
    const result = await capture.stop();
    state.captureKind = null;
    renderStatus();
    const seconds = result.pcm.length / sampleRate();
    const take = newTake(kind === 'live' ? 'live stream' : 'recording', encodeWav(result.pcm, sampleRate(), 'float32'), result.pcm,
      kind === 'live' ? 'live' : state.mode);
    installTake(take);
    $('source-info').textContent = `${take.name} · ${formatTime(seconds)} from the microphone`
      + (kind === 'live' ? ` · ${result.columns.length} frames streamed${result.underruns ? ` · ${result.underruns} playback underruns` : ''}` : '');
    if (kind === 'live' && result.columns.length) {
      take.grid = columnsToGrid(result.columns, result.pcm.length);
      stack.setGrid(take.grid);
      renderTake();
    } else {
      await encodeTake(take);
    }
  });
  await decodeTake();
}

// -- downloads ----------------------------------------------------------------------------------------------------
function baseName(): string {
  return (state.take?.name ?? 'mimistack').replace(/\.[^.]+$/, '').replace(/[^A-Za-z0-9_.-]+/g, '_') || 'mimistack';
}

function downloadMimi(selectedOnly: boolean): void {
  const grid = state.take?.grid;
  if (!grid) return;
  const levels = selectedOnly ? grid.levelsPresent.filter((l) => state.selection.has(l)) : grid.levelsPresent;
  const bytes = writeMimiFor(grid, levels);
  download(bytes, `${baseName()}${selectedOnly ? `.levels-${new LevelSelection(grid.numLevels, levels)}` : ''}.mimi`, 'application/octet-stream');
}

function writeMimiFor(grid: TokenGrid, levels: number[]): Uint8Array {
  return writeMimi(grid, levels, { source: state.take?.name ?? '', writer: 'mimistack-web' });
}

// -- test and benchmark hooks ----------------------------------------------------------------------------------
interface BenchOptions {
  seconds?: number;
  repeats?: number;
  levels?: string;
  stream?: boolean;
  /** Frames per streaming-decoder call to time besides 1 (default 2 and 4). */
  framesPerStep?: number[];
}

async function bench(options: BenchOptions = {}): Promise<Record<string, unknown>> {
  const engine = await readyEngine();
  const model = state.model as ModelDescription;
  const seconds = options.seconds ?? 10;
  const repeats = options.repeats ?? 3;
  const samples = Math.round(seconds * model.sampleRate);
  const source = state.take?.original;
  const pcm = new Float32Array(samples);
  for (let i = 0; i < samples; i++) {
    pcm[i] = source && source.length ? source[i % source.length] : 0.3 * Math.sin((2 * Math.PI * 180 * i) / model.sampleRate) * Math.sin(i / 4000);
  }
  const selection = options.levels ? LevelSelection.parse(options.levels, model.numLevels) : LevelSelection.all(model.numLevels);
  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
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
    variant: model.variant,
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    encodeMs: median(encodeMs), decodeMs: median(decodeMs),
    encodeRealtime: seconds / (median(encodeMs) / 1000), decodeRealtime: seconds / (median(decodeMs) / 1000),
  };
  if (model.streaming && options.stream !== false) {
    // Frame by frame (live mode while it keeps up), then 2 and 4 frames per call (live mode catching up).
    const stream = await engine.streamDecode(grid, selection, 1);
    const total = stream.stepMilliseconds.reduce((a, b) => a + b, 0);
    result.streamFrameMsMedian = median(stream.stepMilliseconds);
    result.streamDecodeRealtime = seconds / (total / 1000);
    for (const framesPerStep of options.framesPerStep ?? [2, 4]) {
      const chunked = await engine.streamDecode(grid, selection, framesPerStep);
      const sum = chunked.stepMilliseconds.reduce((a, b) => a + b, 0);
      result[`stream${framesPerStep}StepMsMedian`] = median(chunked.stepMilliseconds);
      result[`stream${framesPerStep}DecodeRealtime`] = seconds / (sum / 1000);
    }
  }
  return result;
}

function float32Base64(values: Float32Array | null | undefined): string | null {
  return values ? bytesToBase64(new Uint8Array(values.buffer, values.byteOffset, values.byteLength)) : null;
}

const hooks = {
  state: () => {
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
      live: state.captureKind === 'live' ? { ...state.liveStats, columns: state.liveColumns.length } : null,
      capture: state.capture ? { kind: state.captureKind, seconds: state.capture.seconds } : null,
    };
  },
  dump: () => {
    const take = state.take;
    const codes = take?.grid?.codes;
    return {
      codes: codes ? bytesToBase64(new Uint8Array(codes.buffer, codes.byteOffset, codes.byteLength)) : null,
      decoded: float32Base64(take?.decoded),
      original: float32Base64(take?.original),
    };
  },
  setSelection: (text: string) => setSelection(LevelSelection.parse(text, state.selection.numLevels), true),
  bench,
};
(window as unknown as { mimistack: typeof hooks }).mimistack = hooks;

// -- wiring -----------------------------------------------------------------------------------------------------
function notice(text: string): void {
  const box = $('notice');
  box.textContent = text;
  box.hidden = false;
}

function formatTime(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - minutes * 60).toFixed(1).padStart(4, '0')}`;
}

function guard(work: () => Promise<void> | void): () => void {
  return () => {
    Promise.resolve()
      .then(work)
      .catch((error) => {
        progress(null);
        showError(error instanceof Error ? error.message : String(error));
      });
  };
}

async function main(): Promise<void> {
  try {
    state.info = await serverInfo();
  } catch (error) {
    showError((error as Error).message);
    state.phase = 'error';
    return;
  }
  const info = state.info;
  state.selection = LevelSelection.all(info.num_levels);
  stack = new StackView($('stack'), info.num_levels, (selection) => setSelection(selection));
  const prefix = $('prefix') as HTMLInputElement;
  prefix.max = String(info.num_levels);
  prefix.value = String(info.num_levels);
  $('preset-all').textContent = `All ${info.num_levels}`;
  $('per-level').textContent = `${formatBitrate(bitrate(1, info.frame_rate, info.codebook_size))} per level`;
  if (info.random_weights) {
    $('banner').hidden = false;
    $('banner').textContent = 'Random weights: the pipeline runs for real, but the decoded audio is meaningless noise. '
      + 'Serve the real weights (mimistack serve --weights kyutai/mimi) to hear Mimi.';
  }
  renderSelection();
  renderStatus();
  renderTake();

  prefix.addEventListener('input', () => setSelection(LevelSelection.prefix(Number(prefix.value), info.num_levels)));
  for (const button of document.querySelectorAll<HTMLButtonElement>('[data-preset]')) {
    button.addEventListener('click', () => setSelection(presetSelection(button.dataset.preset ?? 'all')));
  }
  const input = $('file') as HTMLInputElement;
  input.addEventListener('change', guard(async () => {
    const file = input.files?.[0];
    input.value = '';
    if (file) await openFile(file);
  }));
  document.addEventListener('dragover', (event) => {
    event.preventDefault();
    document.body.classList.add('dragging');
  });
  document.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
  document.addEventListener('drop', (event) => {
    event.preventDefault();
    document.body.classList.remove('dragging');
    const file = event.dataTransfer?.files?.[0];
    if (file) guard(() => openFile(file))();
  });
  $('record').addEventListener('click', guard(() => toggleCapture('record')));
  $('live').addEventListener('click', guard(() => toggleCapture('live')));
  ($('mode') as HTMLSelectElement).addEventListener('change', guard(async () => {
    state.mode = ($('mode') as HTMLSelectElement).value as Mode;
    $('notice').hidden = true;
    renderStatus();
    if (state.take) state.take.decodedSelection = null;
    await decodeTake();
  }));
  $('play-original').addEventListener('click', () => play('original'));
  $('play-decoded').addEventListener('click', () => play('decoded'));
  $('ab').addEventListener('click', () => {
    const next: Track = player.heard === 'original' ? 'decoded' : 'original';
    if (player.isPlaying) player.switchTo(next);
    else player.play(next);
  });
  $('stop').addEventListener('click', () => player.stop());
  player.onChange = renderPlayer;
  document.addEventListener('keydown', (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    if (event.key === ' ' && state.take?.decoded) {
      event.preventDefault();
      if (player.isPlaying) player.switchTo(player.heard === 'original' ? 'decoded' : 'original');
      else player.play('decoded');
    }
  });
  for (const radio of document.querySelectorAll<HTMLInputElement>('input[name="view"]')) {
    radio.addEventListener('change', () => {
      const style = radio.value as SignalStyle;
      originalView.setStyle(style);
      decodedView.setStyle(style);
    });
  }
  $('download-mimi').addEventListener('click', () => downloadMimi(false));
  $('download-mimi-selected').addEventListener('click', () => downloadMimi(true));
  $('download-wav').addEventListener('click', () => {
    const take = state.take;
    if (take?.decoded && take.decodedSelection) {
      download(encodeWav(take.decoded, sampleRate(), 'pcm16'), `${baseName()}.levels-${take.decodedSelection}.wav`, 'audio/wav');
    }
  });
  $('download-original').addEventListener('click', () => {
    const take = state.take;
    if (take?.original) download(encodeWav(take.original, sampleRate(), 'pcm16'), `${baseName()}.original.wav`, 'audio/wav');
  });
  $('error-close').addEventListener('click', () => showError(null));
  requestAnimationFrame(animatePlayhead);
  state.phase = 'ready';
  if (state.mode === 'browser') {
    readyEngine().catch((error) => showError(error.message));
  }
}

void main();
