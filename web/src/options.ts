/**
 * The page's URL options, read once from `location.search`:
 *
 * ?threads=N (WebAssembly threads), ?ep=wasm|webgpu|auto, ?mode=browser|server, ?variant=fp32|fp16|int8,
 * ?browserLimit=SECONDS (longer files go to the server), ?streaming=0 (skip the live-mode graphs);
 * ?test loads the end-to-end test hooks (`window.mimistack`, `testing/hooks.ts`), ?bench those and the
 * benchmark (`testing/bench.ts`). Neither is part of the page's main chunk.
 */

import type { ExecutionPreference, Variant } from './engine/messages';

const params = new URLSearchParams(location.search);

export type Mode = 'browser' | 'server';

export function initialMode(): Mode {
  return params.get('mode') === 'server' ? 'server' : 'browser';
}

/** `?variant=fp16|int8`: reduced-precision graphs (if the export has them; errors vs fp32 in its manifest). */
export function graphVariant(): Variant {
  const wanted = params.get('variant') ?? 'fp32';
  if (wanted !== 'fp32' && wanted !== 'fp16' && wanted !== 'int8') {
    throw new Error(`unknown ?variant=${wanted}; expected fp32, fp16 or int8`);
  }
  return wanted;
}

export function browserLimitSeconds(): number {
  return Number(params.get('browserLimit') ?? 120);
}

/** WebAssembly threads: ?threads=N when the page is cross-origin isolated (else 1), by default up to 4. */
export function numThreads(isolated: boolean): number {
  const wanted = Number(params.get('threads') ?? (isolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1));
  return isolated ? Math.max(1, wanted) : 1;
}

export function executionPreference(): ExecutionPreference {
  return (params.get('ep') ?? 'auto') as ExecutionPreference;
}

export function streamingWanted(): boolean {
  return params.get('streaming') !== '0';
}

/** `?test`: the test hooks; `?bench`: the test hooks and the benchmark. */
export function testingWanted(): { hooks: boolean; bench: boolean } {
  const bench = params.has('bench');
  return { hooks: bench || params.has('test'), bench };
}
