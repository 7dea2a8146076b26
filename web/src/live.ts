/**
 * The microphone: plain recording (the take is encoded afterwards) and live streaming, where every 80 ms frame goes
 * through the streaming encoder and decoder as it arrives and the decoded audio plays back with the level
 * selection of that moment.
 *
 * Uses the AudioWorklet in `public/worklets/live.js` (capture in frames, playback queue) and the inference worker
 * through `engine/client.ts`; `main.ts` turns what it returns into a take.
 */

import type { Engine } from './engine/client';
import type { LevelSelection } from './levels';

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
  private chain: Promise<void> = Promise.resolve();
  private received = 0;
  private processed = 0;
  private failure: Error | null = null;

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
    await context.audioWorklet.addModule('/worklets/live.js');
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
    const index = this.chunks.length - 1;
    this.chain = this.chain.then(() => this.step(pcm, index));
  }

  private async step(pcm: Float32Array, index: number): Promise<void> {
    const engine = this.options.engine;
    if (!engine) {
      this.options.onFrame({ index, input: pcm, output: null, codes: null, encodeMilliseconds: 0, decodeMilliseconds: 0, backlog: 0 });
      return;
    }
    if (this.failure) return;
    try {
      const result = await engine.streamStep(pcm, this.options.selection());
      this.columns.push(result.codes);
      this.processed += 1;
      const output = result.pcm.slice(); // the original goes to the audio thread
      this.node.port.postMessage({ type: 'play', pcm: result.pcm }, [result.pcm.buffer]);
      this.options.onFrame({
        index, input: pcm, output, codes: result.codes, encodeMilliseconds: result.encodeMilliseconds,
        decodeMilliseconds: result.decodeMilliseconds, backlog: this.chunks.length - this.processed,
      });
    } catch (error) {
      this.failure = error instanceof Error ? error : new Error(String(error));
    }
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
      const index = this.chunks.length - 1;
      this.chain = this.chain.then(() => this.step(padded, index));
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
