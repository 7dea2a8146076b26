/** What the page says about the current take: the grid line, the two signal labels and which downloads apply. */

import { gridDuration } from '../grid';
import { bitrate, formatBitrate } from '../levels';
import { store } from '../state';
import { $, button, formatTime } from './dom';
import { renderPlayer } from './player';

export function renderTake(): void {
  const { take, captureKind } = store.get();
  const grid = take?.grid;
  $('grid-info').textContent = grid
    ? `${grid.numLevels} levels × ${grid.numFrames} frames · ${formatTime(gridDuration(grid))}`
      + (take?.encodeSeconds ? ` · encoded ${take.encodedBy === 'server' ? 'on the server' : 'in the browser'} in ${take.encodeSeconds.toFixed(2)} s` : '')
    : '';
  $('decoded-label').textContent = captureKind === 'live' ? 'streamed with the levels selected at each moment'
    : take?.decodedSelection
    ? `levels ${take.decodedSelection} · ${formatBitrate(bitrate(take.decodedSelection.size, grid?.frameRate ?? 12.5, grid?.codebookSize ?? 2048))}`
      + (take.decodeSeconds ? ` · decoded in ${take.decodeSeconds.toFixed(2)} s` : '')
      + (take.decodedSelection.isPrefix ? '' : ' · experimental')
    : '—';
  $('original-label').textContent = captureKind ? 'microphone, last 20 s'
    : take?.original ? take.name : (take ? `${take.name} (tokens only)` : '—');
  for (const id of ['download-mimi', 'download-mimi-selected']) button(id).disabled = !grid;
  button('download-wav').disabled = !take?.decoded;
  button('download-original').disabled = !take?.original;
  renderPlayer();
}
