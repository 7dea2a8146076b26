/**
 * The `.mimi` token file (`docs/format.md`; Python: `mimistack/mimifile/`), in the browser: read versions 1 and 2
 * (level-major or frame-major, packed), write version 2 level-major packed files, byte for byte what Python's
 * writer writes for the same grid (metadata is stored as JSON; Python stores it zlib-compressed only when that is
 * shorter, which short metadata such as the page's never is).
 *
 * Used by the page's downloads and "open .mimi" (`main.ts`) and by the server-side decode path (`server-api.ts`,
 * which sends the grid as a `.mimi` file); token packing is `packing.ts`. Byte order little-endian; CRC32 as in
 * zlib. Range-coded sections are not decoded here (they need the `constriction` coder): such files are refused
 * with a message that says so. Checked against the golden files by `tests/js_protocol/golden.mjs`.
 */

import type { TokenGrid } from './grid';
import { packTokens, packedSize, unpackTokens } from './packing.js';

export { packTokens, packedSize, unpackTokens } from './packing.js';

const MAGIC = [0x4d, 0x49, 0x4d, 0x49, 0x00, 0x54, 0x4f, 0x4b]; // "MIMI\0TOK"
export const FORMAT_VERSION = 2;
const V1_PREFIX_BYTES = 14; // magic (8) + version u16 + header length u32
const MAX_TOKENS = 2 ** 28;
const END_INDEX = 0xffffffff;
const BYTE_ORDER = 0x4c; // 'L'
const FLAG = { frameMajor: 0x01, range: 0x02, allLevels: 0x04, weightsRaw: 0x08, weightsText: 0x10, metadata: 0x20 };
const KNOWN_FLAGS = 0x3f;
/** v2 writers put 2^k levels in a section, the smallest power of two whose packed size reaches this. */
export const MIN_SECTION_BYTES = 128;

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

/** ISO-HDLC CRC-32 (zlib.crc32); crc32("123456789") = 0xCBF43926. `previous` continues a CRC, as zlib's does. */
export function crc32(bytes: Uint8Array, start = 0, end = bytes.length, previous = 0): number {
  let crc = (previous ^ 0xffffffff) >>> 0;
  for (let i = start; i < end; i++) crc = (CRC_TABLE[(crc ^ (bytes[i] as number)) & 0xff] as number) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function crcOfIndex(index: number): number {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, index, true);
  return crc32(bytes);
}

/** Packed width: max(1, ceil(log2(codebookSize))) bits (11 for Mimi's 2048). */
export function bitsPerToken(codebookSize: number): number {
  if (!Number.isInteger(codebookSize) || codebookSize < 1 || codebookSize > 65536) {
    throw new MimiFormatError(`codebook_size must be 1-65536, got ${codebookSize}`);
  }
  let width = 1;
  while (2 ** width < codebookSize) width += 1;
  return width;
}

/** How many levels a v2 writer puts in one section (the last section may hold fewer). */
export function sectionLevels(numFrames: number, codebookSize: number, numPresent: number): number {
  const levelBytes = packedSize(numFrames, bitsPerToken(codebookSize));
  let count = 1;
  while (count < numPresent && count * levelBytes < MIN_SECTION_BYTES) count *= 2;
  return count;
}

/** JSON as Python's json.dumps(..., separators=(",", ":")) writes it: ASCII, other characters \u-escaped. */
function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function varint(value: number): number[] {
  if (!Number.isSafeInteger(value) || value < 0) throw new MimiFormatError(`cannot store ${value} as a varint`);
  const out: number[] = [];
  for (;;) {
    const group = value % 128;
    value = Math.floor(value / 128);
    if (value === 0) {
      out.push(group);
      return out;
    }
    out.push(group | 0x80);
  }
}

/**
 * The v2 `.mimi` bytes of `grid` (level-major, packed), holding `levels` (default: every level the grid holds).
 * A prefix of the file that ends at a section boundary is itself a valid file of the first levels.
 */
export function writeMimi(grid: TokenGrid, levels?: number[], metadata: Record<string, unknown> = {}): Uint8Array {
  const present = [...(levels ?? grid.levelsPresent)].sort((a, b) => a - b);
  for (const level of present) {
    if (!grid.levelsPresent.includes(level)) throw new MimiFormatError(`level ${level} is not in the grid`);
  }
  if (new Set(present).size !== present.length) throw new MimiFormatError('levels must be unique');
  const frames = grid.numFrames;
  const width = bitsPerToken(grid.codebookSize);
  const group = sectionLevels(frames, grid.codebookSize, present.length);
  const chunks: Uint8Array[] = [];
  const table: number[] = [...varint(Math.ceil(present.length / group))];
  for (let start = 0; start < present.length; start += group) {
    const members = present.slice(start, start + group);
    const tokens = new Uint16Array(members.length * frames);
    members.forEach((level, k) => tokens.set(grid.codes.subarray(level * frames, (level + 1) * frames), k * frames));
    const chunk = packTokens(tokens, width);
    chunks.push(chunk);
    const crc = crc32(chunk);
    table.push(...varint(members.length), 0, crc & 0xff, (crc >>> 8) & 0xff, (crc >>> 16) & 0xff, crc >>> 24);
  }
  const allLevels = present.length === grid.numLevels && present.every((level, i) => level === i);
  const weights = grid.weightsSha256 ?? '';
  const rawWeights = /^[0-9a-f]{64}$/.test(weights);
  const hasMetadata = Object.keys(metadata).length > 0;
  const flags = (allLevels ? FLAG.allLevels : 0) | (weights ? (rawWeights ? FLAG.weightsRaw : FLAG.weightsText) : 0)
    | (hasMetadata ? FLAG.metadata : 0);
  const head: number[] = [...MAGIC, 2, 0, BYTE_ORDER, flags];
  head.push(...varint(grid.numLevels), ...varint(grid.codebookSize), ...varint(grid.sampleRate));
  const rate = new Uint8Array(8);
  new DataView(rate.buffer).setFloat64(0, grid.frameRate, true);
  head.push(...rate, ...varint(frames), ...varint(grid.numSamples));
  if (!allLevels) {
    const bitmap = new Array<number>(Math.ceil(grid.numLevels / 8)).fill(0);
    for (const level of present) bitmap[level >> 3] = (bitmap[level >> 3] as number) | (1 << (level & 7));
    head.push(...bitmap);
  }
  if (rawWeights) {
    for (let i = 0; i < 32; i++) head.push(parseInt(weights.slice(2 * i, 2 * i + 2), 16));
  } else if (weights) {
    const text = new TextEncoder().encode(weights);
    head.push(...varint(text.length), ...text);
  }
  if (hasMetadata) {
    const json = new TextEncoder().encode(asciiJson(metadata));
    head.push(0, ...varint(json.length), ...json);
  }
  head.push(...table);
  const payloadBytes = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const out = new Uint8Array(head.length + 4 + payloadBytes);
  out.set(head, 0);
  new DataView(out.buffer).setUint32(head.length, crc32(out, 0, head.length), true);
  let position = head.length + 4;
  for (const chunk of chunks) {
    out.set(chunk, position);
    position += chunk.length;
  }
  return out;
}

interface Section {
  levels: number[];
  offset: number;
  length: number;
  crc32: number;
  coding: string;
}

interface Header {
  version: number;
  layout: string;
  num_levels: number;
  levels_present: number[];
  num_frames: number | null;
  num_samples: number | null;
  sample_rate: number;
  frame_rate: number;
  codebook_size: number;
  weights_sha256: string;
  sections: Section[];
  metadata: Record<string, unknown>;
}

export interface ReadResult {
  grid: TokenGrid;
  /** Set when the file was cut short: what was recovered. */
  truncation: string | null;
  metadata: Record<string, unknown>;
  /** The file's format version (1 or 2). */
  version: number;
}

type Fail = (message: string) => MimiFormatError;

/** Read a `.mimi` file (v1 or v2; level-major or frame-major, packed). Throws MimiFormatError naming the problem. */
export function readMimi(data: Uint8Array, source = 'the file'): ReadResult {
  const fail: Fail = (message) => new MimiFormatError(`${source}: ${message}`);
  if (data.length < 8 && MAGIC.slice(0, data.length).every((b, i) => data[i] === b)) throw fail('truncated inside the header');
  if (!MAGIC.every((b, i) => data[i] === b)) throw fail('not a .mimi file (bad magic bytes)');
  if (data.length < 10) throw fail('truncated inside the header');
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const version = view.getUint16(8, true);
  let header: Header;
  let payloadStart: number;
  if (version === 1) [header, payloadStart] = parseV1(data, view, fail);
  else if (version === 2) [header, payloadStart] = parseV2(data, fail);
  else throw fail(`unsupported .mimi format version ${version} (this page reads versions 1 and 2)`);
  const width = bitsPerToken(header.codebook_size);
  if (header.layout === 'level-major') return readLevelMajor(data, header, payloadStart, width, fail);
  return readFrameMajor(data, header, payloadStart, width, fail);
}

function parseV1(data: Uint8Array, view: DataView, fail: Fail): [Header, number] {
  if (data.length < V1_PREFIX_BYTES) throw fail('truncated inside the header');
  const length = view.getUint32(10, true);
  const payloadStart = V1_PREFIX_BYTES + length + 4;
  if (data.length < payloadStart) throw fail('truncated inside the header');
  if (view.getUint32(V1_PREFIX_BYTES + length, true) !== crc32(data, 0, V1_PREFIX_BYTES + length)) throw fail('header checksum mismatch');
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(data.subarray(V1_PREFIX_BYTES, V1_PREFIX_BYTES + length)));
  } catch (error) {
    throw fail(`header is not UTF-8 JSON (${(error as Error).message})`);
  }
  if (typeof json !== 'object' || json === null) throw fail('header is not a JSON object');
  type V1Section = { level: number; offset: number; length: number; crc32: number; coding: string };
  const raw = json as unknown as Omit<Header, 'version' | 'sections'> & { bits_per_token: number; sections?: V1Section[] };
  if (raw.bits_per_token !== bitsPerToken(raw.codebook_size)) {
    throw fail(`bits_per_token ${raw.bits_per_token} does not match codebook_size ${raw.codebook_size}`);
  }
  if (raw.layout !== 'level-major' && raw.layout !== 'frame-major') throw fail(`unknown layout ${JSON.stringify(raw.layout)}`);
  const sections = (raw.sections ?? []).map((s) => ({ levels: [s.level], offset: s.offset, length: s.length, crc32: s.crc32, coding: s.coding }));
  const header: Header = { ...raw, version: 1, sections, metadata: raw.metadata ?? {} };
  return [header, payloadStart];
}

class Cursor {
  position: number;
  private readonly data: Uint8Array;
  private readonly fail: Fail;
  constructor(data: Uint8Array, position: number, fail: Fail) {
    this.data = data;
    this.position = position;
    this.fail = fail;
  }
  take(count: number): Uint8Array {
    if (this.position + count > this.data.length) throw this.fail('truncated inside the header');
    const chunk = this.data.subarray(this.position, this.position + count);
    this.position += count;
    return chunk;
  }
  u8(): number {
    return this.take(1)[0] as number;
  }
  u32(): number {
    const b = this.take(4);
    return ((b[0] as number) | ((b[1] as number) << 8) | ((b[2] as number) << 16) | ((b[3] as number) << 24)) >>> 0;
  }
  varint(name: string, low: number, high: number): number {
    let value = 0;
    let scale = 1;
    for (let count = 0; ; count++) {
      const byte = this.u8();
      value += (byte & 0x7f) * scale;
      scale *= 128;
      if (!(byte & 0x80)) break;
      if (count >= 9) throw this.fail(`bad header: ${name} is a varint longer than 10 bytes`);
    }
    if (!(value >= low && value <= high)) throw this.fail(`bad header: ${name} = ${value} is out of range ${low}-${high}`);
    return value;
  }
}

function parseV2(data: Uint8Array, fail: Fail): [Header, number] {
  const c = new Cursor(data, 10, fail);
  const byteOrder = c.u8();
  const flags = c.u8();
  const frameMajor = (flags & FLAG.frameMajor) !== 0;
  const numLevels = c.varint('num_levels', 1, 65535);
  const codebookSize = c.varint('codebook_size', 1, 65536);
  const sampleRate = c.varint('sample_rate', 1, 2 ** 31);
  const frameRate = new DataView(c.take(8).slice().buffer).getFloat64(0, true);
  let numFrames: number | null = null;
  let numSamples: number | null = null;
  if (!frameMajor) {
    numFrames = c.varint('num_frames', 0, 2 ** 32 - 2);
    numSamples = c.varint('num_samples', 0, Number.MAX_SAFE_INTEGER);
  }
  let present: number[] = [];
  if (flags & FLAG.allLevels) present = Array.from({ length: numLevels }, (_, i) => i);
  else {
    const bitmap = c.take(Math.ceil(numLevels / 8));
    for (let i = 0; i < bitmap.length * 8; i++) if (((bitmap[i >> 3] as number) >> (i & 7)) & 1) present.push(i);
  }
  let weights = '';
  if (flags & FLAG.weightsRaw) weights = Array.from(c.take(32), (b) => b.toString(16).padStart(2, '0')).join('');
  else if (flags & FLAG.weightsText) weights = new TextDecoder().decode(c.take(c.varint('weights text length', 1, 4096)));
  let metadataBlock: { coding: number; body: Uint8Array } | null = null;
  if (flags & FLAG.metadata) {
    const coding = c.u8();
    metadataBlock = { coding, body: c.take(c.varint('metadata length', 0, 2 ** 24)) };
  }
  const sections: Section[] = [];
  if (!frameMajor) {
    const width = bitsPerToken(codebookSize);
    const count = c.varint('section count', 0, present.length);
    let offset = 0;
    let stored = 0;
    for (let i = 0; i < count; i++) {
      const levelCount = c.varint('section level count', 1, Math.max(1, present.length - stored));
      const levels = present.slice(stored, stored + levelCount);
      stored += levelCount;
      const coding = c.u8();
      let length = packedSize((numFrames ?? 0) * levels.length, width);
      if (coding === 1) {
        length = c.varint('section length', 0, 2 ** 40);
        c.u32(); // tokens_crc32: range sections are not decoded here
      } else if (coding !== 0) throw fail(`bad header: section coding ${coding} is not 0 (packed11) or 1 (range)`);
      sections.push({ levels, offset, length, crc32: c.u32(), coding: coding === 1 ? 'range' : 'packed11' });
      offset += length;
    }
    if (stored !== present.length) throw fail('bad header: the sections do not hold the levels present');
  }
  const end = c.position;
  if (c.u32() !== crc32(data, 0, end)) throw fail('header checksum mismatch (the header is corrupted)');
  if (byteOrder !== BYTE_ORDER) throw fail(`bad header: byte order ${byteOrder} is not 'L' (little-endian)`);
  if (flags & ~KNOWN_FLAGS) throw fail(`bad header: unknown flags ${flags & ~KNOWN_FLAGS}`);
  if (!(Number.isFinite(frameRate) && frameRate > 0)) throw fail(`bad header: frame_rate must be positive, got ${frameRate}`);
  if (present.length && (present.at(-1) as number) >= numLevels) throw fail('bad header: the levels bitmap marks a level past num_levels');
  const header: Header = {
    version: 2,
    layout: frameMajor ? 'frame-major' : 'level-major',
    num_levels: numLevels,
    levels_present: present,
    num_frames: numFrames,
    num_samples: numSamples,
    sample_rate: sampleRate,
    frame_rate: frameRate,
    codebook_size: codebookSize,
    weights_sha256: weights,
    sections,
    metadata: metadataBlock ? decodeMetadata(metadataBlock.coding, metadataBlock.body, fail) : {},
  };
  return [header, c.position];
}

function decodeMetadata(coding: number, body: Uint8Array, fail: Fail): Record<string, unknown> {
  let json = body;
  if (coding === 1) json = inflateZlib(body, fail);
  else if (coding !== 0) throw fail(`bad header: metadata coding ${coding} is not 0 (JSON) or 1 (zlib)`);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
  } catch (error) {
    throw fail(`bad header: the metadata is not UTF-8 JSON (${(error as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw fail('bad header: the metadata is not a JSON object');
  return value as Record<string, unknown>;
}

// -- zlib inflate (RFC 1950/1951), for compressed metadata blocks ------------------------------------------------
const LENGTH_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
  4097, 6145, 8193, 12289, 16385, 24577];
const DIST_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
const CODE_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

interface Huffman { counts: number[]; symbols: number[] }

function huffman(lengths: number[]): Huffman {
  const counts = new Array<number>(16).fill(0);
  for (const length of lengths) counts[length] = (counts[length] as number) + 1;
  counts[0] = 0;
  const offsets = new Array<number>(16).fill(0);
  for (let i = 1; i < 15; i++) offsets[i + 1] = (offsets[i] as number) + (counts[i] as number);
  const symbols = new Array<number>(lengths.length).fill(0);
  lengths.forEach((length, symbol) => {
    if (length) {
      symbols[offsets[length] as number] = symbol;
      offsets[length] = (offsets[length] as number) + 1;
    }
  });
  return { counts, symbols };
}

function inflateZlib(input: Uint8Array, fail: Fail): Uint8Array {
  const bad = (what: string) => fail(`bad header: the metadata block is not zlib data (${what})`);
  if (input.length < 6 || ((input[0] as number) & 0x0f) !== 8 || (((input[0] as number) << 8) | (input[1] as number)) % 31 !== 0
    || ((input[1] as number) & 0x20)) throw bad('zlib header');
  let position = 2;
  let bitBuffer = 0;
  let bitCount = 0;
  const out: number[] = [];
  const bits = (count: number): number => {
    while (bitCount < count) {
      if (position >= input.length - 4) throw bad('ends early');
      bitBuffer |= (input[position++] as number) << bitCount;
      bitCount += 8;
    }
    const value = bitBuffer & ((1 << count) - 1);
    bitBuffer >>>= count;
    bitCount -= count;
    return value;
  };
  const decode = (table: Huffman): number => {
    let code = 0;
    let first = 0;
    let index = 0;
    for (let length = 1; length < 16; length++) {
      code |= bits(1);
      const count = table.counts[length] as number;
      if (code - count < first) return table.symbols[index + code - first] as number;
      index += count;
      first = (first + count) << 1;
      code <<= 1;
    }
    throw bad('bad Huffman code');
  };
  let final = 0;
  while (!final) {
    final = bits(1);
    const type = bits(2);
    if (type === 0) {
      bitBuffer = 0;
      bitCount = 0;
      if (position + 4 > input.length - 4) throw bad('ends early');
      const length = (input[position] as number) | ((input[position + 1] as number) << 8);
      position += 4;
      if (position + length > input.length - 4) throw bad('ends early');
      for (let i = 0; i < length; i++) out.push(input[position++] as number);
      continue;
    }
    let literals: Huffman;
    let distances: Huffman;
    if (type === 1) {
      literals = huffman([...new Array<number>(144).fill(8), ...new Array<number>(112).fill(9), ...new Array<number>(24).fill(7),
        ...new Array<number>(8).fill(8)]);
      distances = huffman(new Array<number>(30).fill(5));
    } else if (type === 2) {
      const literalCount = bits(5) + 257;
      const distanceCount = bits(5) + 1;
      const codeCount = bits(4) + 4;
      const codeLengths = new Array<number>(19).fill(0);
      for (let i = 0; i < codeCount; i++) codeLengths[CODE_ORDER[i] as number] = bits(3);
      const codes = huffman(codeLengths);
      const lengths: number[] = [];
      while (lengths.length < literalCount + distanceCount) {
        const symbol = decode(codes);
        if (symbol < 16) lengths.push(symbol);
        else if (symbol === 16) {
          if (!lengths.length) throw bad('repeat with nothing before');
          const previous = lengths.at(-1) as number;
          for (let n = 3 + bits(2); n > 0; n--) lengths.push(previous);
        } else for (let n = symbol === 17 ? 3 + bits(3) : 11 + bits(7); n > 0; n--) lengths.push(0);
      }
      literals = huffman(lengths.slice(0, literalCount));
      distances = huffman(lengths.slice(literalCount));
    } else throw bad('reserved block type');
    for (;;) {
      const symbol = decode(literals);
      if (symbol < 256) out.push(symbol);
      else if (symbol === 256) break;
      else {
        const l = symbol - 257;
        if (l >= 29) throw bad('bad length');
        const length = (LENGTH_BASE[l] as number) + bits(LENGTH_EXTRA[l] as number);
        const d = decode(distances);
        if (d >= 30) throw bad('bad distance');
        const distance = (DIST_BASE[d] as number) + bits(DIST_EXTRA[d] as number);
        if (distance > out.length) throw bad('distance too far back');
        for (let i = 0; i < length; i++) out.push(out[out.length - distance] as number);
      }
      if (out.length > 2 ** 24) throw bad('too large');
    }
  }
  const result = Uint8Array.from(out);
  position = position - Math.floor(bitCount / 8);
  if (position + 4 !== input.length) throw bad('bytes after the stream');
  let a = 1;
  let b = 0;
  for (const byte of result) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  const adler = new DataView(input.buffer, input.byteOffset + position, 4).getUint32(0, false);
  if (((b << 16) | a) >>> 0 !== adler) throw bad('Adler-32 mismatch');
  return result;
}

// -- payloads ------------------------------------------------------------------------------------------------------
function readLevelMajor(data: Uint8Array, header: Header, start: number, width: number, fail: Fail): ReadResult {
  const frames = header.num_frames ?? 0;
  if (header.num_levels * frames > MAX_TOKENS) throw fail(`header declares ${header.num_levels} x ${frames} tokens, more than the limit`);
  const codes = new Uint16Array(header.num_levels * frames);
  const present: number[] = [];
  let truncation: string | null = null;
  for (const section of header.sections) {
    const name = section.levels.length === 1 ? `level ${section.levels[0]}` : `the section of levels ${section.levels.join(',')}`;
    if (section.coding !== 'packed11') {
      throw fail(`${name} is range coded, which the page cannot decode; open it with the server mode or run \`mimistack decode\``);
    }
    const begin = start + section.offset;
    const end = begin + section.length;
    if (end > data.length) {
      truncation = `file is truncated: recovered ${present.length} of ${header.levels_present.length} levels`;
      break;
    }
    if (crc32(data, begin, end) !== section.crc32) throw fail(`${name} is corrupted (section checksum mismatch)`);
    const tokens = unpackTokens(data, section.levels.length * frames, width, undefined, begin);
    section.levels.forEach((level, k) => codes.set(tokens.subarray(k * frames, (k + 1) * frames), level * frames));
    present.push(...section.levels);
  }
  const last = header.sections.at(-1);
  const declared = last ? last.offset + last.length : 0;
  if (!truncation && start + declared < data.length) throw fail('unexpected bytes after the last section');
  return { grid: makeGrid(header, codes, frames, header.num_samples ?? 0, present, fail), truncation, metadata: header.metadata, version: header.version };
}

function readFrameMajor(data: Uint8Array, header: Header, start: number, width: number, fail: Fail): ReadResult {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const levels = header.levels_present;
  const packed = packedSize(levels.length, width);
  const columns: Uint16Array[] = [];
  let position = start;
  let numSamples: number | null = null;
  for (;;) {
    let record: { kind: number; body: number; end: number } | null;
    if (header.version === 1) {
      if (position + 11 > data.length) break;
      const index = view.getUint32(position, true);
      const length = view.getUint32(position + 7, true);
      const end = position + 11 + length + 4;
      if (end > data.length) break;
      if (view.getUint32(end - 4, true) !== crc32(data, position, end - 4)) throw fail(`record of frame ${index} is corrupted (checksum mismatch)`);
      if (index !== END_INDEX) {
        if (index !== columns.length) throw fail(`record for frame ${index} where frame ${columns.length} was expected`);
        if (view.getUint16(position + 4, true) !== levels.length) throw fail(`record of frame ${index} holds the wrong number of levels`);
        if (length !== packed && view.getUint8(position + 6) === 0) throw fail(`packed record of frame ${index} has the wrong length`);
      }
      record = { kind: index === END_INDEX ? 2 : view.getUint8(position + 6), body: position + 11, end };
    } else {
      record = readRecordV2(data, position, columns.length, packed, fail);
      if (record === null) break;
    }
    if (record.kind === 2) {
      let frames: number;
      if (header.version === 1) {
        frames = Number(view.getBigUint64(record.body, true));
        numSamples = Number(view.getBigUint64(record.body + 8, true));
      } else {
        const c = new Cursor(data.subarray(0, record.end - 4), record.body, fail);
        frames = c.varint('num_frames', 0, 2 ** 32);
        numSamples = c.varint('num_samples', 0, Number.MAX_SAFE_INTEGER);
      }
      if (frames !== columns.length) throw fail(`end record counts ${frames} frames, the file holds ${columns.length}`);
      position = record.end;
      if (position !== data.length) throw fail(`${data.length - position} unexpected bytes after the end record`);
      break;
    }
    if (record.kind !== 0) throw fail(`frame ${columns.length} is range coded, which the page cannot decode; use the server mode`);
    if (header.num_levels * (columns.length + 1) > MAX_TOKENS) throw fail('more than the limit of tokens');
    columns.push(unpackTokens(data, levels.length, width, undefined, record.body));
    position = record.end;
  }
  const frames = columns.length;
  const codes = new Uint16Array(header.num_levels * frames);
  columns.forEach((column, t) => levels.forEach((level, j) => (codes[level * frames + t] = column[j] as number)));
  const truncation = numSamples === null ? `stream has no end record: recovered ${frames} complete frames` : null;
  const samples = numSamples ?? Math.floor((frames * header.sample_rate) / header.frame_rate);
  return { grid: makeGrid(header, codes, frames, samples, levels, fail), truncation, metadata: header.metadata, version: header.version };
}

/** The v2 record at `position`: kind, where its body starts and where it ends (after its CRC); null if cut short. */
function readRecordV2(data: Uint8Array, position: number, index: number, packed: number, fail: Fail): { kind: number; body: number; end: number } | null {
  const kind = data[position] as number;
  let cursor = position + 1;
  let bodyEnd: number;
  if (kind === 0) bodyEnd = cursor + packed;
  else if (kind === 1 || kind === 2) {
    let groups = kind === 1 ? 1 : 2;
    let length = 0;
    let scale = 1;
    while (groups > 0) {
      if (cursor >= data.length) return null;
      const byte = data[cursor++] as number;
      if (kind === 1) length += (byte & 0x7f) * scale;
      scale *= 128;
      if (!(byte & 0x80)) groups -= 1;
      if (cursor - position > 21) throw fail(`record of frame ${index} is malformed`);
    }
    bodyEnd = kind === 1 ? cursor + length : cursor;
  } else throw fail(`record of frame ${index} has unknown kind ${kind}`);
  if (bodyEnd + 4 > data.length) return null;
  const stored = new DataView(data.buffer, data.byteOffset + bodyEnd, 4).getUint32(0, true);
  if (crc32(data, position, bodyEnd, crcOfIndex(index)) !== stored) {
    throw fail(`${kind === 2 ? 'end record' : `record of frame ${index}`} is corrupted (checksum mismatch, or a record out of sequence)`);
  }
  return { kind, body: position + 1, end: bodyEnd + 4 };
}

function makeGrid(header: Header, codes: Uint16Array, frames: number, numSamples: number, present: number[], fail: Fail): TokenGrid {
  const frameSize = header.sample_rate / header.frame_rate;
  const expected = numSamples ? Math.ceil(numSamples / frameSize) : 0;
  if (expected !== frames) throw fail(`header and tokens disagree: ${frames} frames do not match ${numSamples} samples`);
  for (let i = 0; i < codes.length; i++) {
    if ((codes[i] as number) >= header.codebook_size) throw fail(`token ${codes[i]} is outside the codebook of ${header.codebook_size}`);
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
