/**
 * The mimistack page: open or record audio, see Mimi's 32 x T token grid, choose levels, hear the result.
 *
 * Computes in this browser with onnxruntime-web (`browser-engine.ts`, `engine/`; nothing is uploaded) or, where a
 * mimistack server serves the page, on that server (`server-api.ts`; for long files). The page works from any
 * static file server too (`bundles.ts`: every URL is relative to the page; `isolation.ts`: a service worker gives
 * it WebAssembly threads there). `app.ts` starts the page: the state is in `state.ts`, the controls in `ui/`, the
 * takes (open, encode, decode) in `takes.ts`, the URL options in `options.ts`; the test hooks and the benchmark
 * (`testing/`) load only on `?test` and `?bench` pages.
 */

import './styles.css';
import { start } from './app';
import { isolate } from './isolation';

void isolate().then((reloading) => {
  if (!reloading) void start();
});
