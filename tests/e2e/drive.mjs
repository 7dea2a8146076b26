// Drives the mimistack page in Debian's Chromium (headless) with playwright-core from web/node_modules.
// Used by tests/test_web_e2e.py and bench/bench_web.py; it asserts nothing itself: it writes what it saw into
// --out (result.json, screenshots, raw arrays) and the Python side checks it.
//
//   node tests/e2e/drive.mjs --url http://127.0.0.1:PORT/ --out DIR --scenario roundtrip --file speech.wav
//   scenarios: roundtrip (open, encode, toggle levels, decode, download), server (the same through the API),
//              live (fake microphone from --file), bench (--threads N --seconds S)
//
// The page exposes `window.mimistack` (state, dump, setSelection) only with ?test in its URL, and
// `window.mimistack.bench` only with ?bench: every page opened here carries them (pageUrl). The roundtrip first
// opens the plain page once and records that it has no `window.mimistack` and loaded no testing chunk.
import { writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { BASE_FLAGS, WEBGPU_FLAGS, engineState, runInBrowser, waiter } from './browser.mjs';


const { values: args } = parseArgs({
  options: {
    url: { type: 'string' }, out: { type: 'string' }, scenario: { type: 'string', default: 'roundtrip' },
    file: { type: 'string' }, threads: { type: 'string' }, seconds: { type: 'string', default: '10' },
    // The web bundle the page loads (?bundle=): exact or light; default the models index's.
    bundle: { type: 'string', default: '' },
    repeats: { type: 'string', default: '3' }, 'live-seconds': { type: 'string', default: '3' },
    timeout: { type: 'string', default: '240' }, chromium: { type: 'string', default: '/usr/bin/chromium' },
    // Try the WebGPU execution provider on Chromium's software adapter (SwiftShader): a manual check, not CI.
    webgpu: { type: 'boolean', default: false },
    // A .mimi file written elsewhere (Python) that the roundtrip opens at the end and decodes with levels 0-7.
    'open-mimi': { type: 'string' },
  },
});
const timeout = Number(args.timeout) * 1000;
const out = resolve(args.out);
const result = { scenario: args.scenario, requests: [], console: [], pageErrors: [], steps: [] };

/** args.url with `query` ('' or '?a=b&c=d') and the flags ('test', 'bench') appended as bare parameters. */
function pageUrl(query, ...flags) {
  const parts = [query.replace(/^\?/, ''), ...flags].filter(Boolean);
  if (!parts.length) return args.url;
  return `${args.url}${args.url.includes('?') ? '&' : '?'}${parts.join('&')}`;
}

function save(name, base64) {
  if (base64) writeFileSync(join(out, name), Buffer.from(base64, 'base64'));
}

const waitFor = waiter(timeout);

async function waitIdle(page, selection) {
  await waitFor(page, (wanted) => {
    const s = window.mimistack?.state();
    if (s?.error) return true;
    return s && s.idle && s.decodedSelection === wanted;
  }, selection, `decoded levels ${selection}`);
  const state = await page.evaluate(() => window.mimistack.state());
  if (state.error) throw new Error(`the page shows an error: ${state.error}`);
  return state;
}

async function step(page, name, selection) {
  const state = await waitIdle(page, selection);
  const dump = await page.evaluate(() => window.mimistack.dump());
  const safe = selection.replace(/[^0-9a-z-]+/gi, '_');
  save(`decoded_${safe}.f32`, dump.decoded);
  if (!result.steps.length) {
    save('codes.u16', dump.codes);
    save('original.f32', dump.original);
  }
  result.steps.push({ name, selection, state });
  await page.screenshot({ path: join(out, `${String(result.steps.length).padStart(2, '0')}-${name}.png`), fullPage: true });
}

async function engineReady(page) {
  const state = await engineState(page, waitFor);
  return state;
}

/** The page as users get it (no ?test): ready (`<body data-ready>`), without `window.mimistack`. */
async function plainPage(page, query) {
  const url = pageUrl(query);
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout, polling: 100 });
  // Let the in-browser engine finish starting (its status pill says so) before the page is left.
  await page.waitForFunction(() => !/not loaded|loading/.test(document.getElementById('status-engine')?.textContent ?? ''),
    null, { timeout, polling: 100 });
  result.plainPage = {
    url,
    ...(await page.evaluate(() => ({
      ready: document.body.dataset.ready ?? null,
      mimistack: typeof window.mimistack,
      engine: document.getElementById('status-engine')?.textContent ?? null,
    }))),
    testingChunks: result.requests.map((r) => r.url).filter((u) => /\/assets\/(hooks|bench)-[^/]*\.js/.test(u)),
  };
}

async function roundtrip(page, mode) {
  // Server mode the way users meet it: a file longer than the in-browser limit goes to the server by itself.
  const query = mode === 'server' ? '?browserLimit=2' : (args.webgpu ? '?ep=webgpu' : '');
  await plainPage(page, query);
  await page.goto(pageUrl(query, 'test'));
  await waitFor(page, () => window.mimistack?.state().phase === 'ready', null, 'the page');
  result.engine = await engineReady(page);
  await page.screenshot({ path: join(out, '00-loaded.png'), fullPage: true });
  // A file that is not audio: the page says so (and recovers with the next file).
  writeFileSync(join(out, 'not-audio.wav'), 'this is text, not sound');
  await page.setInputFiles('#file', join(out, 'not-audio.wav'));
  await waitFor(page, () => window.mimistack.state().error !== null, null, 'an error message');
  result.errorShown = { state: (await page.evaluate(() => window.mimistack.state())).error, visible: await page.isVisible('#error') };
  await page.screenshot({ path: join(out, '00-error.png') });
  await page.setInputFiles('#file', args.file);
  await step(page, 'all-levels', '0-31');
  await page.click('[data-preset="moshi"]');
  await step(page, 'moshi', '0-7');
  await page.click('button.level[data-level="3"]');
  await step(page, 'without-level-3', '0-2,4-7');
  result.experimentalBadge = await page.isVisible('#experimental');
  await page.click('[data-preset="semantic"]');
  await step(page, 'semantic', '0');
  await page.click('input[name="view"][value="spectrogram"]');
  await page.click('[data-preset="all"]');
  await step(page, 'spectrogram', '0-31');
  result.notice = (await page.isVisible('#notice')) ? await page.textContent('#notice') : null;
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download-mimi')]);
  await download.saveAs(join(out, 'download.mimi'));
  result.downloadName = download.suggestedFilename();
  // Open the downloaded .mimi: the page reads it back (no audio, tokens only) and decodes it.
  await page.click('[data-preset="moshi"]');
  await waitIdle(page, '0-7');
  await page.setInputFiles('#file', join(out, 'download.mimi'));
  await step(page, 'opened-mimi', '0-7');
  if (args['open-mimi']) {
    const name = basename(args['open-mimi']);
    await page.setInputFiles('#file', args['open-mimi']);
    await waitFor(page, (wanted) => {
      const s = window.mimistack.state();
      return s.error || (s.take === wanted && s.idle && s.decodedSelection === '0-7');
    }, name, `${name} to be opened and decoded`);
    result.openedMimi = await page.evaluate(() => window.mimistack.state());
    save('opened_decoded_0-7.f32', (await page.evaluate(() => window.mimistack.dump())).decoded);
  }
}

async function live(page) {
  await page.goto(pageUrl('', 'test'));
  result.engine = await engineReady(page);
  if (!result.engine.streaming) throw new Error('live mode needs the streaming graphs');
  await page.click('[data-preset="moshi"]');
  await page.click('#live');
  await waitFor(page, (frames) => (window.mimistack.state().live?.frames ?? 0) >= frames,
    Math.round(Number(args['live-seconds']) * 12.5), 'live frames');
  result.liveState = await page.evaluate(() => window.mimistack.state());
  await page.screenshot({ path: join(out, '01-live.png'), fullPage: true });
  await page.click('#live');
  await step(page, 'after-live', '0-7');
  // Plain recording: captured, then encoded and decoded like a file.
  await page.click('#record');
  await waitFor(page, () => (window.mimistack.state().capture?.seconds ?? 0) >= 2, null, 'two seconds of recording');
  await page.click('#record');
  await waitFor(page, () => window.mimistack.state().numSamples > 0 && window.mimistack.state().decodedSelection === '0-7'
    && window.mimistack.state().idle, null, 'the recording to be encoded and decoded');
  const dump = await page.evaluate(() => window.mimistack.dump());
  save('recorded_codes.u16', dump.codes);
  save('recorded_original.f32', dump.original);
  save('recorded_decoded_0-7.f32', dump.decoded);
  await page.screenshot({ path: join(out, '03-recorded.png'), fullPage: true });
}

async function bench(page) {
  const bundle = args.bundle ? `&bundle=${args.bundle}` : '';
  await page.goto(pageUrl(`?threads=${args.threads ?? 1}&ep=wasm${bundle}`, 'test', 'bench'));
  result.engine = await engineReady(page);
  if (args.file) {
    await page.setInputFiles('#file', args.file);
    await waitIdle(page, '0-31');
  }
  result.bench = await page.evaluate((options) => window.mimistack.bench(options),
    { seconds: Number(args.seconds), repeats: Number(args.repeats) });
}

const flags = [...BASE_FLAGS, ...(args.webgpu ? WEBGPU_FLAGS : ['--disable-gpu'])];
if (args.scenario === 'live') {
  flags.push('--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', `--use-file-for-fake-audio-capture=${args.file}`);
}
const scenarios = { roundtrip: (page) => roundtrip(page, 'browser'), server: (page) => roundtrip(page, 'server'), live, bench };
await runInBrowser({ chromium: args.chromium, flags, out, result, acceptDownloads: true }, async (page) => {
  const scenario = scenarios[args.scenario];
  if (!scenario) throw new Error(`unknown scenario ${args.scenario}`);
  await scenario(page);
  result.crossOriginIsolated = await page.evaluate(() => globalThis.crossOriginIsolated);
});
