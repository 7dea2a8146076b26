// Drives the mimistack page's "Progressive stream" card in Debian's Chromium (headless) with playwright-core from
// web/node_modules. Used by tests/test_web_progressive.py; it asserts nothing itself: it writes what it saw into --out
// (result.json, the received tokens and pcm, the codes sent) and the Python side checks it.
//
//   node tests/e2e/progressive.mjs --url http://127.0.0.1:PORT/ --out DIR --relay ws://127.0.0.1:RELAY --name NAME
//        --scenario receive|loop [--file speech.wav --rate 0:1000,2:4400]
//   receive  the page receives ws://RELAY/receive/NAME (someone else sends to /send/NAME), or --receive-url, until
//            the stream ends;
//   loop     the page opens --file, receives /receive/NAME and sends the file to /send/NAME at --rate: both ends.
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { BASE_FLAGS, engineState, runInBrowser, waiter } from './browser.mjs';


const { values: args } = parseArgs({
  options: {
    url: { type: 'string' }, out: { type: 'string' }, relay: { type: 'string' }, name: { type: 'string', default: 'page' },
    // Receive from this URL instead of RELAY/receive/NAME (a stream server's token room).
    'receive-url': { type: 'string' },
    scenario: { type: 'string', default: 'receive' }, file: { type: 'string' }, rate: { type: 'string', default: '2000' },
    timeout: { type: 'string', default: '180' }, chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
const timeout = Number(args.timeout) * 1000;
const out = resolve(args.out);
const result = { scenario: args.scenario, requests: [], console: [], pageErrors: [] };
const testUrl = `${args.url}${args.url.includes('?') ? '&' : '?'}test`;

function save(name, base64) {
  if (base64) writeFileSync(join(out, name), Buffer.from(base64, 'base64'));
}

const waitFor = waiter(timeout, { progressive: true });

async function engineReady(page) {
  await page.goto(testUrl);
  const state = await engineState(page, waitFor);
  return state;
}

async function receive(page) {
  await page.fill('#receive-url', args['receive-url'] ?? `${args.relay}/receive/${args.name}`);
  await page.click('#receive-start');
  await waitFor(page, () => ['waiting', 'receiving', 'ended', 'closed', 'error']
    .includes(window.mimistack.progressive()?.receive?.state), null, 'the receiver to connect');
}

async function finished(page, side, states) {
  await waitFor(page, ([key, wanted]) => wanted.includes(window.mimistack.progressive()?.[key]?.state), [side, states],
    `the ${side} side to finish`);
}

async function dump(page) {
  const snapshot = await page.evaluate(() => window.mimistack.progressive(true));
  save('received_tokens.u16', snapshot.receive?.tokens);
  save('received.f32', snapshot.receive?.pcm);
  save('sent_codes.u16', snapshot.send?.codes);
  for (const side of [snapshot.receive, snapshot.send]) {
    if (!side) continue;
    delete side.tokens;
    delete side.pcm;
    delete side.codes;
  }
  result.progressive = snapshot;
  result.strip = await page.evaluate(() => {
    const canvas = document.getElementById('receive-strip');
    return { width: canvas.width, height: canvas.height, status: document.getElementById('receive-status').textContent };
  });
  await page.screenshot({ path: join(out, 'progressive.png'), fullPage: true });
}

async function scenario(page) {
  result.engine = await engineReady(page);
  if (args.scenario === 'receive') {
    await receive(page);
    await finished(page, 'receive', ['ended', 'closed', 'error']);
  } else if (args.scenario === 'loop') {
    await page.setInputFiles('#file', args.file);
    await waitFor(page, () => {
      const s = window.mimistack.state();
      return s.error || (s.idle && s.numSamples > 0);
    }, null, 'the file to be opened');
    await receive(page);
    await page.fill('#send-url', `${args.relay}/send/${args.name}`);
    await page.fill('#send-rate', args.rate);
    await page.click('#send-start');
    await finished(page, 'send', ['sent', 'stopped', 'error']);
    await finished(page, 'receive', ['ended', 'closed', 'error']);
  } else {
    throw new Error(`unknown scenario ${args.scenario}`);
  }
  await dump(page);
  result.state = await page.evaluate(() => window.mimistack.state());
}

await runInBrowser({ chromium: args.chromium, flags: [...BASE_FLAGS, '--disable-gpu'], out, result,
  viewport: { width: 1360, height: 1000 } }, scenario);
