/**
 * Start-up: find the models (`bundles.ts`: this site's models/bundles.json or ?model=) and what they are (a
 * mimistack server's `/api/info`, or a static site's bundle manifest), build the stack for their levels, wire the
 * controls (`ui/*.ts`), subscribe the renderers to the state (`state.ts`) and start the in-browser engine. Then
 * `<body data-ready>` says the page is up ("true", or "error" when the server could not be asked).
 *
 * `?test` pages also load the test hooks (`testing/hooks.ts`, `window.mimistack`) and `?bench` pages the hooks and
 * the benchmark (`testing/bench.ts`), each a chunk of its own that a plain page never loads.
 */

import { readyEngine } from './browser-engine';
import { pageInfo, site } from './bundles';
import { bitrate, formatBitrate } from './levels';
import { testingWanted } from './options';
import { store } from './state';
import { wireProgressive } from './progressive/wire';
import { wireCapture } from './ui/capture';
import { $ } from './ui/dom';
import { wireDownloads } from './ui/downloads';
import { showError } from './ui/feedback';
import { renderSelection, wireLevels } from './ui/levels';
import { startPlayheads, wirePlayer } from './ui/player';
import { wireSource } from './ui/source';
import { renderStatus, STATUS_KEYS, wireModels, wireMode } from './ui/status';
import { renderTake } from './ui/take';
import { wireSignalStyle } from './ui/views';

async function loadTesting(): Promise<void> {
  const wanted = testingWanted();
  if (!wanted.hooks) return;
  const [{ installHooks }, bench] = await Promise.all([
    import('./testing/hooks'),
    wanted.bench ? import('./testing/bench') : null,
  ]);
  installHooks(bench?.bench);
}

/** Everything after the models' description; false when it could not be had. */
async function setUp(): Promise<boolean> {
  let info;
  try {
    info = await pageInfo();
    wireModels(await site());
  } catch (error) {
    showError((error as Error).message);
    store.update({ phase: 'error' });
    return false;
  }
  store.update({ info });
  wireLevels(info.num_levels);
  $('per-level').textContent = `${formatBitrate(bitrate(1, info.frame_rate, info.codebook_size))} per level`;
  if (info.random_weights) {
    $('banner').hidden = false;
    $('banner').textContent = 'Random weights: the pipeline runs for real, but the decoded audio is meaningless noise. '
      + 'Serve the real weights (mimistack serve --weights kyutai/mimi) to hear Mimi.';
  }
  store.subscribe((_, changed) => {
    if (changed.has('selection')) renderSelection();
    if (STATUS_KEYS.some((key) => changed.has(key))) renderStatus();
  });
  renderSelection();
  renderStatus();
  renderTake();

  wireSource();
  wireCapture();
  wireMode();
  wirePlayer();
  wireSignalStyle();
  wireDownloads();
  wireProgressive();
  $('error-close').addEventListener('click', () => showError(null));
  startPlayheads();
  store.update({ phase: 'ready' });
  if (store.get().mode === 'browser') {
    readyEngine().catch((error) => showError(error.message));
  }
  return true;
}

export async function start(): Promise<void> {
  const testing = loadTesting().catch((error) => showError(String(error)));
  const ok = await setUp();
  await testing;
  document.body.dataset.ready = ok ? 'true' : 'error';
}
