/**
 * The in-browser engine (`engine/client.ts`): started once, on first use, with the page's URL options; waits for
 * the server to have exported the ONNX graphs and shows the models' download progress.
 */

import { Engine } from './engine/client';
import type { Progress } from './engine/messages';
import { executionPreference, graphVariant, numThreads, streamingWanted } from './options';
import { serverModels } from './server-api';
import { store } from './state';
import { progress } from './ui/feedback';

let starting: Promise<Engine> | null = null;

/** The engine, started on the first call (the same promise afterwards). */
export function readyEngine(): Promise<Engine> {
  starting ??= startEngine();
  return starting;
}

async function startEngine(): Promise<Engine> {
  const engine = new Engine();
  store.update({ engine });
  const isolated = globalThis.crossOriginIsolated === true;
  try {
    await waitForGraphs();
    const model = await engine.init({
      modelBase: '/models/', wasmPaths: '/ort/', numThreads: numThreads(isolated), executionProvider: executionPreference(),
      streaming: streamingWanted(), variant: graphVariant(),
    }, showLoadProgress);
    progress(null);
    store.update({ model });
    return engine;
  } catch (error) {
    const message = (error as Error).message;
    progress(null);
    store.update({ engineError: message });
    throw new Error(`the in-browser engine could not start: ${message}. The server-side mode still works.`);
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
