// Drives web/src/client/protocol.ts (compiled by tsc) for tests/test_protocol_js.py.
//
//   node run.mjs PROTOCOL_JS COMMAND INPUT_JSON OUTPUT_JSON
//
// COMMAND:
//   selftest  round-trip an example of every message kind in JS, then feed seeded random and mutated bytes to
//             decodeMessage (only ProtocolError may come out); INPUT_JSON is {"fuzz": count, "seed": n}
//   decode    INPUT_JSON is a list of hex strings; writes, per item, {ok, message, reencoded} or {ok: false, ...}
//   encode    INPUT_JSON is a list of messages as JSON (tokens as a list); writes hex strings or errors
//   plan      INPUT_JSON is a list of [bandwidthBps, options]; writes the plans
// Exits 1 when a self-test fails; decoding and encoding failures are data, reported in the output.

import { readFileSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [protocolPath, command, inputPath, outputPath] = process.argv.slice(2);
const protocol = await import(pathToFileURL(protocolPath).href);
const { MessageKind, ProtocolError, decodeMessage, encodeMessage, planFrames } = protocol;
const input = JSON.parse(readFileSync(inputPath, "utf8"));

const toHex = (bytes) => Buffer.from(bytes).toString("hex");
const fromHex = (hex) => new Uint8Array(Buffer.from(hex, "hex"));

function toJson(message) {
  return message.kind === MessageKind.FRAME ? { ...message, tokens: Array.from(message.tokens) } : { ...message };
}

function fromJson(json) {
  return json.kind === MessageKind.FRAME ? { ...json, tokens: Uint16Array.from(json.tokens) } : { ...json };
}

function failure(error) {
  if (!(error instanceof ProtocolError)) return { ok: false, error: error?.name ?? "unknown", text: String(error) };
  return { ok: false, error: "ProtocolError", code: error.code, text: error.message };
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

const EXAMPLES = [
  {
    kind: MessageKind.HELLO, numLevels: 32, maxLevels: 24, sampleRate: 24000, frameSize: 1920, codebookSize: 2048,
    weightsSha256: "ab".repeat(32), streamStartUs: 1_767_225_600_123_456, numSamples: null, cacheMode: "window",
    rateControl: "feedback", codecConfig: '{"sample_rate": 24000, "note": "é ✓ 🎧"}',
  },
  {
    kind: MessageKind.FRAME, firstFrame: 4_294_967_290, frameCount: 3, levelCount: 2, bitsPerToken: 11,
    tokens: Uint16Array.from([0, 2047, 1, 1024, 77, 2000]),
  },
  {
    kind: MessageKind.FEEDBACK, sequence: 7, framesPlayed: 125, framesConcealed: 12, levelCount: 22,
    deliveredBps: 4321, lossPermille: 96, latencyUs: 180_000, queueDelayUs: 4_294_967_295,
  },
  { kind: MessageKind.BANDWIDTH, fromFrame: 18, estimateBps: 4400, levelCount: 22, framesPerMessage: 1 },
  { kind: MessageKind.END, numFrames: 63, numSamples: 120_000 },
  { kind: MessageKind.ERROR, code: 3, text: "the sender's codec does not match ✗" },
];

function roundTripsExactly(message) {
  const bytes = encodeMessage(message);
  const decoded = decodeMessage(bytes);
  const again = encodeMessage(decoded);
  return JSON.stringify(toJson(decoded)) === JSON.stringify(toJson(message)) && sameBytes(bytes, again);
}

function mulberry32(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function selftest({ fuzz, seed }) {
  const kinds = {};
  for (const example of EXAMPLES) {
    const name = Object.keys(MessageKind).find((key) => MessageKind[key] === example.kind);
    kinds[name] = roundTripsExactly(example) ? "ok" : "mismatch";
  }
  const random = mulberry32(seed);
  const valid = EXAMPLES.map((example) => encodeMessage(example));
  let accepted = 0;
  const crashes = [];
  for (let i = 0; i < fuzz; i += 1) {
    let bytes;
    if (i % 2 === 0) {
      bytes = new Uint8Array(Math.floor(random() * 80));
      for (let j = 0; j < bytes.length; j += 1) bytes[j] = Math.floor(random() * 256);
      if (bytes.length > 1 && random() < 0.7) { bytes[0] = 1 + Math.floor(random() * 6); bytes[1] = 1; }
    } else {
      const base = valid[Math.floor(random() * valid.length)];
      bytes = base.slice(0, random() < 0.3 ? Math.floor(random() * (base.length + 1)) : base.length);
      const flips = 1 + Math.floor(random() * 3);
      for (let f = 0; f < flips && bytes.length > 0; f += 1) {
        bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
      }
    }
    try {
      const message = decodeMessage(bytes);
      accepted += 1;
      if (!sameBytes(encodeMessage(message), bytes)) crashes.push({ input: toHex(bytes), problem: "not canonical" });
    } catch (error) {
      if (!(error instanceof ProtocolError)) crashes.push({ input: toHex(bytes), problem: String(error) });
    }
  }
  return { kinds, fuzz: { tried: fuzz, accepted, crashes: crashes.slice(0, 10), crashCount: crashes.length } };
}

let output;
if (command === "selftest") {
  output = selftest(input);
} else if (command === "decode") {
  output = input.map((hex) => {
    try {
      const message = decodeMessage(fromHex(hex));
      return { ok: true, message: toJson(message), reencoded: toHex(encodeMessage(message)) };
    } catch (error) {
      return failure(error);
    }
  });
} else if (command === "encode") {
  output = input.map((json) => {
    try {
      return { ok: true, hex: toHex(encodeMessage(fromJson(json))) };
    } catch (error) {
      return failure(error);
    }
  });
} else if (command === "plan") {
  output = input.map(([bandwidth, options]) => planFrames(bandwidth, options));
} else {
  throw new Error(`unknown command ${command}`);
}
writeFileSync(outputPath, JSON.stringify(output));
if (command === "selftest") {
  const failed = Object.values(output.kinds).some((status) => status !== "ok") || output.fuzz.crashCount > 0;
  process.exit(failed ? 1 : 0);
}
