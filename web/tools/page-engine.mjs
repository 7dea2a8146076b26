// The page's in-browser engine as a process: `mimistack parity`'s "browser" implementation drives it.
//
//   node web/tools/page-engine.mjs --url http://127.0.0.1:PORT/ [--threads 2] [--chromium /usr/bin/chromium]
//
// Opens the page (a static site written by `mimistack export-web`) in headless Chromium with ?test&bundle=exact,
// waits for its engine, prints one JSON line {"ready": {...}}, then answers one JSON request per stdin line with one
// JSON line on stdout: {"op": "encode", "pcm": BASE64 float32} -> {"codes": BASE64 uint16 level-major, "numFrames"};
// {"op": "decode", "codes": BASE64 uint16 level-major [levels, n], "numFrames": n, "levels": k} -> {"pcm": BASE64}.
// Errors answer {"error": TEXT}. It exits when stdin closes.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const { chromium } = createRequire(join(resolve(here, '..'), 'package.json'))('playwright-core');
const { values: args } = parseArgs({
  options: {
    url: { type: 'string' }, threads: { type: 'string', default: '2' }, bundle: { type: 'string', default: 'exact' },
    chromium: { type: 'string', default: '/usr/bin/chromium' }, timeout: { type: 'string', default: '600' },
  },
});
const reply = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
const profile = mkdtempSync(join(tmpdir(), 'mimistack-page-engine-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: args.chromium, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run'],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(`${args.url}?bundle=${args.bundle}&threads=${args.threads}&ep=wasm&test`);
  await page.waitForFunction(() => {
    const s = window.mimistack?.state();
    return s && (s.executionProvider !== null || s.engineError !== null || s.error !== null);
  }, null, { timeout: Number(args.timeout) * 1000, polling: 100 });
  const state = await page.evaluate(() => window.mimistack.state());
  if (state.engineError || state.error) throw new Error(state.engineError ?? state.error);
  reply({ ready: { executionProvider: state.executionProvider, numThreads: state.numThreads,
    crossOriginIsolated: state.crossOriginIsolated } });
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    try {
      const request = JSON.parse(line);
      const oneCall = request.oneCall === true; // the whole input in one frame-stream call
      if (request.op === 'encode') {
        reply(await page.evaluate(([pcm, one]) => (one ? window.mimistack.encodePcmOneCall(pcm) : window.mimistack.encodePcm(pcm)), [request.pcm, oneCall]));
      } else if (request.op === 'decode') {
        reply({ pcm: await page.evaluate(([r, one]) => (one ? window.mimistack.decodeCodesOneCall : window.mimistack.decodeCodes)(r.codes, r.numFrames, r.levels), [request, oneCall]) });
      } else reply({ error: `unknown op ${JSON.stringify(request.op)}` });
    } catch (error) {
      reply({ error: String(error?.message ?? error) });
    }
  }
} catch (error) {
  reply({ error: String(error?.message ?? error) });
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
