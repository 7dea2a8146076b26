/**
 * The web bundle's two JSON files as the page reads them (written by `mimistack export-web`, served by
 * `mimistack serve` under /models/): the models folder's `bundles.json` and a bundle's `manifest.json`, checked
 * here so that a wrong file is named as such before anything large is downloaded.
 */

import type { CodebookSpec } from './latent';

export const BUNDLES_FORMAT = 'mimistack-web-bundles';
export const BUNDLE_FORMAT = 'mimistack-web';
export const FORMAT_VERSION = 1;

export interface BundleEntry {
  path: string;
  bytes?: number;
  storage?: string;
  measured?: Record<string, unknown>;
}

export interface BundleIndex {
  format: string;
  format_version: number;
  default: string;
  server?: boolean;
  bundles: Record<string, BundleEntry>;
}

export interface StateSpec {
  name: string;
  output: string;
  shape: (number | string)[];
  dtype: string;
  initial?: number;
}

export interface GraphSpec {
  file: string;
  input: string;
  output: string;
  states: StateSpec[];
  external_data?: string[];
  /** The most frames one call may take: the states' ring KV caches are sized for this many. */
  max_frames_per_call?: number;
}

export interface FileSpec {
  sha256: string;
  bytes: number;
}

export interface WebManifest {
  format: string;
  format_version: number;
  bundle: string;
  storage: string;
  mimistack_version?: string;
  weights_sha256: string;
  config: Record<string, unknown>;
  sample_rate: number;
  frame_size: number;
  num_levels: number;
  codebook_size: number;
  dimension: number;
  codebook_dim: number;
  num_semantic: number;
  graphs: { encoder: GraphSpec; decoder: GraphSpec };
  codebooks: CodebookSpec;
  files: Record<string, FileSpec>;
  total_bytes?: number;
  measured?: Record<string, unknown>;
  [key: string]: unknown;
}

function checkFormat(raw: Record<string, unknown>, url: string, format: string): void {
  if (raw.format !== format) throw new Error(`${url} is not a ${format} file (format ${JSON.stringify(raw.format)})`);
  if (raw.format_version !== FORMAT_VERSION) {
    throw new Error(`${url} has format version ${JSON.stringify(raw.format_version)}, this page reads ${FORMAT_VERSION}: `
      + 'export the models again with the mimistack of this page');
  }
}

export function checkIndex(raw: Record<string, unknown>, url: string): BundleIndex {
  checkFormat(raw, url, BUNDLES_FORMAT);
  const bundles = (raw.bundles ?? {}) as Record<string, BundleEntry>;
  if (!(typeof raw.default === 'string' && typeof bundles[raw.default]?.path === 'string')) {
    throw new Error(`${url}: its default bundle ${JSON.stringify(raw.default)} is not among its bundles`);
  }
  return raw as unknown as BundleIndex;
}

export function checkManifest(raw: Record<string, unknown>, url: string): WebManifest {
  checkFormat(raw, url, BUNDLE_FORMAT);
  const missing = ['weights_sha256', 'sample_rate', 'frame_size', 'num_levels', 'codebook_size', 'dimension',
    'codebook_dim', 'num_semantic', 'graphs', 'codebooks', 'files'].filter((key) => raw[key] === undefined);
  if (missing.length) throw new Error(`${url} lacks ${missing.join(', ')}`);
  const m = raw as unknown as WebManifest;
  const { encoder, decoder } = m.graphs;
  if (!encoder?.states || !decoder?.states) throw new Error(`${url}: graphs needs an encoder and a decoder with their states`);
  for (const file of [encoder.file, decoder.file, m.codebooks.file, ...(encoder.external_data ?? []), ...(decoder.external_data ?? [])]) {
    const entry = m.files[file];
    if (!/^\w[\w.-]*$/.test(file) || !/^[0-9a-f]{64}$/.test(entry?.sha256) || !Number.isInteger(entry.bytes)) {
      throw new Error(`${url}: ${JSON.stringify(file)} needs to be a plain file name listed in files (sha256, bytes)`);
    }
  }
  return m;
}
