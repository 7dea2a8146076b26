/**
 * Audio in and out of the page: any file the browser can decode -> mono float32 at the model's rate; WAV bytes out.
 *
 * Mirrors `mimistack/audio.py` on the Python side. WAV files are parsed here (exact samples, as Python's soundfile
 * reads them); other formats, and WAV at other rates, go through the browser's decoder and resampler
 * (OfflineAudioContext), so their samples differ slightly from Python's soxr resampling. Used by `ui/source.ts` (open),
 * `ui/capture.ts` (record), `ui/downloads.ts` and `server-api.ts` (the server's WAV answers).
 */

export class AudioInputError extends Error {}

export interface WavData {
  sampleRate: number;
  channels: number;
  /** One Float32Array per channel. */
  data: Float32Array[];
}

/** Parse a RIFF/WAVE file: PCM 8/16/24/32-bit integer or 32/64-bit float (WAVE_FORMAT_EXTENSIBLE too). */
export function parseWav(bytes: Uint8Array): WavData {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (offset: number) => String.fromCharCode(...bytes.subarray(offset, offset + 4));
  if (bytes.length < 12 || tag(0) !== 'RIFF' || tag(8) !== 'WAVE') throw new AudioInputError('not a RIFF/WAVE file');
  let format = 0;
  let channels = 0;
  let sampleRate = 0;
  let bits = 0;
  let position = 12;
  while (position + 8 <= bytes.length) {
    const id = tag(position);
    const size = view.getUint32(position + 4, true);
    const body = position + 8;
    if (id === 'fmt ') {
      format = view.getUint16(body, true);
      channels = view.getUint16(body + 2, true);
      sampleRate = view.getUint32(body + 4, true);
      bits = view.getUint16(body + 14, true);
      if (format === 0xfffe && size >= 26) format = view.getUint16(body + 24, true); // extensible: sub-format GUID
    } else if (id === 'data') {
      if (!channels || !sampleRate) throw new AudioInputError('WAV data chunk before its fmt chunk');
      const end = Math.min(bytes.length, body + size);
      return { sampleRate, channels, data: deinterleave(view, body, end, format, bits, channels) };
    }
    position = body + size + (size & 1);
  }
  throw new AudioInputError('WAV file has no data chunk');
}

function deinterleave(view: DataView, start: number, end: number, format: number, bits: number, channels: number): Float32Array[] {
  const width = bits / 8;
  const frames = Math.floor((end - start) / (width * channels));
  const out = Array.from({ length: channels }, () => new Float32Array(frames));
  const read = sampleReader(view, format, bits);
  for (let i = 0, offset = start; i < frames; i++) {
    for (let c = 0; c < channels; c++, offset += width) out[c][i] = read(offset);
  }
  return out;
}

function sampleReader(view: DataView, format: number, bits: number): (offset: number) => number {
  if (format === 1 && bits === 16) return (o) => view.getInt16(o, true) / 32768;
  if (format === 1 && bits === 24) {
    return (o) => ((view.getUint8(o) | (view.getUint8(o + 1) << 8) | (view.getInt8(o + 2) << 16)) / 8388608);
  }
  if (format === 1 && bits === 32) return (o) => view.getInt32(o, true) / 2147483648;
  if (format === 1 && bits === 8) return (o) => (view.getUint8(o) - 128) / 128;
  if (format === 3 && bits === 32) return (o) => view.getFloat32(o, true);
  if (format === 3 && bits === 64) return (o) => view.getFloat64(o, true);
  throw new AudioInputError(`unsupported WAV encoding (format ${format}, ${bits} bits)`);
}

/** Mix channels to mono by averaging (as mimistack.audio does). */
export function toMono(channels: Float32Array[]): Float32Array {
  if (channels.length === 1) return channels[0];
  const out = new Float32Array(channels[0].length);
  for (const channel of channels) for (let i = 0; i < out.length; i++) out[i] += channel[i];
  for (let i = 0; i < out.length; i++) out[i] /= channels.length;
  return out;
}

/** Resample mono audio with the browser's resampler (OfflineAudioContext). */
export async function resample(pcm: Float32Array, fromRate: number, toRate: number): Promise<Float32Array> {
  if (fromRate === toRate || pcm.length === 0) return pcm;
  const length = Math.max(1, Math.round((pcm.length * toRate) / fromRate));
  const context = new OfflineAudioContext(1, length, toRate);
  const buffer = context.createBuffer(1, pcm.length, fromRate);
  buffer.copyToChannel(pcm as Float32Array<ArrayBuffer>, 0);
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  source.start();
  return (await context.startRendering()).getChannelData(0);
}

/** Any audio file's bytes -> mono float32 at `sampleRate`. */
export async function decodeAudioFile(bytes: Uint8Array, sampleRate: number): Promise<{ pcm: Float32Array; sourceRate: number; channels: number }> {
  let wav: WavData | null = null;
  try {
    wav = parseWav(bytes);
  } catch {
    wav = null; // not a WAV the parser handles: let the browser try
  }
  if (wav) {
    const mono = toMono(wav.data);
    return { pcm: await resample(mono, wav.sampleRate, sampleRate), sourceRate: wav.sampleRate, channels: wav.channels };
  }
  const context = new OfflineAudioContext(1, 1, sampleRate);
  let decoded: AudioBuffer;
  try {
    decoded = await context.decodeAudioData(bytes.slice().buffer);
  } catch (error) {
    throw new AudioInputError(`the browser cannot decode this file as audio (${(error as Error).message || error})`);
  }
  const channels = Array.from({ length: decoded.numberOfChannels }, (_, c) => decoded.getChannelData(c));
  return { pcm: toMono(channels), sourceRate: decoded.sampleRate, channels: decoded.numberOfChannels };
}

/** Mono WAV bytes: 32-bit float (exact) or 16-bit PCM (clipped to [-1, 1]). */
export function encodeWav(pcm: Float32Array, sampleRate: number, encoding: 'float32' | 'pcm16' = 'pcm16'): Uint8Array {
  const width = encoding === 'float32' ? 4 : 2;
  const bytes = new Uint8Array(44 + pcm.length * width);
  const view = new DataView(bytes.buffer);
  const text = (offset: number, value: string) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, 'RIFF');
  view.setUint32(4, 36 + pcm.length * width, true);
  text(8, 'WAVE');
  text(12, 'fmt ');
  view.setUint32(16, 16, true);
  view.setUint16(20, encoding === 'float32' ? 3 : 1, true);
  view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * width, true);
  view.setUint16(32, width, true);
  view.setUint16(34, width * 8, true);
  text(36, 'data');
  view.setUint32(40, pcm.length * width, true);
  for (let i = 0, offset = 44; i < pcm.length; i++, offset += width) {
    if (encoding === 'float32') view.setFloat32(offset, pcm[i], true);
    else view.setInt16(offset, Math.round(Math.max(-1, Math.min(1, pcm[i])) * 32767), true);
  }
  return bytes;
}

/** Offer bytes as a file download. */
export function download(bytes: Uint8Array, name: string, type: string): void {
  const url = URL.createObjectURL(new Blob([bytes as Uint8Array<ArrayBuffer>], { type }));
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
