/**
 * The level selection's controls: the stack's toggles and solo buttons (`views/stack.ts`), the prefix slider and
 * the presets, and the summary (levels, bitrate, "experimental" when the selection is not a prefix). A new
 * selection re-decodes the take after a short pause (live mode applies it to the next frame itself).
 */

import { bitrate, formatBitrate, LevelSelection } from '../levels';
import { MOSHI_LEVELS, store } from '../state';
import { decodeTake } from '../takes';
import { $ } from './dom';
import { createStack, stack } from './views';

let decodeTimer: number | undefined;

export function setSelection(selection: LevelSelection, immediate = false): void {
  store.update({ selection }); // renders it (app.ts subscribes renderSelection)
  window.clearTimeout(decodeTimer);
  if (store.get().captureKind === 'live') return;
  decodeTimer = window.setTimeout(() => void decodeTake(), immediate ? 0 : 150);
}

export function renderSelection(): void {
  const { info, selection } = store.get();
  stack.setSelection(selection);
  const count = selection.size;
  const rate = info ? bitrate(count, info.frame_rate, info.codebook_size) : 0;
  $('selection-text').textContent = count === 0 ? 'no levels' : `levels ${selection} (${count} of ${selection.numLevels})`;
  $('bitrate').textContent = formatBitrate(rate);
  $('experimental').hidden = selection.isPrefix || count === 0;
  const prefix = $<HTMLInputElement>('prefix');
  prefix.classList.toggle('custom', !selection.isPrefix);
  if (selection.isPrefix && count > 0) prefix.value = String(count);
  $('prefix-value').textContent = selection.isPrefix ? String(count) : 'custom';
  for (const button of document.querySelectorAll<HTMLButtonElement>('[data-preset]')) {
    button.classList.toggle('on', presetSelection(button.dataset.preset ?? '').equals(selection));
  }
}

function presetSelection(name: string): LevelSelection {
  const levels = store.get().selection.numLevels;
  if (name === 'semantic') return LevelSelection.prefix(1, levels);
  if (name === 'moshi') return LevelSelection.prefix(MOSHI_LEVELS, levels);
  return LevelSelection.all(levels);
}

/** Make the stack for `numLevels` levels and wire the slider and presets. */
export function wireLevels(numLevels: number): void {
  store.update({ selection: LevelSelection.all(numLevels) });
  createStack(numLevels, (selection) => setSelection(selection));
  const prefix = $<HTMLInputElement>('prefix');
  prefix.max = String(numLevels);
  prefix.value = String(numLevels);
  $('preset-all').textContent = `All ${numLevels}`;
  prefix.addEventListener('input', () => setSelection(LevelSelection.prefix(Number(prefix.value), numLevels)));
  for (const button of document.querySelectorAll<HTMLButtonElement>('[data-preset]')) {
    button.addEventListener('click', () => setSelection(presetSelection(button.dataset.preset ?? 'all')));
  }
}
