/**
 * Where the page's models come from: the models folder's index (`models/bundles.json`, next to the page, so the
 * page works from any static file server and under any sub-path), or `?model=URL` (a bundle folder, its
 * manifest.json or a bundles.json, on another origin if that origin allows it). The index says whether a mimistack
 * server with its /api serves the page ("server": true: server mode is offered) and which bundles there are; the
 * page picks `?bundle=` or the index's default and fetches that bundle's manifest (small; `cache: 'no-cache'`, so a
 * new export is seen) before the engine downloads anything.
 */

import { type BundleIndex, checkIndex, checkManifest, type WebManifest } from './engine/manifest';
import { bundleWanted, modelUrl, setServerAvailable } from './options';
import { type ServerInfo, serverInfo } from './server-api';
import { progress } from './ui/feedback';

export interface BundleChoice {
  name: string;
  manifestUrl: string;
  bytes: number | null;
  storage: string | null;
  measured: Record<string, unknown>;
}

export interface Site {
  /** A mimistack server serves this page (its /api: server mode). */
  server: boolean;
  choices: BundleChoice[];
  chosen: BundleChoice;
}

const OWN_INDEX = 'models/bundles.json';

/** The JSON at `url`. A mimistack server makes its bundles on first use (minutes for the official model): a slow
 * answer says so. */
async function getJson(url: string): Promise<Record<string, unknown>> {
  let shown = false;
  const slow = setTimeout(() => {
    shown = true;
    progress('Waiting for the models (a mimistack server makes them on first use of new weights: a few minutes)…');
  }, 1500);
  try {
    const response = await fetch(url, { cache: 'no-cache' }).catch((error: Error) => {
      throw new Error(`could not fetch ${url} (${error.message}: offline, or another origin that does not allow this page by CORS?)`);
    });
    const body = await response.json().catch(() => null);
    if (response.ok && body) return body;
    throw new Error(`${url}: ${response.ok ? 'not JSON' : `${response.status} ${body?.error ?? response.statusText}`}`);
  } finally {
    clearTimeout(slow);
    if (shown) progress(null);
  }
}

function bundleFolder(url: string): string {
  const folder = new URL(url);
  if (!folder.pathname.endsWith('/')) folder.pathname += '/';
  return new URL('manifest.json', folder).href;
}

let siteLoading: Promise<Site> | null = null;
let manifestLoading: Promise<WebManifest> | null = null;

/** The models index and the bundle chosen (fetched once). */
export function site(): Promise<Site> {
  siteLoading ??= loadSite();
  return siteLoading;
}

/** The chosen bundle's checked manifest (fetched once). */
export async function bundleManifest(): Promise<WebManifest> {
  const { chosen } = await site();
  manifestLoading ??= getJson(chosen.manifestUrl).then((raw) => checkManifest(raw, chosen.manifestUrl));
  return manifestLoading;
}

async function loadSite(): Promise<Site> {
  const external = modelUrl();
  const ownUrl = new URL(OWN_INDEX, document.baseURI).href;
  const own = await getJson(ownUrl).then((raw) => checkIndex(raw, ownUrl), (error: Error) => {
    if (external) return null;
    throw / 404 /.test(error.message) ? new Error(`this site has no ${OWN_INDEX}: write the site with `
      + '`mimistack export-web`, or open the page with ?model=URL') : error;
  });
  const server = own?.server === true;
  setServerAvailable(server);
  let index = own as BundleIndex;
  let indexUrl = ownUrl;
  if (external && new URL(external).pathname.endsWith('/bundles.json')) {
    index = checkIndex(await getJson(external), external);
    indexUrl = external;
  } else if (external) {
    // One bundle: its folder or its manifest.json.
    const manifestUrl = new URL(external).pathname.endsWith('.json') ? external : bundleFolder(external);
    manifestLoading = getJson(manifestUrl).then((raw) => checkManifest(raw, manifestUrl));
    const manifest = await manifestLoading;
    const bytes = manifest.total_bytes ?? Object.values(manifest.files).reduce((sum, file) => sum + file.bytes, 0);
    const chosen = { name: manifest.bundle, manifestUrl, bytes, storage: manifest.storage, measured: manifest.measured ?? {} };
    return { server, choices: [chosen], chosen };
  }
  const choices = Object.entries(index.bundles).map(([name, entry]) => ({
    name, manifestUrl: bundleFolder(new URL(entry.path, indexUrl).href), bytes: entry.bytes ?? null,
    storage: entry.storage ?? null, measured: entry.measured ?? {},
  }));
  const wanted = bundleWanted() ?? index.default;
  const chosen = choices.find((choice) => choice.name === wanted);
  if (!chosen) throw new Error(`?bundle=${wanted}: there is no such bundle here (${choices.map((c) => c.name).join(', ')})`);
  return { server, choices, chosen };
}

/** What the page shows about the model: the server's /api/info, or (a static site) the bundle's manifest. */
export async function pageInfo(): Promise<ServerInfo> {
  if ((await site()).server) return serverInfo();
  const m = await bundleManifest();
  // weights_source: a hub id, or the checkpoint's path (shown by its name); random checkpoints are named so.
  const weights = String(m.weights_source ?? `weights ${m.weights_sha256.slice(0, 12)}`).replace(/^.*[\\/](?=[^\\/]*\.\w+$)/, '');
  return {
    version: m.mimistack_version ?? '', weights,
    random_weights: m.random_weights === true || /^random(-\w+)?(-seed\d+\.safetensors)?$/.test(weights),
    sample_rate: m.sample_rate, frame_rate: m.sample_rate / m.frame_size, frame_size: m.frame_size,
    num_levels: m.num_levels, num_semantic: m.num_semantic, codebook_size: m.codebook_size, dimension: m.dimension,
    max_upload_bytes: 0, max_audio_seconds: Infinity, server_engine: 'none', cross_origin_isolation: false,
  };
}
