/**
 * Takes: what was opened or recorded, its token grid and its decoded audio. Installs a take in the views, encodes
 * it (in this browser or on the server) and decodes it with the current level selection, queued so that the
 * latest selection wins.
 */

import { readyEngine } from './browser-engine';
import type { Progress } from './engine/messages';
import { gridDuration, type TokenGrid } from './grid';
import { serverDecode, serverEncode } from './server-api';
import { sampleRate, store, type Take } from './state';
import { formatTime } from './ui/dom';
import { busy, progress, showError } from './ui/feedback';
import { renderTake } from './ui/take';
import { decodedView, originalView, player, stack } from './ui/views';

/** Make `take` the current one: its audio goes to the player and views (the decoded side empty until decoded). */
export function installTake(take: Take): void {
  store.update({ take });
  const rate = sampleRate();
  player.set('original', take.original, rate);
  player.set('decoded', null, rate);
  const duration = take.grid ? gridDuration(take.grid) : (take.original?.length ?? 0) / rate;
  originalView.set(take.original, rate, duration);
  decodedView.set(null, rate, duration);
  stack.setGrid(take.grid);
  renderTake();
}

export async function encodeTake(take: Take): Promise<void> {
  if (!take.original) return;
  const seconds = take.original.length / sampleRate();
  const started = performance.now();
  if (store.get().mode === 'server') {
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
  if (store.get().take === take) {
    stack.setGrid(take.grid);
    renderTake();
  }
}

let decoding: Promise<void> = Promise.resolve();

/** Decode the take with the current selection (queued: the latest selection wins). */
export function decodeTake(): Promise<void> {
  decoding = decoding.then(() => decodeNow()).catch((error) => showError(String(error?.message ?? error)));
  return decoding;
}

async function decodeNow(): Promise<void> {
  const { take, selection, mode } = store.get();
  if (!take?.grid || (take.decodedSelection && take.decodedSelection.equals(selection))) return;
  await busy('decoding', async () => {
    const grid = take.grid as TokenGrid;
    const seconds = gridDuration(grid);
    const started = performance.now();
    let pcm: Float32Array;
    if (mode === 'server') {
      progress(`Decoding levels ${selection} on the server…`);
      pcm = await serverDecode(grid, selection);
    } else {
      const label = `Decoding ${formatTime(seconds)} with levels ${selection} in this browser`;
      progress(`${label}…`);
      pcm = (await (await readyEngine()).decode(grid, selection, frameProgress(label, started))).pcm;
    }
    progress(null);
    take.decodeSeconds = (performance.now() - started) / 1000;
    if (store.get().take !== take) return;
    take.decoded = pcm;
    take.decodedSelection = selection;
    player.set('decoded', pcm, sampleRate());
    decodedView.set(pcm, sampleRate(), gridDuration(grid));
    renderTake();
  });
}

/** Progress of a chunked encode or decode, reported by the worker in frames. */
function frameProgress(label: string, started: number): (p: Progress) => void {
  const frameRate = store.get().info?.frame_rate ?? 12.5;
  return (p) => {
    if (p.loaded === undefined || !p.total) return;
    const elapsed = (performance.now() - started) / 1000;
    progress(`${label}… ${formatTime(p.loaded / frameRate)} of ${formatTime(p.total / frameRate)} · ${elapsed.toFixed(1)} s`, p.loaded / p.total);
  };
}
