/**
 * The model files in the browser's Cache Storage, keyed by the sha256 their manifest lists
 * (`https://mimistack.invalid/sha256/<hex>`), so a second visit downloads nothing and a new export (new hashes) is
 * fetched afresh. Every file is checked (length and SHA-256) after a download and again when read back from the
 * cache; a damaged cached copy is deleted and downloaded again. Used by the worker (`caches` works there too) and,
 * for "forget downloaded models", by the page.
 */

export const MODEL_CACHE = 'mimistack-models';
const SOURCE_HEADER = 'x-mimistack-source';

export interface ModelFile {
  name: string;
  url: string;
  sha256: string;
  bytes: number;
}

const keyOf = (file: ModelFile) => `https://mimistack.invalid/sha256/${file.sha256}`;

/** The cache, or null where the browser offers none (not a secure context, storage blocked). */
export async function openModelCache(): Promise<Cache | null> {
  try {
    return typeof caches === 'undefined' ? null : await caches.open(MODEL_CACHE);
  } catch {
    return null;
  }
}

/** Delete every kept model file (the page's "forget downloaded models"). */
export async function forgetModels(): Promise<boolean> {
  return typeof caches !== 'undefined' && caches.delete(MODEL_CACHE);
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Why `bytes` is not `file` (length, then SHA-256), or null when it is. */
async function mismatch(bytes: Uint8Array, file: ModelFile): Promise<string | null> {
  if (bytes.length !== file.bytes) return `${bytes.length} bytes instead of ${file.bytes}`;
  if (!globalThis.crypto?.subtle) return null; // not a secure context: only the length can be checked
  const hex = await sha256Hex(bytes);
  return hex === file.sha256 ? null : `sha256 ${hex.slice(0, 12)}… instead of ${file.sha256.slice(0, 12)}…`;
}

/** The body of `response`, `expected` bytes long (into one buffer; a longer body is cut at expected + 1). */
async function readBody(response: Response, expected: number, onProgress: (loaded: number) => void): Promise<Uint8Array> {
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const out = new Uint8Array(expected + 1);
  const reader = response.body.getReader();
  let loaded = 0;
  let reported = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const take = Math.min(value.length, out.length - loaded);
    out.set(value.subarray(0, take), loaded);
    loaded += take;
    if (loaded === out.length) {
      await reader.cancel();
      break;
    }
    if (loaded - reported >= 1 << 20) onProgress((reported = loaded));
  }
  onProgress(Math.min(loaded, expected));
  return out.subarray(0, loaded);
}

/**
 * The checked bytes of `file`: from the cache when it holds a good copy, else downloaded (and kept).
 * `onProgress(loaded, fromCache)` follows the bytes; `note` hears of what the user should know (a damaged cached
 * copy, a file the cache would not keep).
 */
export async function modelFile(cache: Cache | null, file: ModelFile, onProgress: (loaded: number, fromCache: boolean) => void,
  note: (text: string) => void): Promise<Uint8Array> {
  const key = keyOf(file);
  const hit = cache && (await cache.match(key).catch(() => undefined));
  if (cache && hit) {
    const bytes = await readBody(hit, file.bytes, (loaded) => onProgress(loaded, true)).catch(() => null);
    const problem = bytes ? await mismatch(bytes, file) : 'unreadable';
    if (bytes && !problem) return bytes;
    await cache.delete(key).catch(() => false);
    note(`the cached ${file.name} was damaged (${problem}): deleted and downloaded again`);
  }
  let response: Response;
  try {
    response = await fetch(file.url, { cache: 'no-store' });
  } catch (error) {
    throw new Error(`${file.name}: could not fetch ${file.url} (${(error as Error).message}; offline, or another `
      + 'origin that does not allow this page to read it?)');
  }
  if (!response.ok) {
    throw new Error(`${file.name}: ${file.url} answered ${response.status} ${response.statusText}`
      + (response.status === 404 ? ': the bundle lacks a file its manifest lists' : ''));
  }
  const bytes = await readBody(response, file.bytes, (loaded) => onProgress(loaded, false)).catch((error: Error) => {
    throw new Error(`${file.name}: the download from ${file.url} broke off (${error.message})`);
  });
  const problem = await mismatch(bytes, file);
  if (problem) {
    throw new Error(`${file.name} from ${file.url} does not match its manifest (${problem}): the download was cut `
      + 'short or the file changed; export the bundle again');
  }
  if (cache) {
    const headers = { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length), [SOURCE_HEADER]: file.url };
    await cache.put(key, new Response(bytes as Uint8Array<ArrayBuffer>, { headers })).catch((error: Error) =>
      note(`${file.name} could not be kept in this browser's cache (${error.message}); it downloads again next time`));
  }
  return bytes;
}

/** Delete kept files that an older export of these same URLs left behind (same source URL, other sha256). */
export async function pruneStale(cache: Cache, files: ModelFile[]): Promise<number> {
  const current = new Map(files.map((file) => [file.url, keyOf(file)]));
  let removed = 0;
  for (const request of await cache.keys()) {
    const source = (await cache.match(request))?.headers.get(SOURCE_HEADER);
    if (source && current.has(source) && current.get(source) !== request.url && (await cache.delete(request))) removed++;
  }
  return removed;
}
