/**
 * The page's views and player, one of each: the two signal panels (`views/signal.ts`), the A/B player
 * (`player.ts`) and the token stack (`views/stack.ts`), made by `createStack` at start-up once the server said how
 * many levels there are (before anything draws a take).
 */

import type { LevelSelection } from '../levels';
import { Player } from '../player';
import { type SignalStyle, SignalView } from '../views/signal';
import { StackView } from '../views/stack';
import { $ } from './dom';

export const originalView = new SignalView($('original-view'), '#7dd3fc');
export const decodedView = new SignalView($('decoded-view'), '#fbbf24');
export const player = new Player();
export let stack: StackView;

export function createStack(numLevels: number, onChange: (selection: LevelSelection) => void): void {
  stack = new StackView($('stack'), numLevels, onChange);
}

/** The waveform / spectrogram radio buttons. */
export function wireSignalStyle(): void {
  for (const radio of document.querySelectorAll<HTMLInputElement>('input[name="view"]')) {
    radio.addEventListener('change', () => {
      const style = radio.value as SignalStyle;
      originalView.setStyle(style);
      decodedView.setStyle(style);
    });
  }
}
