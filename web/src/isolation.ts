/**
 * Cross-origin isolation, which onnxruntime-web needs for WebAssembly threads (SharedArrayBuffer). `mimistack serve`
 * sends the COOP/COEP headers itself; a static host (python -m http.server, GitHub Pages) cannot, so there the page
 * registers `sw.js` (public/sw.js: it re-serves this site's responses with the headers) and reloads once to come
 * back isolated. A session flag guards against reload loops: when the service worker cannot isolate the page, it
 * runs single-threaded and says why (`isolationText`).
 */

import { site } from './bundles';

const RELOADED = 'mimistack-isolation-reload';
let how = '';

/** "isolated by service worker", "this host is not cross-origin isolated", ... for the status line. */
export function isolationText(): string {
  return how;
}

function flag(set?: boolean): boolean {
  try {
    if (set === true) sessionStorage.setItem(RELOADED, '1');
    if (set === false) sessionStorage.removeItem(RELOADED);
    return sessionStorage.getItem(RELOADED) !== null;
  } catch {
    return true; // no session storage: never reload
  }
}

/** Make the page cross-origin isolated if it can be; true when it is reloading for that. */
export async function isolate(): Promise<boolean> {
  if (globalThis.crossOriginIsolated) {
    flag(false);
    how = navigator.serviceWorker?.controller ? 'isolated by service worker' : 'isolated by the server';
    return false;
  }
  how = 'this host is not cross-origin isolated';
  const server = await site().then((s) => s.server, () => false);
  if (server) {
    how = 'the server sends no isolation headers (mimistack serve --no-isolation)';
    return false;
  }
  if (!('serviceWorker' in navigator) || !window.isSecureContext) {
    how += ' (a service worker would need https or localhost)';
    return false;
  }
  if (flag()) {
    // This tab already reloaded once for it: the service worker could not isolate the page.
    if (navigator.serviceWorker.controller) how += ' (not even with its service worker)';
    return false;
  }
  try {
    await navigator.serviceWorker.register('./sw.js');
    await Promise.race([navigator.serviceWorker.ready,
      new Promise((_, reject) => setTimeout(() => reject(new Error('timed out')), 10_000))]);
  } catch (error) {
    how += ` (its service worker failed: ${(error as Error).message})`;
    return false;
  }
  flag(true);
  location.reload();
  return true;
}
