/**
 * Fixed-width token packing, the one packer of the page: `.mimi` sections and records (`mimi-format.ts`) and the
 * streaming protocol's FRAME messages (`protocol.ts`). Mirrors `mimistack/mimifile/packing.py`.
 *
 * n tokens of w bits take ceil(n*w/8) bytes, least significant bit first: token i's bit b is stream bit i*w+b,
 * and stream bit j is bit j%8 of byte j/8. The last byte is padded with zero bits.
 */

/** Bytes that `count` tokens of `width` bits take. */
export function packedSize(count: number, width: number): number {
  return Math.ceil((count * width) / 8);
}

/** Pack `tokens` (each < 2^width, width 1-16; not checked here) into `out` at `offset` (allocated if omitted). */
export function packTokens(tokens: ArrayLike<number>, width: number, out?: Uint8Array, offset = 0): Uint8Array {
  const bytes = out ?? new Uint8Array(offset + packedSize(tokens.length, width));
  let accumulator = 0;
  let bits = 0;
  let position = offset;
  for (let i = 0; i < tokens.length; i += 1) {
    accumulator |= (tokens[i] as number) << bits;
    bits += width;
    while (bits >= 8) {
      bytes[position++] = accumulator & 0xff;
      accumulator >>>= 8;
      bits -= 8;
    }
  }
  if (bits > 0) bytes[position] = accumulator & 0xff;
  return bytes;
}

/**
 * The first `count` tokens packed in `bytes` from `offset` (the caller checks there are enough bytes), into `out`
 * if given. `paddingIsZero(bytes, count, width, offset)` says whether the bits after them in the last byte are zero.
 */
export function unpackTokens(bytes: Uint8Array, count: number, width: number, out?: Uint16Array, offset = 0): Uint16Array {
  const tokens = out ?? new Uint16Array(count);
  const mask = (1 << width) - 1;
  let accumulator = 0;
  let bits = 0;
  let position = offset;
  for (let i = 0; i < count; i += 1) {
    while (bits < width) {
      accumulator |= (bytes[position++] as number) << bits;
      bits += 8;
    }
    tokens[i] = accumulator & mask;
    accumulator >>>= width;
    bits -= width;
  }
  return tokens;
}

/** Whether the padding bits after `count` tokens of `width` bits (from `offset`) are all zero. */
export function paddingIsZero(bytes: Uint8Array, count: number, width: number, offset = 0): boolean {
  const used = count * width;
  const rest = used % 8;
  if (rest === 0) return true;
  return ((bytes[offset + Math.floor(used / 8)] as number) >>> rest) === 0;
}
