/**
 * Level selections: which of the grid's levels the decoder sums (mirrors `mimistack/levels.py`).
 *
 * Used by the token-stack view (`views/stack.ts`), the decode paths (`engine/client.ts`, `server-api.ts`) and the
 * `.mimi` writer. A level that is off contributes nothing to the latent: its term is left out of the sum, which
 * is not the same as setting its codes to 0 (index 0 is a real centroid).
 */

export class LevelSelection {
  readonly numLevels: number;
  private readonly on: boolean[];

  constructor(numLevels: number, indices: Iterable<number> = []) {
    if (!Number.isInteger(numLevels) || numLevels <= 0) throw new Error(`numLevels must be a positive integer, got ${numLevels}`);
    this.numLevels = numLevels;
    this.on = new Array<boolean>(numLevels).fill(false);
    for (const i of indices) this.check(i), (this.on[i] = true);
  }

  static prefix(count: number, numLevels: number): LevelSelection {
    return new LevelSelection(numLevels, range(0, Math.max(0, Math.min(count, numLevels))));
  }

  static all(numLevels: number): LevelSelection {
    return LevelSelection.prefix(numLevels, numLevels);
  }

  /** Parse "0-7", "0,3,9", "all", "none", "semantic". */
  static parse(text: string, numLevels: number): LevelSelection {
    const lowered = text.trim().toLowerCase();
    if (lowered === 'all' || lowered === '*') return LevelSelection.all(numLevels);
    if (lowered === 'none') return new LevelSelection(numLevels);
    if (lowered === 'semantic') return new LevelSelection(numLevels, [0]);
    const indices: number[] = [];
    for (const part of lowered.split(',')) {
      const match = /^\s*(\d+)\s*(?:-\s*(\d+))?\s*$/.exec(part);
      if (!match) throw new Error(`cannot parse level specification ${JSON.stringify(text)}: use e.g. 0-7 or 0,3,9`);
      const start = Number(match[1]);
      const stop = match[2] === undefined ? start : Number(match[2]);
      if (stop < start) throw new Error(`descending range ${part.trim()} in ${JSON.stringify(text)}`);
      indices.push(...range(start, stop + 1));
    }
    return new LevelSelection(numLevels, indices);
  }

  has(level: number): boolean {
    return this.on[level] === true;
  }

  get indices(): number[] {
    return range(0, this.numLevels).filter((i) => this.on[i]);
  }

  get size(): number {
    return this.on.filter(Boolean).length;
  }

  /** True for 0..k-1, what the decoder was trained on; any other subset is experimental. */
  get isPrefix(): boolean {
    return this.indices.every((level, position) => level === position);
  }

  toggled(level: number): LevelSelection {
    this.check(level);
    const next = new LevelSelection(this.numLevels, this.indices);
    next.on[level] = !next.on[level];
    return next;
  }

  /** Float32 [numLevels] mask, 1 for selected levels: the `level_mask` input of embed.onnx. */
  mask(): Float32Array {
    return Float32Array.from(this.on, (value) => (value ? 1 : 0));
  }

  equals(other: LevelSelection): boolean {
    return this.numLevels === other.numLevels && this.on.every((value, i) => value === other.on[i]);
  }

  /** Compact text: [0,1,2,5] -> "0-2,5"; empty -> "none". */
  toString(): string {
    const items = this.indices;
    if (items.length === 0) return 'none';
    const parts: string[] = [];
    let start = items[0];
    let previous = items[0];
    for (const item of [...items.slice(1), -1]) {
      if (item === previous + 1) {
        previous = item;
        continue;
      }
      parts.push(start === previous ? `${start}` : `${start}-${previous}`);
      start = previous = item;
    }
    return parts.join(',');
  }

  private check(level: number): void {
    if (!Number.isInteger(level) || level < 0 || level >= this.numLevels) {
      throw new Error(`level ${level} out of range 0-${this.numLevels - 1}`);
    }
  }
}

/** Bits per second of `count` levels: frame rate x count x log2(codebook size) (137.5 bit/s per Mimi level). */
export function bitrate(count: number, frameRate: number, codebookSize: number): number {
  return count * frameRate * Math.log2(codebookSize);
}

export function formatBitrate(bitsPerSecond: number): string {
  if (bitsPerSecond >= 1000) return `${(bitsPerSecond / 1000).toFixed(bitsPerSecond >= 10000 ? 1 : 2)} kbit/s`;
  return `${bitsPerSecond.toFixed(1)} bit/s`;
}

export function range(start: number, stop: number): number[] {
  return Array.from({ length: Math.max(0, stop - start) }, (_, i) => start + i);
}
