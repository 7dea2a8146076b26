// Drives the mimistack page as a static site (a folder written by `mimistack export-web`, served by any static file
// server) in Debian's Chromium with playwright-core from web/node_modules. Used by tests/test_web_site.py; it asserts
// nothing itself: it writes what it saw into --out (result.json, raw arrays) and the Python side checks it.
//
//   node tests/e2e/site.mjs --url http://127.0.0.1:PORT/sub/ --out DIR --file speech.wav [--corrupt a,b]
//
// One browser context (so one Cache Storage) goes through phases, each announced to the server first with a
// request for `<url>?phase=NAME` made from here (not from the page), so that the Python side can split the server's
// request log by phase:
//   first   the page registers its service worker, reloads once isolated, downloads the exact bundle, encodes --file
//           and decodes several level selections;
//   second  the page again: every model file must come from the cache;
//   corrupt the cached copies of --corrupt (bundle/file, e.g. exact/decoder_stream.onnx) are damaged in Cache
//           Storage (one byte flipped, or cut short with --truncate), the page loads again, must fetch exactly those
//           files again, and decodes the file once more;
//   light   ?bundle=light: encodes and decodes with the light bundle.
// With --webgpu (a manual check, not CI) the page runs ?ep=webgpu on Chromium's software adapter instead and records
// its codes, audio and timings next to WebAssembly's. With --bench (bench/bench_web.py) it times instead: cold and
// warm loads of each of --bundles, the page's encode/decode benchmark for each bundle and --threads count, and live
// duplex (a fake microphone playing --file) with --live-threads threads for --live-seconds.
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { BASE_FLAGS, WEBGPU_FLAGS, engineState, runInBrowser, waiter } from './browser.mjs';


const { values: args } = parseArgs({
  options: {
    url: { type: 'string' }, out: { type: 'string' }, file: { type: 'string' },
    corrupt: { type: 'string', default: 'exact/decoder_stream.onnx' }, truncate: { type: 'string', default: '' },
    timeout: { type: 'string', default: '240' }, chromium: { type: 'string', default: '/usr/bin/chromium' },
    webgpu: { type: 'boolean', default: false },
    bench: { type: 'boolean', default: false }, bundles: { type: 'string', default: 'exact,light' },
    threads: { type: 'string', default: '1,2' }, seconds: { type: 'string', default: '10' },
    repeats: { type: 'string', default: '3' }, 'live-seconds': { type: 'string', default: '10' },
    'live-threads': { type: 'string', default: '2' },
  },
});
const timeout = Number(args.timeout) * 1000;
const out = resolve(args.out);
const result = { requests: [], console: [], pageErrors: [], phases: {} };
const SELECTIONS = ['0-31', '0-7', '0-2,4-7', '0'];

function pageUrl(query) {
  return `${args.url}?${[query, 'test'].filter(Boolean).join('&')}`;
}

function save(name, base64) {
  if (base64) writeFileSync(join(out, name), Buffer.from(base64, 'base64'));
}

async function announce(phase) {
  await fetch(`${args.url}?phase=${phase}`).then((r) => r.arrayBuffer());
}

const waitFor = waiter(timeout);

/** What the page shows about its models and engine, and its state once the engine is up. */
async function engineReady(page) {
  const state = await engineState(page, waitFor);
  return {
    state,
    ...(await page.evaluate(() => ({
      engine: document.getElementById('status-engine').textContent,
      modelsNote: document.getElementById('models-note').textContent,
      bundleOptions: [...document.getElementById('bundle').options].map((o) => ({ value: o.value, label: o.textContent })),
      computeHidden: document.getElementById('mode').closest('label').hidden,
      controlled: navigator.serviceWorker?.controller !== null && navigator.serviceWorker?.controller !== undefined,
    }))),
  };
}

async function decoded(page, selection) {
  await waitFor(page, (wanted) => {
    const s = window.mimistack.state();
    return s.error || (s.idle && s.decodedSelection === wanted);
  }, selection, `decoded levels ${selection}`);
  const state = await page.evaluate(() => window.mimistack.state());
  if (state.error) throw new Error(`the page shows an error: ${state.error}`);
  return page.evaluate(() => window.mimistack.dump());
}

/** Open --file, then decode each selection; arrays saved as <prefix>codes.u16, <prefix>decoded_<sel>.f32. */
async function roundtrip(page, prefix, selections) {
  await page.setInputFiles('#file', args.file);
  const first = await decoded(page, '0-31');
  save(`${prefix}codes.u16`, first.codes);
  save(`${prefix}original.f32`, first.original);
  const done = [];
  for (const selection of selections) {
    if (selection !== '0-31') await page.evaluate((s) => window.mimistack.setSelection(s), selection);
    const dump = selection === '0-31' ? first : await decoded(page, selection);
    save(`${prefix}decoded_${selection.replace(/[^0-9a-z-]+/gi, '_')}.f32`, dump.decoded);
    done.push(selection);
  }
  return done;
}

/** Damage the cached copies of `names` (bundle/file): flip a byte, or with `truncate` cut the copy short. */
async function damage(page, names, truncate) {
  return page.evaluate(async ({ names, truncate }) => {
    const cache = await caches.open('mimistack-models');
    const damaged = [];
    for (const request of await cache.keys()) {
      const response = await cache.match(request);
      const source = response.headers.get('x-mimistack-source') ?? '';
      const name = names.find((n) => source.endsWith(`/${n}`));
      if (!name) continue;
      const bytes = new Uint8Array(await response.arrayBuffer());
      const changed = truncate.includes(name) ? bytes.slice(0, bytes.length >> 1) : bytes.slice();
      if (!truncate.includes(name)) changed[changed.length >> 1] ^= 0xff;
      await cache.put(request, new Response(changed, { headers: response.headers }));
      damaged.push({ name, from: bytes.length, to: changed.length });
    }
    return damaged;
  }, { names, truncate });
}

async function phase(name, work) {
  await announce(name);
  result.phases[name] = await work();
}

async function run(page) {
  await phase('first', async () => {
    await page.goto(pageUrl(''));
    const engine = await engineReady(page);
    return { ...engine, selections: await roundtrip(page, 'exact_', SELECTIONS) };
  });
  await phase('second', async () => {
    await page.goto(pageUrl(''));
    return engineReady(page);
  });
  const names = args.corrupt.split(',').filter(Boolean);
  const truncate = args.truncate.split(',').filter(Boolean);
  const damaged = await damage(page, [...names, ...truncate], truncate);
  await phase('corrupt', async () => {
    await page.goto(pageUrl(''));
    const engine = await engineReady(page);
    return { ...engine, damaged, selections: await roundtrip(page, 'corrupt_', ['0-7']) };
  });
  await phase('light', async () => {
    await page.goto(pageUrl('bundle=light'));
    const engine = await engineReady(page);
    return { ...engine, selections: await roundtrip(page, 'light_', ['0-31', '0-7']) };
  });
}

/** ?ep=webgpu on the software adapter next to ?ep=wasm: codes, audio and the time of each. */
async function webgpu(page) {
  for (const ep of ['wasm', 'webgpu']) {
    await phase(ep, async () => {
      await page.goto(pageUrl(`ep=${ep}`));
      const engine = await engineReady(page);
      const started = Date.now();
      const selections = await roundtrip(page, `${ep}_`, ['0-31', '0-7']);
      return { ...engine, selections, seconds: (Date.now() - started) / 1000 };
    });
  }
}

/** Seconds from navigation to the engine being ready (service worker reload included on a first visit). */
async function timedLoad(page, query) {
  const started = Date.now();
  await page.goto(pageUrl(query));
  const engine = await engineReady(page);
  return { seconds: (Date.now() - started) / 1000, engine: engine.engine, modelsNote: engine.modelsNote };
}

async function bench(page) {
  const bundles = args.bundles.split(',').filter(Boolean);
  for (const bundle of bundles) {
    await phase(`cold_${bundle}`, () => timedLoad(page, `bundle=${bundle}&threads=2`));
    await phase(`warm_${bundle}`, () => timedLoad(page, `bundle=${bundle}&threads=2`));
  }
  for (const bundle of bundles) {
    for (const threads of args.threads.split(',').filter(Boolean)) {
      await phase(`speed_${bundle}_${threads}`, async () => {
        await page.goto(`${pageUrl(`bundle=${bundle}&threads=${threads}&ep=wasm`)}&bench`);
        const engine = await engineReady(page);
        await page.setInputFiles('#file', args.file);
        await decoded(page, '0-31');
        const speed = await page.evaluate((o) => window.mimistack.bench(o),
          { seconds: Number(args.seconds), repeats: Number(args.repeats) });
        return { engine: engine.engine, ...speed };
      });
    }
    await phase(`live_${bundle}`, async () => {
      await page.goto(pageUrl(`bundle=${bundle}&threads=${args['live-threads']}&ep=wasm`));
      await engineReady(page);
      await page.click('#live');
      const frames = Math.round(Number(args['live-seconds']) * 12.5);
      const started = Date.now();
      await waitFor(page, (n) => (window.mimistack.state().live?.frames ?? 0) >= n, frames, 'live frames');
      const wall = (Date.now() - started) / 1000;
      const state = await page.evaluate(() => window.mimistack.state());
      const notice = await page.evaluate(() => document.body.innerText.match(/Live mode cannot keep up[^\n]*/)?.[0] ?? null);
      await page.click('#live');
      return { wallSeconds: wall, live: state.live, notice };
    });
  }
}

const flags = [...BASE_FLAGS, ...(args.webgpu ? WEBGPU_FLAGS : ['--disable-gpu'])];
if (args.bench) {
  flags.push('--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', `--use-file-for-fake-audio-capture=${args.file}`);
}
await runInBrowser({ chromium: args.chromium, flags, out, result },
  (page) => (args.bench ? bench(page) : args.webgpu ? webgpu(page) : run(page)));
