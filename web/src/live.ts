/**
 * The microphone: plain recording (the take is encoded afterwards) and live streaming, where every 80 ms frame goes
 * through the streaming encoder and decoder as it arrives and the decoded audio plays back with the level
 * selection of that moment.
 *
 * Uses the AudioWorklet in `public/worklets/live.js` (capture in frames, playback queue) and the inference worker
 * through `engine/client.ts`; `ui/capture.ts` turns what it returns into a take.
 */

import type { Engine } from './engine/client';
import type { LevelSelection } from './levels';

/** Most frames one catch-up call may take (4 = 320 ms of audio). */
export const MAX_FRAMES_PER_STEP = 4;

export interface LiveFrame {
  index: number;
  /** float32 [frameSize] captured from the microphone. */
  input: Float32Array;
  /** float32 [frameSize] decoded with the selection of that moment (live streaming only). */
  output: Float32Array | null;
  /** uint16 [numLevels] codes of this frame (live streaming only). */
  codes: Uint16Array | null;
  encodeMilliseconds: number;
  decodeMilliseconds: number;
  /** Frames captured but not yet processed: how far the model lags behind the microphone. */
  backlog: number;
  /** Once per capture, when the models cannot keep up with the microphone: what to tell the user; else null. */
  lagging: string | null;
}

export interface CaptureOptions {
  sampleRate: number;
  frameSize: number;
  /** Stream every frame through the models (live); otherwise only record. */
  engine: Engine | null;
  selection: () => LevelSelection;
  /** Play the decoded stream back (headphones advised). */
  monitor: boolean;
  onFrame: (frame: LiveFrame) => void;
}

export interface CaptureResult {
  pcm: Float32Array;
  /** Per-frame code columns (live streaming), covering the whole capture including the zero-padded last frame. */
  columns: Uint16Array[];
  underruns: number;
}

export class Capture {
  private readonly chunks: Float32Array[] = [];
  private readonly columns: Uint16Array[] = [];
  /** Frames captured and not yet sent to the models (index into `chunks`, padded pcm). */
  private readonly queue: { index: number; pcm: Float32Array }[] = [];
  private chain: Promise<void> = Promise.resolve();
  private pumping = false;
  private received = 0;
  private processed = 0;
  private failure: Error | null = null;
  private slowSteps = 0;
  private warned = false;

  private constructor(private readonly options: CaptureOptions, private readonly context: AudioContext,
    private readonly stream: MediaStream, private readonly node: AudioWorkletNode) {
    node.port.onmessage = (event: MessageEvent<{ type: string; pcm: Float32Array; underruns?: number }>) => {
      if (event.data.type === 'frame') this.frame(event.data.pcm);
    };
  }

  static async start(options: CaptureOptions): Promise<Capture> {
    if (!navigator.mediaDevices?.getUserMedia) throw new Error('this browser offers no microphone here (it needs https:// or localhost)');
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const context = new AudioContext({ sampleRate: options.sampleRate, latencyHint: 'interactive' });
    await context.audioWorklet.addModule(new URL('worklets/live.js', document.baseURI).href);
    const node = new AudioWorkletNode(context, 'mimistack-live', {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { frameSize: options.frameSize, prebuffer: options.frameSize },
    });
    context.createMediaStreamSource(stream).connect(node);
    if (options.monitor && options.engine) node.connect(context.destination);
    if (options.engine) await options.engine.streamReset();
    return new Capture(options, context, stream, node);
  }

  get seconds(): number {
    return this.received / this.options.sampleRate;
  }

  private frame(pcm: Float32Array): void {
    this.chunks.push(pcm);
    this.received += pcm.length;
    this.enqueue(pcm, this.chunks.length - 1);
  }

  private enqueue(pcm: Float32Array, index: number): void {
    this.queue.push({ index, pcm });
    if (!this.pumping) {
      this.pumping = true;
      this.chain = this.chain.then(() => this.pump());
    }
  }

  /** Send queued frames to the models until none are left: one frame per call while the models keep up, and all
   * the frames waiting (up to MAX_FRAMES_PER_STEP) in one call after they fell behind, which costs much less per
   * frame, so a slow machine catches up instead of drifting further behind. */
  private async pump(): Promise<void> {
    try {
      while (this.queue.length) {
        const batch = this.queue.splice(0, MAX_FRAMES_PER_STEP);
        await this.step(batch);
      }
    } finally {
      this.pumping = false;
    }
  }

  private async step(batch: { index: number; pcm: Float32Array }[]): Promise<void> {
    const engine = this.options.engine;
    const frameSize = this.options.frameSize;
    if (!engine) {
      for (const { index, pcm } of batch) {
        this.options.onFrame({ index, input: pcm, output: null, codes: null, encodeMilliseconds: 0, decodeMilliseconds: 0, backlog: 0, lagging: null });
      }
      return;
    }
    if (this.failure) return;
    try {
      const joined = new Float32Array(batch.length * frameSize);
      batch.forEach(({ pcm }, k) => joined.set(pcm, k * frameSize));
      const result = await engine.streamStep(joined, this.options.selection());
      const count = result.numFrames;
      const levels = result.codes.length / count;
      const lagging = this.lagging((result.encodeMilliseconds + result.decodeMilliseconds) / count);
      for (let k = 0; k < count; k++) {
        const column = new Uint16Array(levels);
        for (let level = 0; level < levels; level++) column[level] = result.codes[level * count + k];
        this.columns.push(column);
        this.processed += 1;
        const output = result.pcm.slice(k * frameSize, (k + 1) * frameSize);
        this.node.port.postMessage({ type: 'play', pcm: output.slice() }, []);
        this.options.onFrame({
          index: batch[k].index, input: batch[k].pcm, output, codes: column,
          encodeMilliseconds: result.encodeMilliseconds / count, decodeMilliseconds: result.decodeMilliseconds / count,
          backlog: this.chunks.length - this.processed, lagging: k === 0 ? lagging : null,
        });
      }
    } catch (error) {
      this.failure = error instanceof Error ? error : new Error(String(error));
    }
  }

  /** The notice for a stream that cannot keep up (once per capture): steps slower than real time for about 2 s,
   * or more frames queued than the catch-up steps can clear. */
  private lagging(frameMilliseconds: number): string | null {
    const realtime = (1000 * this.options.frameSize) / this.options.sampleRate;
    const backlog = this.chunks.length - this.processed;
    this.slowSteps = frameMilliseconds > realtime ? this.slowSteps + 1 : Math.max(0, this.slowSteps - 1);
    if (this.warned || (this.slowSteps < 25 && backlog <= 2 * MAX_FRAMES_PER_STEP)) return null;
    this.warned = true;
    const gpu = this.options.engine?.description?.executionProvider === 'webgpu';
    return `Live mode cannot keep up in this browser: an ${realtime.toFixed(0)} ms frame takes about `
      + `${frameMilliseconds.toFixed(0)} ms to encode and decode here, so the decoded audio falls further and further `
      + `behind the microphone (${backlog} frames queued). ${gpu ? 'Use' : 'Try WebGPU (?ep=webgpu, in a browser that has it) or use'} `
      + 'server mode (the page served by `mimistack serve`, computing on that machine).';
  }

  /** Stop the microphone, finish the frames still queued (the last partial frame zero-padded) and return the take. */
  async stop(): Promise<CaptureResult> {
    const tail = await new Promise<{ pcm: Float32Array; underruns: number }>((resolve) => {
      this.node.port.onmessage = (event) => {
        if (event.data.type === 'frame') this.frame(event.data.pcm);
        else if (event.data.type === 'tail') resolve(event.data);
      };
      this.node.port.postMessage({ type: 'stop' });
    });
    for (const track of this.stream.getTracks()) track.stop();
    if (tail.pcm.length) {
      this.chunks.push(tail.pcm);
      this.received += tail.pcm.length;
      const padded = new Float32Array(this.options.frameSize);
      padded.set(tail.pcm);
      this.enqueue(padded, this.chunks.length - 1);
    }
    await this.chain;
    await this.context.close();
    if (this.failure) throw this.failure;
    const pcm = new Float32Array(this.received);
    let offset = 0;
    for (const chunk of this.chunks) pcm.set(chunk, offset), (offset += chunk.length);
    return { pcm, columns: this.columns, underruns: tail.underruns };
  }
}
