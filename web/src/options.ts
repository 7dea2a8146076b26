/**
 * The page's URL options, read once from `location.search`:
 *
 * ?bundle=exact|light (which web bundle; default the models index's "default"), ?model=URL (a bundle folder, its
 * manifest.json or a bundles.json elsewhere), ?threads=N (WebAssembly threads), ?ep=wasm|webgpu|auto,
 * ?mode=browser|server (server only where a mimistack server serves the page), ?browserLimit=SECONDS (longer files
 * go to the server, when there is one); ?test loads the end-to-end test hooks (`window.mimistack`,
 * `testing/hooks.ts`), ?bench those and the benchmark (`testing/bench.ts`). Neither is part of the page's main chunk.
 */

import type { ExecutionPreference } from './engine/messages';

const params = new URLSearchParams(location.search);

export type Mode = 'browser' | 'server';

let server = false;

/** Set once `models/bundles.json` said whether a mimistack server (with its /api) serves this page. */
export function setServerAvailable(available: boolean): void {
  server = available;
}

export function serverAvailable(): boolean {
  return server;
}

export function initialMode(): Mode {
  return params.get('mode') === 'server' ? 'server' : 'browser';
}

/** `?bundle=NAME`, or null for the models index's default. */
export function bundleWanted(): string | null {
  return params.get('bundle');
}

/** `?model=URL` (absolute, or relative to this page), or null. */
export function modelUrl(): string | null {
  const value = params.get('model');
  return value ? new URL(value, document.baseURI).href : null;
}

/** This page's URL with `?bundle=name` (switching bundles reloads the page with it). */
export function urlWithBundle(name: string): string {
  const next = new URLSearchParams(params);
  next.set('bundle', name);
  return `${location.pathname}?${next}`;
}

/** Files longer than this go to the server (never, without a server). */
export function browserLimitSeconds(): number {
  return server ? Number(params.get('browserLimit') ?? 120) : Infinity;
}

/** WebAssembly threads: ?threads=N when the page is cross-origin isolated (else 1), by default up to 4. */
export function numThreads(isolated: boolean): number {
  const wanted = Number(params.get('threads') ?? (isolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1));
  return isolated ? Math.max(1, wanted) : 1;
}

export function executionPreference(): ExecutionPreference {
  const wanted = params.get('ep') ?? 'auto';
  if (wanted !== 'auto' && wanted !== 'wasm' && wanted !== 'webgpu') {
    throw new Error(`unknown ?ep=${wanted}; expected auto, wasm or webgpu`);
  }
  return wanted;
}

/** `?test`: the test hooks; `?bench`: the test hooks and the benchmark. */
export function testingWanted(): { hooks: boolean; bench: boolean } {
  const bench = params.has('bench');
  return { hooks: bench || params.has('test'), bench };
}
