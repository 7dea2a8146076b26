/** The header's status pills (model, engine, where audio goes), the "Compute" select, the models line (which bundle,
 * its size, from cache or not, "forget downloaded models"), the capture buttons' state. */

import type { Site } from '../bundles';
import { forgetModels } from '../engine/model-cache';
import { isolationText } from '../isolation';
import { type Mode, serverAvailable, urlWithBundle } from '../options';
import { type State, store } from '../state';
import { decodeTake } from '../takes';
import { $, button } from './dom';
import { guard } from './feedback';

/** The state keys `renderStatus` shows. */
export const STATUS_KEYS: readonly (keyof State)[] = ['mode', 'model', 'engineError', 'captureKind'];

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

function describeEngine(state: Readonly<State>): string {
  if (state.engineError) return 'in-browser engine unavailable';
  if (!state.engine) return 'in-browser engine not loaded';
  if (!state.model) return 'loading models…';
  const m = state.model;
  const n = m.numThreads;
  const threads = m.executionProvider !== 'wasm' ? ''
    : globalThis.crossOriginIsolated ? ` · ${n} thread${n === 1 ? '' : 's'} (${isolationText()})` : ` · 1 thread: ${isolationText()}`;
  return `${m.executionProvider === 'webgpu' ? 'WebGPU' : 'WebAssembly'}${threads} · ${m.bundle}${m.streaming ? ' · live ready' : ''}`;
}

export function renderStatus(): void {
  const state = store.get();
  const info = state.info;
  $('status-model').textContent = info ? `${info.weights} · ${info.num_levels} levels · ${info.codebook_size} codes` : '';
  $('status-engine').textContent = describeEngine(state);
  $('status-engine').classList.toggle('bad', !!state.engineError);
  $('status-where').textContent = state.mode === 'browser' ? 'audio stays in this page' : 'audio is sent to this server';
  $('status-where').classList.toggle('server', state.mode === 'server');
  $<HTMLSelectElement>('mode').value = state.mode;
  const live = button('live');
  live.disabled = !state.model?.streaming || state.captureKind === 'record';
  live.title = state.model?.streaming ? 'stream from the microphone through the model, hearing the selected levels'
    : 'live mode needs the in-browser engine';
  button('record').disabled = state.captureKind === 'live';
  const m = state.model;
  if (m) {
    const from = m.cachedBytes === m.bytes ? 'from this browser\'s cache'
      : m.cachedBytes ? `downloaded (${mb(m.cachedBytes)} from cache)` : 'downloaded';
    $('models-note').textContent = [`${mb(m.bytes)} ${from}`, ...m.notes, ...(m.webgpu ? [m.webgpu] : [])].join(' · ');
  } else if (state.engineError) {
    $('models-note').textContent = '';
  }
}

/** "Compute: in this browser / on the server": switching re-decodes the take where it now runs. Without a server
 * (a static site) the page is browser-only and the select is hidden. */
export function wireMode(): void {
  const select = $<HTMLSelectElement>('mode');
  if (!serverAvailable()) {
    (select.closest('label') as HTMLElement).hidden = true;
    store.update({ mode: 'browser' });
  }
  select.addEventListener('change', guard(async () => {
    $('notice').hidden = true;
    store.update({ mode: select.value as Mode });
    const take = store.get().take;
    if (take) take.decodedSelection = null;
    await decodeTake();
  }));
}

function choiceLabel(choice: Site['choices'][number]): string {
  const parts = [choice.name];
  if (choice.bytes) parts.push(mb(choice.bytes));
  const { code_agreement_vs_exact: agreement, decode_snr_db_vs_exact: snr } = choice.measured;
  if (choice.name !== 'exact' && typeof agreement === 'number') parts.push(`${(100 * agreement).toFixed(1)} % of codes as exact`);
  if (choice.name !== 'exact' && typeof snr === 'number') parts.push(`SNR ${snr.toFixed(1)} dB vs exact`);
  return parts.join(' · ');
}

/** The bundle select (sizes before anything downloads; switching reloads with ?bundle=) and "forget". */
export function wireModels(models: Site): void {
  const select = $<HTMLSelectElement>('bundle');
  for (const choice of models.choices) select.add(new Option(choiceLabel(choice), choice.name));
  select.value = models.chosen.name;
  select.disabled = models.choices.length < 2;
  select.addEventListener('change', () => location.assign(urlWithBundle(select.value)));
  button('forget').addEventListener('click', guard(async () => {
    const forgotten = await forgetModels();
    $('models-note').textContent = forgotten ? 'downloaded models forgotten: the next visit downloads them again'
      : 'no downloaded models were kept';
  }));
}
