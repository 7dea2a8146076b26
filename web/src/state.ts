/**
 * The page's state: one typed object in a small store (`get`, `update`, `subscribe`).
 *
 * `update` replaces the top-level object and tells the subscribers which keys changed; `app.ts` subscribes the
 * renderers (status, selection). Two parts are mutable records on purpose, filled in place and rendered by their
 * owners: the current take (its grid and decoded audio arrive as encode and decode finish; `take` identity says
 * which take is current, so a late result for an old take is dropped) and the live buffers (one push per 80 ms
 * frame while streaming).
 */

import type { Engine } from './engine/client';
import type { ModelDescription } from './engine/messages';
import type { TokenGrid } from './grid';
import { LevelSelection } from './levels';
import type { Capture } from './live';
import { initialMode, type Mode } from './options';
import type { ServerInfo } from './server-api';

export type { Mode } from './options';

/** 20 s of tokens on screen while live. */
export const LIVE_WINDOW_FRAMES = 250;
export const MOSHI_LEVELS = 8;

export interface Take {
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

export type CaptureKind = 'record' | 'live';

export interface LiveStats {
  frames: number;
  encodeMilliseconds: number;
  decodeMilliseconds: number;
  backlog: number;
  /** Sums over the frames so far (the benchmark's real-time factor and latency). */
  busyMilliseconds: number;
  backlogSum: number;
  maxBacklog: number;
}

export interface LiveBuffers {
  /** Code columns of every frame streamed so far. */
  columns: Uint16Array[];
  /** The last LIVE_WINDOW_FRAMES frames heard and decoded, for the rolling waveforms. */
  input: Float32Array[];
  output: Float32Array[];
  stats: LiveStats;
}

export interface State {
  info: ServerInfo | null;
  model: ModelDescription | null;
  /** The in-browser engine, once something asked for it (it may still be loading: see `model`). */
  engine: Engine | null;
  engineError: string | null;
  mode: Mode;
  selection: LevelSelection;
  take: Take | null;
  phase: string;
  /** Tasks in flight (`busy`): the page is idle at 0. */
  working: number;
  error: string | null;
  capture: Capture | null;
  captureKind: CaptureKind | null;
  live: LiveBuffers;
}

export type Listener<S> = (state: Readonly<S>, changed: ReadonlySet<keyof S>) => void;

export class Store<S extends object> {
  private current: S;
  private readonly listeners = new Set<Listener<S>>();

  constructor(initial: S) {
    this.current = initial;
  }

  get(): Readonly<S> {
    return this.current;
  }

  /** Merge `patch` (or what it returns for the current state); subscribers hear of the keys whose value changed. */
  update(patch: Partial<S> | ((state: Readonly<S>) => Partial<S>)): void {
    const changes = typeof patch === 'function' ? patch(this.current) : patch;
    const changed = new Set<keyof S>();
    for (const key of Object.keys(changes) as (keyof S)[]) {
      if (!Object.is(this.current[key], changes[key])) changed.add(key);
    }
    if (changed.size === 0) return;
    this.current = { ...this.current, ...changes };
    for (const listener of this.listeners) listener(this.current, changed);
  }

  /** Call `listener` after every change; returns the unsubscribe function. */
  subscribe(listener: Listener<S>): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

export function emptyLive(): LiveBuffers {
  return { columns: [], input: [], output: [], stats: { frames: 0, encodeMilliseconds: 0, decodeMilliseconds: 0, backlog: 0, busyMilliseconds: 0, backlogSum: 0, maxBacklog: 0 } };
}

export const store = new Store<State>({
  info: null,
  model: null,
  engine: null,
  engineError: null,
  mode: initialMode(),
  selection: LevelSelection.all(32),
  take: null,
  phase: 'starting',
  working: 0,
  error: null,
  capture: null,
  captureKind: null,
  live: emptyLive(),
});

export function newTake(name: string, bytes: Uint8Array | null, original: Float32Array | null, encodedBy: Take['encodedBy']): Take {
  return { name, bytes, original, grid: null, decoded: null, decodedSelection: null, encodeSeconds: null, decodeSeconds: null, encodedBy };
}

/** The model's sample rate (24 kHz for Mimi) once the server said it. */
export function sampleRate(): number {
  return store.get().info?.sample_rate ?? 24000;
}
