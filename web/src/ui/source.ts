/**
 * Opening a file: the file picker and drag-and-drop. Audio is decoded (and resampled to 24 kHz), then encoded
 * and decoded; a `.mimi` token file is read as it is (tokens only) and decoded with the levels it has. Files
 * longer than ?browserLimit go to the server.
 */

import { decodeAudioFile } from '../audio-io';
import { gridDuration } from '../grid';
import { LevelSelection } from '../levels';
import { readMimi } from '../mimi-format';
import { browserLimitSeconds } from '../options';
import { newTake, sampleRate, store } from '../state';
import { decodeTake, encodeTake, installTake } from '../takes';
import { $, formatTime } from './dom';
import { busy, guard, notice, progress, showError } from './feedback';
import { setSelection } from './levels';
import { player } from './views';

function isMimi(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && String.fromCharCode(...bytes.subarray(0, 4)) === 'MIMI' && bytes[4] === 0;
}

export async function openFile(file: File): Promise<void> {
  showError(null);
  $('notice').hidden = true;
  player.stop();
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (file.name.toLowerCase().endsWith('.mimi') || isMimi(bytes)) {
    openMimi(file.name, bytes);
    return;
  }
  await busy('reading', async () => {
    progress(`Reading ${file.name}…`);
    const rate = sampleRate();
    const { pcm, sourceRate, channels } = await decodeAudioFile(bytes, rate).catch((error: Error) => {
      throw new Error(`${file.name}: ${error.message}`);
    });
    const take = newTake(file.name, bytes, pcm, store.get().mode);
    installTake(take);
    const duration = formatTime(pcm.length / rate);
    $('source-info').textContent = `${file.name} · ${duration} · ${sourceRate} Hz`
      + `${sourceRate !== rate ? ` → ${rate} Hz` : ''} · ${channels === 1 ? 'mono' : `${channels} channels mixed to mono`}`;
    if (store.get().mode === 'browser' && pcm.length / rate > browserLimitSeconds()) {
      store.update({ mode: 'server' });
      notice(`${file.name} is ${duration} long: it is encoded and decoded by the server `
        + `(in-browser limit ${browserLimitSeconds()} s). Switch "Compute" back to use this browser.`);
    }
    await encodeTake(take);
  });
  await decodeTake();
}

function openMimi(name: string, bytes: Uint8Array): void {
  const { grid, truncation } = readMimi(bytes, name);
  const take = newTake(name, null, null, 'file');
  take.grid = grid;
  installTake(take);
  $('source-info').textContent = `${name} · .mimi token file · ${formatTime(gridDuration(grid))} · levels `
    + `${new LevelSelection(grid.numLevels, grid.levelsPresent)} of ${grid.numLevels} · ${bytes.length} bytes`;
  if (truncation) showError(`${name}: ${truncation}`);
  const selection = store.get().selection;
  const present = new LevelSelection(grid.numLevels, grid.levelsPresent.filter((l) => selection.has(l)));
  setSelection(present.size ? present : new LevelSelection(grid.numLevels, grid.levelsPresent), true);
}

/** The file picker, and a file dropped anywhere on the page. */
export function wireSource(): void {
  const input = $<HTMLInputElement>('file');
  input.addEventListener('change', guard(async () => {
    const file = input.files?.[0];
    input.value = '';
    if (file) await openFile(file);
  }));
  document.addEventListener('dragover', (event) => {
    event.preventDefault();
    document.body.classList.add('dragging');
  });
  document.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
  document.addEventListener('drop', (event) => {
    event.preventDefault();
    document.body.classList.remove('dragging');
    const file = event.dataTransfer?.files?.[0];
    if (file) guard(() => openFile(file))();
  });
}
