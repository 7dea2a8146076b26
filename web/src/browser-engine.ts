/**
 * The in-browser engine (`engine/client.ts`): started once, on first use, with the page's URL options and the web
 * bundle `bundles.ts` chose; shows the models' progress (bytes of all files, "from cache" when they were kept).
 */

import { bundleManifest, site } from './bundles';
import { Engine } from './engine/client';
import type { Progress } from './engine/messages';
import { executionPreference, numThreads, serverAvailable } from './options';
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
  try {
    const { chosen } = await site();
    const manifest = await bundleManifest();
    const model = await engine.init({
      manifestUrl: chosen.manifestUrl, manifest, wasmPaths: new URL('ort/', document.baseURI).href,
      numThreads: numThreads(globalThis.crossOriginIsolated === true), executionProvider: executionPreference(),
    }, showLoadProgress(chosen.name));
    progress(null);
    store.update({ model });
    return engine;
  } catch (error) {
    const message = (error as Error).message;
    progress(null);
    store.update({ engineError: message });
    throw new Error(`the in-browser engine could not start: ${message}`
      + (serverAvailable() ? '. The server-side mode still works.' : ''));
  }
}

const mb = (bytes: number) => (bytes / 1e6).toFixed(1);

function showLoadProgress(bundle: string): (p: Progress) => void {
  let note = '';
  return (p) => {
    if (p.note) note = ` · ${p.note}`;
    if (p.stage === 'download') {
      const loaded = p.loaded ?? 0;
      const total = p.total ?? 0;
      progress(`Loading the ${bundle} models: ${mb(loaded)} of ${mb(total)} MB (${p.file}${p.fromCache ? ', from cache' : ''})${note}`,
        total ? loaded / total : undefined);
    } else if (p.stage === 'prepare') {
      progress(`Preparing the models…${note}`);
    }
  };
}
