/**
 * The decoder's latent from codes, computed in the worker from a web bundle's `codebooks.bin` (this replaced the old
 * embed.onnx graph).
 *
 * `codebooks.bin` (little-endian, float32 or float16) holds `tables` [K, d, size], entry [k, j, i] = -2 × component
 * j of centroid i of level k (the encoder graph reads it as ONNX external data), and the branches' output
 * projections [D, d]. At load the tables are turned once into float32 centroids [K, size, d] (exact: float16 widens
 * exactly and × -0.5 is exact), so a frame's latent is
 * `semantic_proj · Σ_{on k < S} centroid_k[c_k] + acoustic_proj · Σ_{on k ≥ S} centroid_k[c_k]`.
 * The sums run in float32 in level order, as `mimistack.levels.latent_from_codes` does (the same bits); the
 * projections accumulate in float64 and round once. A level that is off contributes nothing.
 */

export interface ArraySpec {
  offset: number;
  shape: number[];
}

export interface CodebookSpec {
  file: string;
  dtype: 'float32' | 'float16';
  tables: ArraySpec;
  semantic_output_proj: ArraySpec;
  acoustic_output_proj: ArraySpec;
}

let halfTable: Float32Array | null = null;

/** Every float16 bit pattern as float32 (exact: each half is a float32 value). */
function halves(): Float32Array {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const mantissa = bits & 0x3ff;
    halfTable[bits] = exponent === 0 ? sign * mantissa * 2 ** -24
      : exponent === 31 ? (mantissa ? NaN : sign * Infinity)
        : sign * (1024 + mantissa) * 2 ** (exponent - 25);
  }
  return halfTable;
}

/** Float16 bits (as stored) to float32 values. */
export function halfToFloat(bits: Uint16Array): Float32Array {
  const table = halves();
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
  return out;
}

/** The values of `dtype` at byte `offset` of `bytes`, as float32 (float16 widened; float32 a view when aligned). */
function readArray(bytes: Uint8Array, dtype: string, spec: ArraySpec, what: string): Float32Array {
  const count = spec.shape.reduce((a, b) => a * b, 1);
  const width = dtype === 'float16' ? 2 : 4;
  const end = spec.offset + count * width;
  if (!Number.isInteger(spec.offset) || spec.offset < 0 || end > bytes.length) {
    throw new Error(`codebooks.bin is ${bytes.length} bytes, but ${what} [${spec.shape}] ${dtype} at byte ${spec.offset} `
      + `ends at ${end}: the file does not match its manifest`);
  }
  const start = bytes.byteOffset + spec.offset;
  const raw = start % width ? bytes.slice(spec.offset, end).buffer : bytes.buffer; // a copy only when misaligned
  const at = start % width ? 0 : start;
  return dtype === 'float16' ? halfToFloat(new Uint16Array(raw, at, count)) : new Float32Array(raw, at, count);
}

export class Codebooks {
  private constructor(
    /** float32 [K, size, d]: centroid i of level k at ((k * size) + i) * d. */
    private readonly centroids: Float32Array,
    /** float32 [D, d] row-major. */
    private readonly semanticProj: Float32Array,
    private readonly acousticProj: Float32Array,
    readonly numLevels: number,
    readonly numSemantic: number,
    readonly codebookSize: number,
    readonly codebookDim: number,
    readonly dimension: number,
  ) {}

  /** Read `codebooks.bin` as the manifest describes it, checked against the model's sizes. */
  static parse(bytes: Uint8Array, spec: CodebookSpec, model: {
    numLevels: number; numSemantic: number; codebookSize: number; codebookDim: number; dimension: number;
  }): Codebooks {
    if (spec.dtype !== 'float32' && spec.dtype !== 'float16') {
      throw new Error(`codebooks.bin has dtype ${JSON.stringify(spec.dtype)}; this page reads float32 or float16`);
    }
    const { numLevels: K, codebookSize: size, codebookDim: d, dimension: D } = model;
    const expect = (what: string, shape: number[] | undefined, wanted: number[]) => {
      if (!Array.isArray(shape) || shape.join() !== wanted.join()) {
        throw new Error(`manifest.json: codebooks ${what} has shape ${JSON.stringify(shape)}, expected [${wanted}]`);
      }
    };
    expect('tables', spec.tables?.shape, [K, d, size]);
    expect('semantic_output_proj', spec.semantic_output_proj?.shape, [D, d]);
    expect('acoustic_output_proj', spec.acoustic_output_proj?.shape, [D, d]);
    const tables = readArray(bytes, spec.dtype, spec.tables, 'tables');
    const centroids = new Float32Array(K * size * d);
    for (let k = 0; k < K; k++) {
      for (let j = 0; j < d; j++) {
        const from = (k * d + j) * size;
        for (let i = 0; i < size; i++) centroids[(k * size + i) * d + j] = -0.5 * tables[from + i];
      }
    }
    // Copies (slice), so that the file's buffer is not kept alive by a view.
    return new Codebooks(centroids, readArray(bytes, spec.dtype, spec.semantic_output_proj, 'semantic_output_proj').slice(),
      readArray(bytes, spec.dtype, spec.acoustic_output_proj, 'acoustic_output_proj').slice(), K, model.numSemantic, size, d, D);
  }

  /** float32 [D, n] latent of level-major codes [K, n] with the levels whose `mask` entry is not 0. */
  latent(codes: Uint16Array, numFrames: number, mask: Float32Array): Float32Array {
    const { numLevels: K, numSemantic, codebookSize: size, codebookDim: d, dimension: D } = this;
    if (codes.length !== K * numFrames) throw new Error(`expected ${K} × ${numFrames} codes, got ${codes.length}`);
    const out = new Float32Array(D * numFrames);
    const sums = [new Float32Array(d), new Float32Array(d)];
    const projections = [this.semanticProj, this.acousticProj];
    for (let t = 0; t < numFrames; t++) {
      const used = [false, false];
      sums[0].fill(0);
      sums[1].fill(0);
      for (let k = 0; k < K; k++) {
        if (!mask[k]) continue;
        const code = codes[k * numFrames + t];
        if (code >= size) throw new Error(`level ${k} holds token ${code}, outside 0-${size - 1}`);
        const branch = k < numSemantic ? 0 : 1;
        const sum = sums[branch];
        const base = (k * size + code) * d;
        for (let j = 0; j < d; j++) sum[j] += this.centroids[base + j];
        used[branch] = true;
      }
      for (let e = 0; e < D; e++) {
        let value = 0;
        for (let branch = 0; branch < 2; branch++) {
          if (!used[branch]) continue;
          const proj = projections[branch];
          const sum = sums[branch];
          const row = e * d;
          for (let j = 0; j < d; j++) value += proj[row + j] * sum[j];
        }
        out[e * numFrames + t] = value;
      }
    }
    return out;
  }
}
