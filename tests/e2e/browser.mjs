// What the page drivers (drive.mjs, site.mjs, progressive.mjs) share: Debian's Chromium through playwright-core
// from web/node_modules, one persistent profile, and a result.json that always gets written.
//
//   await runInBrowser({ chromium, flags, out, result, viewport, acceptDownloads }, async (page) => { ... });
//
// It records every request, console message, page error and CSP violation (across navigations) into `result`,
// screenshots the page on failure into out/failure.png, writes out/result.json, and exits (1 on failure).
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const webDir = process.env.MIMISTACK_WEB_DIR ?? resolve(here, '../../web');
const { chromium } = createRequire(join(webDir, 'package.json'))('playwright-core');

/** Flags every driver starts Chromium with (headless through playwright's own option). */
export const BASE_FLAGS = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'];
/** Chromium's software WebGPU adapter (SwiftShader): what headless Chromium offers on a machine without a GPU. */
export const WEBGPU_FLAGS = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader', '--use-angle=swiftshader', '--disable-vulkan-surface'];

/** A `waitFor(page, predicate, argument, what)` that waits up to `timeout` ms and, when it gives up, says what it
 * waited for and the page's state (window.mimistack's, plus the progressive card's with `progressive`). */
export function waiter(timeout, { progressive = false } = {}) {
  return async (page, predicate, argument, what) => {
    try {
      await page.waitForFunction(predicate, argument, { timeout, polling: 100 });
    } catch {
      const state = await page.evaluate((p) => (p ? { page: window.mimistack?.state(), progressive: window.mimistack?.progressive() }
        : window.mimistack?.state()), progressive).catch(() => null);
      throw new Error(`timed out waiting for ${what}; page state: ${JSON.stringify(state)}`);
    }
  };
}

/** Wait until the page's in-browser engine is up (or failed: then throw what the page says); its state. */
export async function engineState(page, waitFor) {
  await waitFor(page, () => {
    const s = window.mimistack?.state();
    return s && (s.executionProvider !== null || s.engineError !== null || s.error !== null);
  }, null, 'the in-browser engine');
  const state = await page.evaluate(() => window.mimistack.state());
  if (state.engineError || state.error) throw new Error(`the engine did not start: ${state.engineError ?? state.error}`);
  return state;
}

export async function runInBrowser(options, scenario) {
  const { out, result } = options;
  Object.assign(result, { requests: result.requests ?? [], console: [], pageErrors: [], cspViolations: [] });
  const profile = mkdtempSync(join(tmpdir(), 'mimistack-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: options.chromium, headless: true, args: options.flags,
    viewport: options.viewport ?? { width: 1360, height: 900 }, acceptDownloads: options.acceptDownloads ?? false,
  });
  let exitCode = 0;
  try {
    context.on('request', (request) => result.requests.push({ url: request.url(), method: request.method(),
      type: request.resourceType() }));
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (message) => result.console.push({ type: message.type(), text: message.text() }));
    page.on('pageerror', (error) => result.pageErrors.push(String(error)));
    await page.exposeFunction('__cspViolation', (text) => result.cspViolations.push(text));
    await page.addInitScript(() => {
      document.addEventListener('securitypolicyviolation',
        (event) => window.__cspViolation(`${event.violatedDirective} ${event.blockedURI}`));
    });
    await scenario(page);
  } catch (error) {
    result.failure = String(error?.stack ?? error);
    exitCode = 1;
    const page = context.pages()[0];
    if (page) await page.screenshot({ path: join(out, 'failure.png'), fullPage: true }).catch(() => {});
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    writeFileSync(join(out, 'result.json'), JSON.stringify(result, null, 1));
  }
  process.exit(exitCode);
}
