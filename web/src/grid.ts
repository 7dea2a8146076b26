/**
 * The token grid as the page holds it (mirrors `mimistack.tokens.TokenGrid`): uint16 codes, level-major
 * `[numLevels, numFrames]` (row i = level i, contiguous), with the source length and provenance.
 *
 * Produced by the in-browser encoder (`engine/client.ts`), the server API (`server-api.ts`) and the `.mimi` reader
 * (`mimi-format.ts`); drawn by `views/stack.ts`.
 */

export interface TokenGrid {
  /** uint16 [numLevels * numFrames], level-major. Rows of levels not in levelsPresent are zeros and never decoded. */
  codes: Uint16Array;
  numLevels: number;
  numFrames: number;
  numSamples: number;
  sampleRate: number;
  frameRate: number;
  codebookSize: number;
  weightsSha256: string;
  levelsPresent: number[];
}

export function gridDuration(grid: TokenGrid): number {
  return grid.numSamples / grid.sampleRate;
}

/** Codes as the ONNX graphs take them: int64 [1, numLevels, numFrames]. */
export function codesAsInt64(grid: TokenGrid): BigInt64Array {
  const out = new BigInt64Array(grid.codes.length);
  for (let i = 0; i < grid.codes.length; i++) out[i] = BigInt(grid.codes[i]);
  return out;
}

export function base64ToBytes(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function bytesToBase64(bytes: Uint8Array): string {
  let binary = '';
  const step = 0x8000;
  for (let i = 0; i < bytes.length; i += step) binary += String.fromCharCode(...bytes.subarray(i, i + step));
  return btoa(binary);
}

/** uint16 little-endian bytes -> Uint16Array (copies, so the result is aligned). */
export function bytesToUint16(bytes: Uint8Array): Uint16Array {
  const out = new Uint16Array(bytes.length >> 1);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true);
  return out;
}
