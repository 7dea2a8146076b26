/** The header's status pills (model, engine, where audio goes), the "Compute" select, the capture buttons' state. */

import type { Mode } from '../options';
import { type State, store } from '../state';
import { decodeTake } from '../takes';
import { $, button } from './dom';
import { guard } from './feedback';

/** The state keys `renderStatus` shows. */
export const STATUS_KEYS: readonly (keyof State)[] = ['mode', 'model', 'engineError', 'captureKind'];

function describeEngine(state: Readonly<State>): string {
  if (state.engineError) return 'in-browser engine unavailable';
  if (!state.engine) return 'in-browser engine not loaded';
  if (!state.model) return 'loading models…';
  const m = state.model;
  const threads = m.executionProvider === 'wasm' ? ` · ${m.numThreads} thread${m.numThreads === 1 ? '' : 's'}` : '';
  const variant = m.variant && m.variant !== 'fp32' ? ` · ${m.variant} graphs` : '';
  return `${m.executionProvider === 'webgpu' ? 'WebGPU' : 'WebAssembly'}${threads}${variant}${m.streaming ? ' · live ready' : ''}`;
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
    : 'live mode needs the streaming graphs in the browser engine';
  button('record').disabled = state.captureKind === 'live';
}

/** "Compute: in this browser / on the server": switching re-decodes the take where it now runs. */
export function wireMode(): void {
  const select = $<HTMLSelectElement>('mode');
  select.addEventListener('change', guard(async () => {
    $('notice').hidden = true;
    store.update({ mode: select.value as Mode });
    const take = store.get().take;
    if (take) take.decodedSelection = null;
    await decodeTake();
  }));
}
