/**
 * The `.mimi` token file, version 1 (`docs/format.md`; Python: `mimistack/container.py`): write level-major
 * packed files and read level-major or frame-major packed files, in the browser.
 *
 * Used by the page's downloads and "open .mimi" (`main.ts`) and by the server-side decode path (`server-api.ts`,
 * which sends the grid as a `.mimi` file). Byte order little-endian; CRC32 as in zlib. Range-coded sections are
 * not decoded here (they need the `constriction` coder): such files are refused with a message that says so.
 */

import type { TokenGrid } from './grid';

const MAGIC = [0x4d, 0x49, 0x4d, 0x49, 0x00, 0x54, 0x4f, 0x4b]; // "MIMI\0TOK"
const FORMAT_VERSION = 1;
const PREFIX_BYTES = 14; // magic (8) + version u16 + header length u32
const MAX_TOKENS = 2 ** 28;
const END_INDEX = 0xffffffff;

export class MimiFormatError extends Error {}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** ISO-HDLC CRC-32 (zlib.crc32); crc32("123456789") = 0xCBF43926. */
export function crc32(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let crc = 0xffffffff;
  for (let i = start; i < end; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** Packed width: max(1, ceil(log2(codebookSize))) bits (11 for Mimi's 2048). */
export function bitsPerToken(codebookSize: number): number {
  if (!Number.isInteger(codebookSize) || codebookSize < 1 || codebookSize > 65536) {
    throw new MimiFormatError(`codebook_size must be 1-65536, got ${codebookSize}`);
  }
  return Math.max(1, Math.ceil(Math.log2(codebookSize)));
}

export function packedSize(count: number, width: number): number {
  return Math.ceil((count * width) / 8);
}

/** Pack tokens LSB first: token i's bit b is stream bit i*w+b, stream bit j is bit j%8 of byte j/8. */
export function packTokens(tokens: ArrayLike<number>, width: number, out?: Uint8Array): Uint8Array {
  const bytes = out ?? new Uint8Array(packedSize(tokens.length, width));
  let bit = 0;
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    for (let b = 0; b < width; b++, bit++) {
      if ((token >>> b) & 1) bytes[bit >>> 3] |= 1 << (bit & 7);
    }
  }
  return bytes;
}

export function unpackTokens(bytes: Uint8Array, count: number, width: number, out?: Uint16Array): Uint16Array {
  const tokens = out ?? new Uint16Array(count);
  let bit = 0;
  for (let i = 0; i < count; i++) {
    let token = 0;
    for (let b = 0; b < width; b++, bit++) token |= ((bytes[bit >>> 3] >>> (bit & 7)) & 1) << b;
    tokens[i] = token;
  }
  return tokens;
}

/** JSON as Python's json.dumps(..., separators=(",", ":")) writes it: ASCII, other characters \u-escaped. */
function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * The `.mimi` bytes of `grid` (level-major, packed), holding `levels` (default: every level the grid holds).
 * A prefix of the file that ends at a section boundary is itself a valid file of the first levels.
 */
export function writeMimi(grid: TokenGrid, levels?: number[], metadata: Record<string, unknown> = {}): Uint8Array {
  const present = [...(levels ?? grid.levelsPresent)].sort((a, b) => a - b);
  for (const level of present) {
    if (!grid.levelsPresent.includes(level)) throw new MimiFormatError(`level ${level} is not in the grid`);
  }
  if (new Set(present).size !== present.length) throw new MimiFormatError('levels must be unique');
  const width = bitsPerToken(grid.codebookSize);
  const size = packedSize(grid.numFrames, width);
  const payload = new Uint8Array(size * present.length);
  const sections = present.map((level, index) => {
    const chunk = payload.subarray(index * size, (index + 1) * size);
    packTokens(grid.codes.subarray(level * grid.numFrames, (level + 1) * grid.numFrames), width, chunk);
    return { level, offset: index * size, length: size, crc32: crc32(chunk), coding: 'packed11' };
  });
  const header = {
    format_version: FORMAT_VERSION,
    layout: 'level-major',
    coding: 'packed11',
    num_levels: grid.numLevels,
    levels_present: present,
    num_frames: grid.numFrames,
    num_samples: grid.numSamples,
    sample_rate: grid.sampleRate,
    frame_rate: grid.frameRate,
    codebook_size: grid.codebookSize,
    bits_per_token: width,
    weights_sha256: grid.weightsSha256,
    sections,
    metadata,
  };
  const json = new TextEncoder().encode(asciiJson(header));
  const out = new Uint8Array(PREFIX_BYTES + json.length + 4 + payload.length);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  view.setUint16(8, FORMAT_VERSION, true);
  view.setUint32(10, json.length, true);
  out.set(json, PREFIX_BYTES);
  view.setUint32(PREFIX_BYTES + json.length, crc32(out, 0, PREFIX_BYTES + json.length), true);
  out.set(payload, PREFIX_BYTES + json.length + 4);
  return out;
}

interface Header {
  layout: string;
  num_levels: number;
  levels_present: number[];
  num_frames: number | null;
  num_samples: number | null;
  sample_rate: number;
  frame_rate: number;
  codebook_size: number;
  bits_per_token: number;
  weights_sha256: string;
  sections: { level: number; offset: number; length: number; crc32: number; coding: string }[];
  metadata: Record<string, unknown>;
}

export interface ReadResult {
  grid: TokenGrid;
  /** Set when the file was cut short: what was recovered. */
  truncation: string | null;
  metadata: Record<string, unknown>;
}

/** Read a `.mimi` file (level-major or frame-major, packed). Throws MimiFormatError naming the problem. */
export function readMimi(data: Uint8Array, source = 'the file'): ReadResult {
  const fail = (message: string) => new MimiFormatError(`${source}: ${message}`);
  if (data.length < 8 && MAGIC.slice(0, data.length).every((b, i) => data[i] === b)) throw fail('truncated inside the header');
  if (!MAGIC.every((b, i) => data[i] === b)) throw fail('not a .mimi file (bad magic bytes)');
  if (data.length < PREFIX_BYTES) throw fail('truncated inside the header');
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const version = view.getUint16(8, true);
  if (version !== FORMAT_VERSION) throw fail(`unsupported .mimi format version ${version}`);
  const length = view.getUint32(10, true);
  const payloadStart = PREFIX_BYTES + length + 4;
  if (data.length < payloadStart) throw fail('truncated inside the header');
  if (view.getUint32(PREFIX_BYTES + length, true) !== crc32(data, 0, PREFIX_BYTES + length)) throw fail('header CRC32 mismatch');
  let header: Header;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(data.subarray(PREFIX_BYTES, PREFIX_BYTES + length)));
  } catch (error) {
    throw fail(`header is not UTF-8 JSON (${(error as Error).message})`);
  }
  if (typeof header !== 'object' || header === null) throw fail('header is not a JSON object');
  const width = bitsPerToken(header.codebook_size);
  if (header.bits_per_token !== width) throw fail(`bits_per_token ${header.bits_per_token} does not match codebook_size ${header.codebook_size}`);
  if (header.layout === 'level-major') return readLevelMajor(data, header, payloadStart, width, fail);
  if (header.layout === 'frame-major') return readFrameMajor(data, header, payloadStart, width, fail);
  throw fail(`unknown layout ${JSON.stringify(header.layout)}`);
}

function readLevelMajor(data: Uint8Array, header: Header, start: number, width: number, fail: (m: string) => Error): ReadResult {
  const frames = header.num_frames ?? 0;
  if (header.num_levels * frames > MAX_TOKENS) throw fail(`header declares ${header.num_levels} x ${frames} tokens, more than the limit`);
  const codes = new Uint16Array(header.num_levels * frames);
  const present: number[] = [];
  let truncation: string | null = null;
  for (const section of header.sections) {
    if (section.coding !== 'packed11') {
      throw fail(`level ${section.level} is range coded, which the page cannot decode; open it with the server mode or run \`mimistack decode\``);
    }
    const begin = start + section.offset;
    const end = begin + section.length;
    if (end > data.length) {
      truncation = `file is truncated: recovered ${present.length} of ${header.sections.length} levels`;
      break;
    }
    if (crc32(data, begin, end) !== section.crc32) throw fail(`CRC32 mismatch in the section of level ${section.level}`);
    unpackTokens(data.subarray(begin, end), frames, width, codes.subarray(section.level * frames, (section.level + 1) * frames));
    present.push(section.level);
  }
  const last = header.sections.at(-1);
  if (!truncation && last && start + last.offset + last.length < data.length) throw fail('bytes after the last section');
  return { grid: makeGrid(header, codes, frames, header.num_samples ?? 0, present, fail), truncation, metadata: header.metadata ?? {} };
}

function readFrameMajor(data: Uint8Array, header: Header, start: number, width: number, fail: (m: string) => Error): ReadResult {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const levels = header.levels_present;
  const columns: Uint16Array[] = [];
  let position = start;
  let numSamples: number | null = null;
  while (position + 11 <= data.length) {
    const index = view.getUint32(position, true);
    const count = view.getUint16(position + 4, true);
    const coding = view.getUint8(position + 6);
    const length = view.getUint32(position + 7, true);
    const end = position + 11 + length + 4;
    if (end > data.length) break;
    if (view.getUint32(end - 4, true) !== crc32(data, position, end - 4)) throw fail(`CRC32 mismatch in frame record ${index}`);
    if (index === END_INDEX) {
      const frames = Number(view.getBigUint64(position + 11, true));
      numSamples = Number(view.getBigUint64(position + 19, true));
      if (frames !== columns.length) throw fail(`end record says ${frames} frames, the file holds ${columns.length}`);
      position = end;
      break;
    }
    if (index !== columns.length) throw fail(`frame record ${index} is out of sequence`);
    if (count !== levels.length) throw fail(`frame ${index} holds ${count} levels, expected ${levels.length}`);
    if (coding !== 0) throw fail(`frame ${index} is range coded, which the page cannot decode; use the server mode`);
    columns.push(unpackTokens(data.subarray(position + 11, position + 11 + length), count, width));
    position = end;
  }
  const frames = columns.length;
  const codes = new Uint16Array(header.num_levels * frames);
  columns.forEach((column, t) => levels.forEach((level, j) => (codes[level * frames + t] = column[j])));
  const truncation = numSamples === null ? `stream has no end record: recovered ${frames} complete frames` : null;
  const samples = numSamples ?? Math.floor((frames * header.sample_rate) / header.frame_rate);
  return { grid: makeGrid(header, codes, frames, samples, levels, fail), truncation, metadata: header.metadata ?? {} };
}

function makeGrid(header: Header, codes: Uint16Array, frames: number, numSamples: number, present: number[], fail: (m: string) => Error): TokenGrid {
  const frameSize = header.sample_rate / header.frame_rate;
  const expected = numSamples ? Math.ceil(numSamples / frameSize) : 0;
  if (expected !== frames) throw fail(`${frames} frames do not match ${numSamples} samples`);
  for (let i = 0; i < codes.length; i++) {
    if (codes[i] >= header.codebook_size) throw fail(`token ${codes[i]} is outside the codebook of ${header.codebook_size}`);
  }
  return {
    codes,
    numLevels: header.num_levels,
    numFrames: frames,
    numSamples,
    sampleRate: header.sample_rate,
    frameRate: header.frame_rate,
    codebookSize: header.codebook_size,
    weightsSha256: header.weights_sha256 ?? '',
    levelsPresent: present,
  };
}
