// Checks web/src/mimi-format.ts (compiled by tsc) against the golden .mimi files, for tests/test_mimifile_golden.py.
//
//   node golden.mjs MIMI_FORMAT_JS GOLDEN_DIR OUTPUT_JSON [INPUT_JSON]
//
// For every file in GOLDEN_DIR/index.json: readMimi must give the listed fields and codes (files with range-coded
// sections or records must be refused with a message saying so), and for v2 level-major packed files writeMimi
// must give the file's bytes back (except where Python stored the metadata zlib-compressed, which this writer never
// does: then the rewrite must be a valid file of the same grid, checked by the Python side). INPUT_JSON (optional)
// is a list of hex strings (files Python wrote, or prefixes of them): each is read and rewritten, and the results
// are reported for the Python side to compare. Writes {goldens: [...], inputs: [...]} and exits 1 when a golden
// check fails.

import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modulePath, goldenDir, outputPath, inputPath] = process.argv.slice(2);
const { readMimi, writeMimi, MimiFormatError } = await import(pathToFileURL(modulePath).href);
const index = JSON.parse(readFileSync(join(goldenDir, "index.json"), "utf8"));

const toHex = (bytes) => Buffer.from(bytes).toString("hex");
const codesSha256 = (codes) => createHash("sha256").update(Buffer.from(codes.buffer, codes.byteOffset, codes.byteLength)).digest("hex");

function describe(result) {
  const { grid } = result;
  return {
    version: result.version, numLevels: grid.numLevels, numFrames: grid.numFrames, numSamples: grid.numSamples,
    sampleRate: grid.sampleRate, frameRate: grid.frameRate, codebookSize: grid.codebookSize,
    weightsSha256: grid.weightsSha256, levelsPresent: grid.levelsPresent, metadata: result.metadata,
    truncation: result.truncation, codesSha256: codesSha256(grid.codes),
  };
}

function attempt(bytes, source) {
  try {
    const result = readMimi(bytes, source);
    const rewritten = writeMimi(result.grid, result.grid.levelsPresent, result.metadata);
    return { ok: true, ...describe(result), rewritten: toHex(rewritten) };
  } catch (error) {
    if (!(error instanceof MimiFormatError)) return { ok: false, error: error?.name ?? "unknown", text: String(error) };
    return { ok: false, error: "MimiFormatError", text: error.message };
  }
}

const goldens = [];
let failures = 0;
for (const golden of index.goldens) {
  const bytes = new Uint8Array(readFileSync(join(goldenDir, golden.file)));
  const result = attempt(bytes, golden.file);
  const problems = [];
  const rangeCoded = golden.coding === "range";
  if (rangeCoded && !result.ok) {
    if (!/range coded/.test(result.text)) problems.push(`refused for the wrong reason: ${result.text}`);
  } else if (!result.ok) {
    problems.push(`not read: ${result.text}`);
  } else {
    const expected = {
      version: golden.version, numLevels: golden.num_levels, numFrames: golden.num_frames,
      numSamples: golden.num_samples, sampleRate: golden.sample_rate, frameRate: golden.frame_rate,
      codebookSize: golden.codebook_size, weightsSha256: golden.weights_sha256, levelsPresent: golden.levels_present,
      metadata: golden.metadata, truncation: null, codesSha256: golden.codes_sha256,
    };
    for (const [key, value] of Object.entries(expected)) {
      if (JSON.stringify(result[key]) !== JSON.stringify(value)) {
        problems.push(`${key}: got ${JSON.stringify(result[key])}, expected ${JSON.stringify(value)}`);
      }
    }
    const rewritable = golden.version === 2 && golden.layout === "level-major" && golden.coding === "packed11";
    const zlibMetadata = golden.file.includes("zlib");
    if (rewritable && !zlibMetadata && result.rewritten !== toHex(bytes)) problems.push("writeMimi does not reproduce the file");
  }
  failures += problems.length ? 1 : 0;
  goldens.push({ file: golden.file, ok: result.ok, problems, rewritten: result.rewritten ?? null });
}

const inputs = inputPath ? JSON.parse(readFileSync(inputPath, "utf8")).map((hex, i) => attempt(new Uint8Array(Buffer.from(hex, "hex")), `input ${i}`)) : [];
writeFileSync(outputPath, JSON.stringify({ goldens, inputs }));
if (failures) {
  console.error(`${failures} golden file(s) failed: ${JSON.stringify(goldens.filter((g) => g.problems.length))}`);
  process.exit(1);
}
console.log(`ok: ${goldens.length} golden files, ${inputs.length} inputs`);
