/**
 * The mimistack page: open or record audio, see Mimi's 32 x T token grid, choose levels, hear the result.
 *
 * Computes in this browser with onnxruntime-web (`browser-engine.ts`, `engine/`; nothing is uploaded) or on the
 * server that serves the page (`server-api.ts`; for long files). `app.ts` starts the page: the state is in
 * `state.ts`, the controls in `ui/`, the takes (open, encode, decode) in `takes.ts`, the URL options in
 * `options.ts`; the test hooks and the benchmark (`testing/`) load only on `?test` and `?bench` pages.
 */

import './styles.css';
import { start } from './app';

void start();
