/**
 * A waveform or spectrogram of one signal (original or decoded) on a canvas, with a playhead.
 *
 * Used by `ui/views.ts` for the two "Listen" panels. The spectrogram is a short-time Fourier transform (Hann window,
 * 512 points, one column per pixel) in dB, coloured with inferno (`colormap.ts`).
 */

import { inferno } from './colormap';

export type SignalStyle = 'waveform' | 'spectrogram';

const FFT_SIZE = 512;
const HEIGHT = 120;

export class SignalView {
  private pcm: Float32Array | null = null;
  private sampleRate = 24000;
  private style: SignalStyle = 'waveform';
  private playhead: number | null = null;
  private background: HTMLCanvasElement | null = null;
  /** Length of the time axis in seconds (both views share it, so they line up). */
  private duration = 0;

  constructor(private readonly canvas: HTMLCanvasElement, private readonly colour: string) {
    new ResizeObserver(() => this.render()).observe(canvas.parentElement as HTMLElement);
  }

  set(pcm: Float32Array | null, sampleRate: number, duration?: number): void {
    this.pcm = pcm;
    this.sampleRate = sampleRate;
    this.duration = duration ?? (pcm ? pcm.length / sampleRate : 0);
    this.render();
  }

  setStyle(style: SignalStyle): void {
    this.style = style;
    this.render();
  }

  setPlayhead(seconds: number | null): void {
    this.playhead = seconds;
    this.paint();
  }

  private render(): void {
    const width = Math.max(100, (this.canvas.parentElement as HTMLElement).clientWidth);
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(HEIGHT * ratio);
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${HEIGHT}px`;
    const image = document.createElement('canvas');
    image.width = this.canvas.width;
    image.height = this.canvas.height;
    const context = image.getContext('2d') as CanvasRenderingContext2D;
    context.fillStyle = '#10131a';
    context.fillRect(0, 0, image.width, image.height);
    if (this.pcm && this.pcm.length && this.duration > 0) {
      const columns = Math.max(1, Math.round((image.width * this.pcm.length) / this.sampleRate / this.duration));
      if (this.style === 'waveform') drawWaveform(context, this.pcm, columns, image.height, this.colour);
      else drawSpectrogram(context, this.pcm, columns, image.height);
    }
    this.background = image;
    this.paint();
  }

  private paint(): void {
    const context = this.canvas.getContext('2d') as CanvasRenderingContext2D;
    if (this.background) context.drawImage(this.background, 0, 0);
    if (this.playhead !== null && this.duration > 0) {
      context.fillStyle = '#ffffff';
      context.fillRect(Math.round((this.playhead / this.duration) * this.canvas.width), 0, Math.max(1, window.devicePixelRatio || 1), this.canvas.height);
    }
  }
}

function drawWaveform(context: CanvasRenderingContext2D, pcm: Float32Array, width: number, height: number, colour: string): void {
  const middle = height / 2;
  context.fillStyle = 'rgba(255,255,255,0.08)';
  context.fillRect(0, Math.round(middle), width, 1);
  context.fillStyle = colour;
  const perColumn = pcm.length / width;
  for (let x = 0; x < width; x++) {
    let low = 1;
    let high = -1;
    const end = Math.min(pcm.length, Math.floor((x + 1) * perColumn));
    for (let i = Math.floor(x * perColumn); i < end; i++) {
      const value = pcm[i];
      if (value < low) low = value;
      if (value > high) high = value;
    }
    if (high < low) continue;
    const top = middle - Math.min(1, high) * middle * 0.95;
    const bottom = middle - Math.max(-1, low) * middle * 0.95;
    context.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
}

function drawSpectrogram(context: CanvasRenderingContext2D, pcm: Float32Array, width: number, height: number): void {
  const bins = FFT_SIZE / 2;
  const window = Float32Array.from({ length: FFT_SIZE }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / FFT_SIZE));
  const real = new Float32Array(FFT_SIZE);
  const imaginary = new Float32Array(FFT_SIZE);
  const magnitudes = new Float32Array(width * bins);
  const hop = pcm.length / width;
  let peak = -Infinity;
  for (let x = 0; x < width; x++) {
    const centre = Math.floor((x + 0.5) * hop);
    for (let i = 0; i < FFT_SIZE; i++) {
      const index = centre - FFT_SIZE / 2 + i;
      real[i] = index >= 0 && index < pcm.length ? pcm[index] * window[i] : 0;
      imaginary[i] = 0;
    }
    fft(real, imaginary);
    for (let k = 0; k < bins; k++) {
      const db = 10 * Math.log10(real[k] * real[k] + imaginary[k] * imaginary[k] + 1e-12);
      magnitudes[x * bins + k] = db;
      if (db > peak) peak = db;
    }
  }
  const image = context.createImageData(width, height);
  const floor = peak - 80;
  for (let y = 0; y < height; y++) {
    const bin = Math.min(bins - 1, Math.floor(((height - 1 - y) / height) * bins));
    for (let x = 0; x < width; x++) {
      const level = Math.max(0, Math.min(1, (magnitudes[x * bins + bin] - floor) / 80));
      const colour = 3 * Math.round(level * 255);
      const pixel = 4 * (y * width + x);
      image.data[pixel] = inferno[colour];
      image.data[pixel + 1] = inferno[colour + 1];
      image.data[pixel + 2] = inferno[colour + 2];
      image.data[pixel + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
}

/** In-place radix-2 FFT (length a power of two). */
function fft(real: Float32Array, imaginary: Float32Array): void {
  const n = real.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [real[i], real[j]] = [real[j], real[i]];
      [imaginary[i], imaginary[j]] = [imaginary[j], imaginary[i]];
    }
  }
  for (let size = 2; size <= n; size <<= 1) {
    const angle = (-2 * Math.PI) / size;
    const stepReal = Math.cos(angle);
    const stepImaginary = Math.sin(angle);
    for (let start = 0; start < n; start += size) {
      let wReal = 1;
      let wImaginary = 0;
      for (let k = 0; k < size / 2; k++) {
        const a = start + k;
        const b = a + size / 2;
        const tReal = real[b] * wReal - imaginary[b] * wImaginary;
        const tImaginary = real[b] * wImaginary + imaginary[b] * wReal;
        real[b] = real[a] - tReal;
        imaginary[b] = imaginary[a] - tImaginary;
        real[a] += tReal;
        imaginary[a] += tImaginary;
        const next = wReal * stepReal - wImaginary * stepImaginary;
        wImaginary = wReal * stepImaginary + wImaginary * stepReal;
        wReal = next;
      }
    }
  }
}
