/** The "Listen" controls: play A (original) or B (decoded), A/B switch, stop, Space, and the playheads. */

import type { Track } from '../player';
import { store } from '../state';
import { $, button } from './dom';
import { decodedView, originalView, player, stack } from './views';

export function renderPlayer(): void {
  const take = store.get().take;
  const playing = player.isPlaying;
  button('play-original').disabled = !take?.original;
  button('play-decoded').disabled = !take?.decoded;
  button('ab').disabled = !(take?.original && take?.decoded);
  button('stop').disabled = !playing;
  $('play-original').classList.toggle('on', playing && player.heard === 'original');
  $('play-decoded').classList.toggle('on', playing && player.heard === 'decoded');
  $('ab').textContent = `A/B: hearing ${player.heard === 'original' ? 'A (original)' : 'B (decoded)'}`;
  $('signal-original').classList.toggle('heard', playing && player.heard === 'original');
  $('signal-decoded').classList.toggle('heard', playing && player.heard === 'decoded');
}

function animatePlayhead(): void {
  const position = player.position();
  stack.setPlayhead(store.get().captureKind ? null : position);
  originalView.setPlayhead(position);
  decodedView.setPlayhead(position);
  requestAnimationFrame(animatePlayhead);
}

function play(track: Track): void {
  if (player.isPlaying && player.heard !== track) player.switchTo(track);
  else player.play(track, player.position() ?? 0);
}

export function wirePlayer(): void {
  $('play-original').addEventListener('click', () => play('original'));
  $('play-decoded').addEventListener('click', () => play('decoded'));
  $('ab').addEventListener('click', () => {
    const next: Track = player.heard === 'original' ? 'decoded' : 'original';
    if (player.isPlaying) player.switchTo(next);
    else player.play(next);
  });
  $('stop').addEventListener('click', () => player.stop());
  player.onChange = renderPlayer;
  document.addEventListener('keydown', (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    if (event.key === ' ' && store.get().take?.decoded) {
      event.preventDefault();
      if (player.isPlaying) player.switchTo(player.heard === 'original' ? 'decoded' : 'original');
      else player.play('decoded');
    }
  });
}

/** Keep the playheads of the stack and the signals on the player's position (every animation frame). */
export function startPlayheads(): void {
  requestAnimationFrame(animatePlayhead);
}
