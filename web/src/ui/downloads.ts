/** Downloads: the take's tokens as `.mimi` (all levels or the selected ones), the decoded and original audio as WAV. */

import { download, encodeWav } from '../audio-io';
import { LevelSelection } from '../levels';
import { writeMimi } from '../mimi-format';
import { sampleRate, store } from '../state';
import { $ } from './dom';

function baseName(): string {
  return (store.get().take?.name ?? 'mimistack').replace(/\.[^.]+$/, '').replace(/[^A-Za-z0-9_.-]+/g, '_') || 'mimistack';
}

function downloadMimi(selectedOnly: boolean): void {
  const { take, selection } = store.get();
  const grid = take?.grid;
  if (!grid) return;
  const levels = selectedOnly ? grid.levelsPresent.filter((l) => selection.has(l)) : grid.levelsPresent;
  const bytes = writeMimi(grid, levels, { source: take.name, writer: 'mimistack-web' });
  download(bytes, `${baseName()}${selectedOnly ? `.levels-${new LevelSelection(grid.numLevels, levels)}` : ''}.mimi`, 'application/octet-stream');
}

export function wireDownloads(): void {
  $('download-mimi').addEventListener('click', () => downloadMimi(false));
  $('download-mimi-selected').addEventListener('click', () => downloadMimi(true));
  $('download-wav').addEventListener('click', () => {
    const take = store.get().take;
    if (take?.decoded && take.decodedSelection) {
      download(encodeWav(take.decoded, sampleRate(), 'pcm16'), `${baseName()}.levels-${take.decodedSelection}.wav`, 'audio/wav');
    }
  });
  $('download-original').addEventListener('click', () => {
    const take = store.get().take;
    if (take?.original) download(encodeWav(take.original, sampleRate(), 'pcm16'), `${baseName()}.original.wav`, 'audio/wav');
  });
}
