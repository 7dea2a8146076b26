/** What the page tells the user while it works: the error box, the progress bar, notices and the busy state. */

import { store } from '../state';
import { $ } from './dom';

export function showError(message: string | null): void {
  store.update({ error: message });
  $('error').hidden = !message;
  $('error-text').textContent = message ?? '';
  if (message) console.warn(`mimistack: ${message}`);
}

export function progress(text: string | null, fraction?: number): void {
  $('progress').hidden = text === null;
  $('progress-text').textContent = text ?? '';
  const fill = $('progress-fill');
  fill.classList.toggle('indeterminate', fraction === undefined);
  fill.style.width = fraction === undefined ? '30%' : `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
}

export function notice(text: string): void {
  const box = $('notice');
  box.textContent = text;
  box.hidden = false;
}

/** Run `work` as a task: the phase says `label` and the page is not idle until every task is done. */
export async function busy<T>(label: string, work: () => Promise<T>): Promise<T> {
  store.update((s) => ({ working: s.working + 1, phase: label }));
  document.body.classList.add('working');
  try {
    return await work();
  } finally {
    store.update((s) => ({ working: s.working - 1 }));
    if (store.get().working === 0) {
      store.update({ phase: 'ready' });
      document.body.classList.remove('working');
    }
  }
}

/** An event handler that runs `work` and shows what it throws. */
export function guard(work: () => Promise<void> | void): () => void {
  return () => {
    Promise.resolve()
      .then(work)
      .catch((error) => {
        progress(null);
        showError(error instanceof Error ? error.message : String(error));
      });
  };
}
