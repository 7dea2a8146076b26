/**
 * The mimistack streaming protocol, version 1: the TypeScript mirror of `src/mimistack/stream/` (`messages.py`, `rate.py`).
 *
 * The spec is `docs/protocol.md`; this file and the Python module both follow it, and
 * `tests/test_protocol_js.py` checks that bytes written by one are read back identically by the other.
 * Every message is one binary WebSocket message: byte 0 is the kind, byte 1 the version, then a fixed
 * little-endian body per kind. `decodeMessage` throws `ProtocolError` (and nothing else) for anything malformed.
 *
 *   const ws = new WebSocket(url); ws.binaryType = "arraybuffer";
 *   ws.onmessage = (event) => { const message = decodeMessage(event.data as ArrayBuffer); ... };
 *   ws.send(encodeMessage({ kind: MessageKind.FEEDBACK, ... }));
 *
 * Field names are the Python ones in camelCase. `Frame.tokens` is frame-major (the wire order): level k of frame
 * `firstFrame + j` is `tokens[j * levelCount + k]` (see `frameToken`).
 */

import { packTokens, paddingIsZero, unpackTokens } from "../packing.js";

export const PROTOCOL_VERSION = 1;
/** Bytes of a FRAME message before its tokens: the per-message overhead that `planFrames` budgets for. */
export const FRAME_HEADER_BYTES = 9;
/** Largest message of any kind; a receiver may refuse anything longer. */
export const MAX_MESSAGE_BYTES = 1 << 18;

export const MessageKind = {
  HELLO: 1,
  FRAME: 2,
  FEEDBACK: 3,
  BANDWIDTH: 4,
  END: 5,
  ERROR: 6,
} as const;
export type MessageKind = (typeof MessageKind)[keyof typeof MessageKind];

/** `ErrorMessage.code` values; other codes may be received and are kept as plain numbers. */
export const ErrorCode = {
  PROTOCOL: 1,
  VERSION: 2,
  INCOMPATIBLE: 3,
  STATE: 4,
  INTERNAL: 5,
} as const;

export type CacheMode = "window" | "moshi";
export type RateControl = "fixed" | "schedule" | "feedback";
export const CACHE_MODES: readonly CacheMode[] = ["window", "moshi"];
export const RATE_CONTROLS: readonly RateControl[] = ["fixed", "schedule", "feedback"];

/** Sender -> receiver, first message: the session parameters. */
export interface Hello {
  kind: typeof MessageKind.HELLO;
  numLevels: number;
  maxLevels: number;
  sampleRate: number;
  frameSize: number;
  codebookSize: number;
  /** 64 lowercase hex digits. */
  weightsSha256: string;
  /** Sender wall clock (µs since the Unix epoch) when the first sample was captured. */
  streamStartUs: number;
  /** Source length in samples, or null when not known in advance. */
  numSamples: number | null;
  cacheMode: CacheMode;
  rateControl: RateControl;
  /** The codec's MimiConfig as JSON text (may be empty). */
  codecConfig: string;
}

/** Sender -> receiver: `frameCount` frames from `firstFrame`, each with levels 0..levelCount-1. */
export interface Frame {
  kind: typeof MessageKind.FRAME;
  firstFrame: number;
  frameCount: number;
  levelCount: number;
  bitsPerToken: number;
  /** frameCount * levelCount tokens, frame-major. */
  tokens: Uint16Array;
}

/** Receiver -> sender, a few times a second. */
export interface Feedback {
  kind: typeof MessageKind.FEEDBACK;
  sequence: number;
  framesPlayed: number;
  framesConcealed: number;
  levelCount: number;
  deliveredBps: number;
  lossPermille: number;
  latencyUs: number;
  queueDelayUs: number;
}

/** Sender -> receiver, whenever the sender's plan changes. */
export interface Bandwidth {
  kind: typeof MessageKind.BANDWIDTH;
  fromFrame: number;
  estimateBps: number;
  levelCount: number;
  framesPerMessage: number;
}

/** Sender -> receiver, last message. */
export interface End {
  kind: typeof MessageKind.END;
  numFrames: number;
  numSamples: number;
}

/** Either direction: why the session is being closed. */
export interface ErrorMessage {
  kind: typeof MessageKind.ERROR;
  code: number;
  text: string;
}

export type Message = Hello | Frame | Feedback | Bandwidth | End | ErrorMessage;

export class ProtocolError extends Error {
  readonly code: number;

  constructor(message: string, code: number = ErrorCode.PROTOCOL) {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
  }
}

const U32 = 0xffffffff;
const UNKNOWN_SAMPLES = 0xffffffffffffffffn;
const HEADER_SIZES = { hello: 68, frame: 9, feedback: 29, bandwidth: 12, end: 14, error: 6 } as const;
const KIND_NAMES: Record<number, string> = {
  1: "HELLO",
  2: "FRAME",
  3: "FEEDBACK",
  4: "BANDWIDTH",
  5: "END",
  6: "ERROR",
};

/** Width of one token in the fixed-width packing: ceil(log2(codebookSize)), at least 1 (11 for Mimi). */
export function bitsPerToken(codebookSize: number): number {
  checkInt("codebookSize", codebookSize, 1, 65536);
  let width = 1;
  while (1 << width < codebookSize) width += 1;
  return width;
}

/** Level `level` of frame `firstFrame + frameOffset` in a FRAME message. */
export function frameToken(frame: Frame, frameOffset: number, level: number): number {
  if (frameOffset < 0 || frameOffset >= frame.frameCount || level < 0 || level >= frame.levelCount) {
    throw new RangeError(`no token for frame offset ${frameOffset}, level ${level} in this FRAME`);
  }
  return frame.tokens[frameOffset * frame.levelCount + level] as number;
}

/** Sender wall-clock seconds when frame `frameIndex`'s last sample was captured. */
export function captureTime(hello: Hello, frameIndex: number): number {
  return hello.streamStartUs / 1e6 + ((frameIndex + 1) * hello.frameSize) / hello.sampleRate;
}

// -- encoding ------------------------------------------------------------------------------------------------------
function checkInt(name: string, value: unknown, low: number, high: number): number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new ProtocolError(`${name} must be an integer, got ${String(value)}`);
  }
  if (value < low || value > high) throw new ProtocolError(`${name} must lie in ${low}-${high}, got ${value}`);
  return value;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function utf8(name: string, text: unknown): Uint8Array {
  if (typeof text !== "string") throw new ProtocolError(`${name} must be a string`);
  if (LONE_SURROGATE.test(text)) throw new ProtocolError(`${name} cannot be encoded as UTF-8 (a lone surrogate)`);
  const bytes = new TextEncoder().encode(text);
  if (bytes.length > 0xffff) throw new ProtocolError(`${name} is ${bytes.length} bytes of UTF-8, more than 65535`);
  return bytes;
}

function fromUtf8(name: string, bytes: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new ProtocolError(`${name} is not valid UTF-8`);
  }
}

function choiceIndex<T extends string>(name: string, value: T, choices: readonly T[]): number {
  const index = choices.indexOf(value);
  if (index < 0) throw new ProtocolError(`${name} must be one of ${choices.join(", ")}; got ${String(value)}`);
  return index;
}

function start(kind: MessageKind, size: number): { bytes: Uint8Array; view: DataView } {
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, kind);
  view.setUint8(1, PROTOCOL_VERSION);
  return { bytes, view };
}

function encodeHello(m: Hello): Uint8Array {
  const numLevels = checkInt("numLevels", m.numLevels, 1, 255);
  checkInt("maxLevels", m.maxLevels, 1, numLevels);
  if (typeof m.weightsSha256 !== "string" || !/^[0-9a-f]{64}$/.test(m.weightsSha256)) {
    throw new ProtocolError(`weightsSha256 must be 64 lowercase hex digits, got ${String(m.weightsSha256)}`);
  }
  const samples =
    m.numSamples === null
      ? UNKNOWN_SAMPLES
      : BigInt(checkInt("numSamples", m.numSamples, 0, Number.MAX_SAFE_INTEGER));
  const config = utf8("codecConfig", m.codecConfig);
  const { bytes, view } = start(MessageKind.HELLO, HEADER_SIZES.hello + config.length);
  view.setUint8(2, numLevels);
  view.setUint8(3, m.maxLevels);
  view.setUint32(4, checkInt("sampleRate", m.sampleRate, 1, U32), true);
  view.setUint32(8, checkInt("frameSize", m.frameSize, 1, U32), true);
  view.setUint32(12, checkInt("codebookSize", m.codebookSize, 1, 65536), true);
  view.setUint8(16, choiceIndex("cacheMode", m.cacheMode, CACHE_MODES));
  view.setUint8(17, choiceIndex("rateControl", m.rateControl, RATE_CONTROLS));
  view.setBigUint64(18, BigInt(checkInt("streamStartUs", m.streamStartUs, 0, Number.MAX_SAFE_INTEGER)), true);
  view.setBigUint64(26, samples, true);
  for (let i = 0; i < 32; i += 1) bytes[34 + i] = parseInt(m.weightsSha256.slice(2 * i, 2 * i + 2), 16);
  view.setUint16(66, config.length, true);
  bytes.set(config, HEADER_SIZES.hello);
  return bytes;
}

function encodeFrame(m: Frame): Uint8Array {
  const frames = checkInt("frameCount", m.frameCount, 1, 255);
  const levels = checkInt("levelCount", m.levelCount, 1, 255);
  const first = checkInt("firstFrame", m.firstFrame, 0, U32);
  checkInt("firstFrame + frameCount", first + frames, 1, 2 ** 32);
  const width = checkInt("bitsPerToken", m.bitsPerToken, 1, 16);
  if (!(m.tokens instanceof Uint16Array) || m.tokens.length !== frames * levels) {
    throw new ProtocolError(`tokens must be a Uint16Array of frameCount * levelCount = ${frames * levels} tokens`);
  }
  for (const token of m.tokens) {
    if (token >= 1 << width) {
      throw new ProtocolError(`tokens must lie in 0-${(1 << width) - 1} for ${width}-bit packing, got ${token}`);
    }
  }
  const size = HEADER_SIZES.frame + Math.ceil((frames * levels * width) / 8);
  const { bytes, view } = start(MessageKind.FRAME, size);
  view.setUint32(2, first, true);
  view.setUint8(6, frames);
  view.setUint8(7, levels);
  view.setUint8(8, width);
  packTokens(m.tokens, width, bytes, HEADER_SIZES.frame);
  return bytes;
}

function encodeFeedback(m: Feedback): Uint8Array {
  const { bytes, view } = start(MessageKind.FEEDBACK, HEADER_SIZES.feedback);
  view.setUint32(2, checkInt("sequence", m.sequence, 0, U32), true);
  view.setUint32(6, checkInt("framesPlayed", m.framesPlayed, 0, U32), true);
  view.setUint32(10, checkInt("framesConcealed", m.framesConcealed, 0, U32), true);
  view.setUint32(14, checkInt("deliveredBps", m.deliveredBps, 0, U32), true);
  view.setUint32(18, checkInt("latencyUs", m.latencyUs, 0, U32), true);
  view.setUint32(22, checkInt("queueDelayUs", m.queueDelayUs, 0, U32), true);
  view.setUint8(26, checkInt("levelCount", m.levelCount, 0, 255));
  view.setUint16(27, checkInt("lossPermille", m.lossPermille, 0, 1000), true);
  return bytes;
}

function encodeBandwidth(m: Bandwidth): Uint8Array {
  const { bytes, view } = start(MessageKind.BANDWIDTH, HEADER_SIZES.bandwidth);
  view.setUint32(2, checkInt("fromFrame", m.fromFrame, 0, U32), true);
  view.setUint32(6, checkInt("estimateBps", m.estimateBps, 0, U32), true);
  view.setUint8(10, checkInt("levelCount", m.levelCount, 1, 255));
  view.setUint8(11, checkInt("framesPerMessage", m.framesPerMessage, 1, 255));
  return bytes;
}

function encodeEnd(m: End): Uint8Array {
  const { bytes, view } = start(MessageKind.END, HEADER_SIZES.end);
  view.setUint32(2, checkInt("numFrames", m.numFrames, 0, U32), true);
  view.setBigUint64(6, BigInt(checkInt("numSamples", m.numSamples, 0, Number.MAX_SAFE_INTEGER)), true);
  return bytes;
}

function encodeError(m: ErrorMessage): Uint8Array {
  const text = utf8("text", m.text);
  const { bytes, view } = start(MessageKind.ERROR, HEADER_SIZES.error + text.length);
  view.setUint16(2, checkInt("code", m.code, 0, 0xffff), true);
  view.setUint16(4, text.length, true);
  bytes.set(text, HEADER_SIZES.error);
  return bytes;
}

/** One message as the bytes of a binary WebSocket message. Throws `ProtocolError` for out-of-range fields. */
export function encodeMessage(message: Message): Uint8Array {
  switch (message.kind) {
    case MessageKind.HELLO:
      return encodeHello(message);
    case MessageKind.FRAME:
      return encodeFrame(message);
    case MessageKind.FEEDBACK:
      return encodeFeedback(message);
    case MessageKind.BANDWIDTH:
      return encodeBandwidth(message);
    case MessageKind.END:
      return encodeEnd(message);
    case MessageKind.ERROR:
      return encodeError(message);
    default:
      throw new ProtocolError(`unknown message kind ${String((message as { kind: unknown }).kind)}`);
  }
}

// -- decoding ------------------------------------------------------------------------------------------------------
function expectLength(name: string, bytes: Uint8Array, length: number): void {
  if (bytes.length !== length) throw new ProtocolError(`${name} message is ${bytes.length} bytes, expected ${length}`);
}

function atLeast(name: string, bytes: Uint8Array, length: number): void {
  if (bytes.length < length) {
    throw new ProtocolError(`${name} message is ${bytes.length} bytes, shorter than its ${length}-byte header`);
  }
}

function safeU64(name: string, value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError(`${name} must lie in 0-2^53-1, got ${value}`);
  return Number(value);
}

function decodeHello(bytes: Uint8Array, view: DataView): Hello {
  atLeast("HELLO", bytes, HEADER_SIZES.hello);
  const configLength = view.getUint16(66, true);
  expectLength("HELLO", bytes, HEADER_SIZES.hello + configLength);
  const cacheMode = CACHE_MODES[view.getUint8(16)];
  if (cacheMode === undefined) throw new ProtocolError(`HELLO has an unknown cache mode ${view.getUint8(16)}`);
  const rateControl = RATE_CONTROLS[view.getUint8(17)];
  if (rateControl === undefined) throw new ProtocolError(`HELLO has an unknown rate control ${view.getUint8(17)}`);
  const samples = view.getBigUint64(26, true);
  let sha = "";
  for (let i = 34; i < 66; i += 1) sha += (bytes[i] as number).toString(16).padStart(2, "0");
  const hello: Hello = {
    kind: MessageKind.HELLO,
    numLevels: view.getUint8(2),
    maxLevels: view.getUint8(3),
    sampleRate: view.getUint32(4, true),
    frameSize: view.getUint32(8, true),
    codebookSize: view.getUint32(12, true),
    weightsSha256: sha,
    streamStartUs: safeU64("streamStartUs", view.getBigUint64(18, true)),
    numSamples: samples === UNKNOWN_SAMPLES ? null : safeU64("numSamples", samples),
    cacheMode,
    rateControl,
    codecConfig: fromUtf8("HELLO codecConfig", bytes.subarray(HEADER_SIZES.hello)),
  };
  encodeHello(hello); // the same range checks as the sender's
  return hello;
}

function decodeFrame(bytes: Uint8Array, view: DataView): Frame {
  atLeast("FRAME", bytes, HEADER_SIZES.frame);
  const firstFrame = view.getUint32(2, true);
  const frameCount = view.getUint8(6);
  const levelCount = view.getUint8(7);
  const width = view.getUint8(8);
  if (frameCount === 0 || levelCount === 0) {
    throw new ProtocolError(`FRAME holds ${frameCount} frames x ${levelCount} levels; both must be at least 1`);
  }
  if (width < 1 || width > 16) throw new ProtocolError(`FRAME bitsPerToken must lie in 1-16, got ${width}`);
  if (firstFrame + frameCount > 2 ** 32) {
    throw new ProtocolError(`FRAME runs past frame index 2^32 - 1 (${firstFrame} + ${frameCount} frames)`);
  }
  const count = frameCount * levelCount;
  expectLength("FRAME", bytes, HEADER_SIZES.frame + Math.ceil((count * width) / 8));
  const tokens = unpackTokens(bytes, count, width, undefined, HEADER_SIZES.frame);
  if (!paddingIsZero(bytes, count, width, HEADER_SIZES.frame)) {
    throw new ProtocolError("FRAME padding bits after the last token must be zero");
  }
  return { kind: MessageKind.FRAME, firstFrame, frameCount, levelCount, bitsPerToken: width, tokens };
}

function decodeFeedback(bytes: Uint8Array, view: DataView): Feedback {
  expectLength("FEEDBACK", bytes, HEADER_SIZES.feedback);
  const lossPermille = view.getUint16(27, true);
  if (lossPermille > 1000) throw new ProtocolError(`FEEDBACK lossPermille must lie in 0-1000, got ${lossPermille}`);
  return {
    kind: MessageKind.FEEDBACK,
    sequence: view.getUint32(2, true),
    framesPlayed: view.getUint32(6, true),
    framesConcealed: view.getUint32(10, true),
    levelCount: view.getUint8(26),
    deliveredBps: view.getUint32(14, true),
    lossPermille,
    latencyUs: view.getUint32(18, true),
    queueDelayUs: view.getUint32(22, true),
  };
}

function decodeBandwidth(bytes: Uint8Array, view: DataView): Bandwidth {
  expectLength("BANDWIDTH", bytes, HEADER_SIZES.bandwidth);
  const message: Bandwidth = {
    kind: MessageKind.BANDWIDTH,
    fromFrame: view.getUint32(2, true),
    estimateBps: view.getUint32(6, true),
    levelCount: view.getUint8(10),
    framesPerMessage: view.getUint8(11),
  };
  encodeBandwidth(message);
  return message;
}

function decodeEnd(bytes: Uint8Array, view: DataView): End {
  expectLength("END", bytes, HEADER_SIZES.end);
  return {
    kind: MessageKind.END,
    numFrames: view.getUint32(2, true),
    numSamples: safeU64("numSamples", view.getBigUint64(6, true)),
  };
}

function decodeError(bytes: Uint8Array, view: DataView): ErrorMessage {
  atLeast("ERROR", bytes, HEADER_SIZES.error);
  const length = view.getUint16(4, true);
  expectLength("ERROR", bytes, HEADER_SIZES.error + length);
  return {
    kind: MessageKind.ERROR,
    code: view.getUint16(2, true),
    text: fromUtf8("ERROR text", bytes.subarray(HEADER_SIZES.error)),
  };
}

/** Parse one binary WebSocket message. Throws `ProtocolError` (and nothing else) for anything malformed. */
export function decodeMessage(data: ArrayBuffer | ArrayBufferView | string): Message {
  if (typeof data === "string") {
    throw new ProtocolError("text WebSocket messages are not part of the protocol; messages are binary");
  }
  const bytes =
    data instanceof ArrayBuffer
      ? new Uint8Array(data)
      : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (bytes.length < 2) {
    throw new ProtocolError(`a message needs at least 2 bytes (kind, version), got ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const kind = view.getUint8(0);
  const version = view.getUint8(1);
  const name = KIND_NAMES[kind];
  if (name === undefined) throw new ProtocolError(`unknown message kind ${kind}`);
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      `unsupported protocol version ${version} in a ${name} message (this client speaks version ${PROTOCOL_VERSION})`,
      ErrorCode.VERSION,
    );
  }
  switch (kind) {
    case MessageKind.HELLO:
      return decodeHello(bytes, view);
    case MessageKind.FRAME:
      return decodeFrame(bytes, view);
    case MessageKind.FEEDBACK:
      return decodeFeedback(bytes, view);
    case MessageKind.BANDWIDTH:
      return decodeBandwidth(bytes, view);
    case MessageKind.END:
      return decodeEnd(bytes, view);
    default:
      return decodeError(bytes, view);
  }
}

// -- the rate rule -------------------------------------------------------------------------------------------------
export interface Plan {
  framesPerMessage: number;
  levelCount: number;
}

export interface PlanOptions {
  frameDuration?: number;
  bitsPerToken?: number;
  maxLevels?: number;
  utilization?: number;
  maxFramesPerMessage?: number;
  overheadBytes?: number;
}

/**
 * The most levels that fit the bandwidth, batching frames only when one frame cannot carry level 0 (the same
 * operations as Python's `plan_frames`, so both give the same plan; see docs/protocol.md, "The rate rule").
 */
export function planFrames(bandwidthBps: number, options: PlanOptions = {}): Plan {
  const frameDuration = options.frameDuration ?? 0.08;
  const width = options.bitsPerToken ?? 11;
  const maxLevels = options.maxLevels ?? 32;
  const utilization = options.utilization ?? 0.9;
  const maxFrames = options.maxFramesPerMessage ?? 16;
  const overheadBytes = options.overheadBytes ?? FRAME_HEADER_BYTES;
  if (!Number.isFinite(bandwidthBps)) throw new RangeError(`bandwidth must be finite, got ${bandwidthBps}`);
  if (maxLevels < 1 || maxFrames < 1 || width < 1) {
    throw new RangeError("maxLevels, maxFramesPerMessage and bitsPerToken must be at least 1");
  }
  const usable = bandwidthBps * utilization * frameDuration;
  for (let frames = 1; frames <= maxFrames; frames += 1) {
    const levels = Math.floor((usable * frames - 8 * overheadBytes) / (width * frames));
    if (levels >= 1) return { framesPerMessage: frames, levelCount: Math.min(levels, maxLevels) };
  }
  return { framesPerMessage: maxFrames, levelCount: 1 };
}
