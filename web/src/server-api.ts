/**
 * The server-side mode: the same encode and decode, done by `mimistack serve` (`server/app.py`) for long files.
 *
 * `POST /api/encode` takes the audio file's bytes and answers the token grid as JSON (codes base64, uint16
 * little-endian, level-major); `POST /api/decode?levels=...` takes a `.mimi` file (written here by
 * `mimi-format.ts`) and answers a float32 WAV. Errors come back as `{"error": "..."}`, shown in the page.
 */

import { parseWav, toMono } from './audio-io';
import { base64ToBytes, bytesToUint16, type TokenGrid } from './grid';
import type { LevelSelection } from './levels';
import { writeMimi } from './mimi-format';

export interface ServerInfo {
  version: string;
  weights: string;
  random_weights: boolean;
  sample_rate: number;
  frame_rate: number;
  frame_size: number;
  num_levels: number;
  num_semantic: number;
  codebook_size: number;
  dimension: number;
  max_upload_bytes: number;
  max_audio_seconds: number;
  server_engine: string;
  cross_origin_isolation: boolean;
}

export class ServerError extends Error {}

async function failure(response: Response, what: string): Promise<ServerError> {
  const text = await response.text();
  let message = text.slice(0, 500);
  try {
    message = JSON.parse(text).error ?? message;
  } catch {
    // not JSON: keep the text
  }
  return new ServerError(`${what} failed (${response.status}): ${message}`);
}

export async function serverInfo(): Promise<ServerInfo> {
  const response = await fetch('/api/info');
  if (!response.ok) throw await failure(response, 'loading the model description');
  return response.json();
}

export async function serverEncode(bytes: Uint8Array, name: string): Promise<{ grid: TokenGrid; seconds: number }> {
  const response = await fetch(`/api/encode?name=${encodeURIComponent(name)}`, {
    method: 'POST', body: bytes as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream' },
  });
  if (!response.ok) throw await failure(response, 'server-side encoding');
  const body = await response.json();
  const grid: TokenGrid = {
    codes: bytesToUint16(base64ToBytes(body.codes)), numLevels: body.num_levels, numFrames: body.num_frames,
    numSamples: body.num_samples, sampleRate: body.sample_rate, frameRate: body.frame_rate,
    codebookSize: body.codebook_size, weightsSha256: body.weights_sha256, levelsPresent: body.levels_present,
  };
  return { grid, seconds: body.elapsed_seconds };
}

export async function serverDecode(grid: TokenGrid, selection: LevelSelection): Promise<Float32Array> {
  const levels = selection.size ? selection.toString() : 'none';
  const response = await fetch(`/api/decode?levels=${encodeURIComponent(levels)}`, {
    method: 'POST', body: writeMimi(grid) as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream' },
  });
  if (!response.ok) throw await failure(response, 'server-side decoding');
  return toMono(parseWav(new Uint8Array(await response.arrayBuffer())).data);
}
