/** Element look-ups by id (the ids are in index.html; the e2e tests use them too). */

export const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

export const button = (id: string) => $<HTMLButtonElement>(id);

/** "6.8 s", or "1:05.3" from a minute on. */
export function formatTime(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - minutes * 60).toFixed(1).padStart(4, '0')}`;
}
