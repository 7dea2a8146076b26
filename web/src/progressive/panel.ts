/**
 * The "Progressive stream" card: receive a stream of the progressive protocol (docs/protocol.md) from a ws:// URL and
 * play it as it arrives, or send one, from the open audio or the microphone. A chunk of its own (`wire.ts` loads it).
 *
 * A browser can only be a WebSocket client, so the page receives from a relay's /receive/NAME (`mimistack stream
 * relay`) or a stream server's token room (/rooms/NAME/listen?format=tokens), and sends to a relay's /send/NAME.
 * Receiving: `ReceiverSession` decides what each frame decodes (the levels it brought, or the concealment's), the
 * worker's decoder frame stream decodes them in order, and the worklet of `live.ts` plays them. Sending: the worker's
 * encoder frame stream encodes each 80 ms frame as it is captured (a file is paced to real time) and
 * `ProgressiveSender` sends it with the levels the bitrate allows.
 */

import { bytesToBase64 } from '../grid';
import { ErrorCode, MessageKind, ProtocolError, decodeMessage, encodeMessage } from '../client/protocol.js';
import { readyEngine } from '../browser-engine';
import type { Engine } from '../engine/client';
import type { FrameDecodeResult, ModelDescription } from '../engine/messages';
import { Capture } from '../live';
import { store } from '../state';
import { $, button } from '../ui/dom';
import { showError } from '../ui/feedback';
import { type DecodeJob, type FrameRecord, ReceiverSession, RemoteError, ramp } from './receiver';
import { progressiveResults } from './results';
import { ProgressiveSender, parseRate } from './sender';

/** Most frames one decoder call takes when decoding fell behind. */
const MAX_BATCH = 8;
const now = () => Date.now() / 1000;
const kbps = (bps: number) => `${(bps / 1000).toFixed(2)} kbit/s`;

async function model(): Promise<{ engine: Engine; model: ModelDescription }> {
  const engine = await readyEngine();
  const description = store.get().model;
  if (!description) throw new Error('the in-browser models are not loaded');
  return { engine, model: description };
}

function checkUrl(text: string, path: string): string {
  let url: URL;
  try {
    url = new URL(text.trim());
  } catch {
    throw new Error(`"${text}" is not a URL: give a ws:// or wss:// address such as ws://127.0.0.1:8766${path}`);
  }
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
    throw new Error(`streams go over WebSocket: give a ws:// or wss:// address, not ${url.protocol}//`);
  }
  return url.href;
}

function opened(socket: WebSocket, url: string): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.onopen = () => resolve();
    socket.onerror = () => reject(new Error(`cannot connect to ${url} (is a relay running there?)`));
  });
}

/** Playback of decoded frames as they come (the live worklet, with nothing on its input). */
class Playback {
  private constructor(private readonly context: AudioContext, private readonly node: AudioWorkletNode) {}

  static async start(sampleRate: number, frameSize: number): Promise<Playback> {
    const context = new AudioContext({ sampleRate, latencyHint: 'interactive' });
    await context.audioWorklet.addModule(new URL('worklets/live.js', document.baseURI).href);
    const node = new AudioWorkletNode(context, 'mimistack-live', {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { frameSize, prebuffer: 2 * frameSize },
    });
    node.connect(context.destination);
    void context.resume();
    return new Playback(context, node);
  }

  play(pcm: Float32Array): void {
    this.node.port.postMessage({ type: 'play', pcm });
  }

  close(): void {
    void this.context.close();
  }
}

// -- receiving -------------------------------------------------------------------------------------------------------
type ReceiveState = 'connecting' | 'waiting' | 'receiving' | 'ended' | 'closed' | 'error';

class Reception {
  state: ReceiveState = 'connecting';
  error: string | null = null;
  readonly session: ReceiverSession;
  private readonly socket: WebSocket;
  private readonly decoded = new Map<number, Float32Array>();
  private readonly jobs: DecodeJob[] = [];
  private decoding: Promise<void> | null = null;
  private timer = 0;
  private drawn = 0;
  private over = false;
  /** Listening to a stream server's room, which takes no FEEDBACK. */
  private room = false;
  decodeMilliseconds = 0;

  constructor(readonly url: string, private readonly engine: Engine, private readonly model: ModelDescription,
    private readonly playback: Playback | null) {
    this.session = new ReceiverSession(model, (job) => this.decode(job));
    this.socket = new WebSocket(url);
    this.socket.binaryType = 'arraybuffer';
    this.socket.onopen = () => this.active && this.set('waiting');
    this.socket.onmessage = (event: MessageEvent<ArrayBuffer | string>) => this.message(event.data);
    this.socket.onerror = () => this.fail(`the connection to ${url} failed (is a relay or stream server there?)`);
    this.socket.onclose = (event) => this.closed(event);
    this.timer = window.setInterval(() => this.tick(), 50);
  }

  get active(): boolean {
    return !this.over;
  }

  stop(): void {
    this.session.finish();
    this.finish('closed');
    this.socket.close(1000);
  }

  private message(data: ArrayBuffer | string): void {
    if (!this.active) return;
    if (typeof data === 'string') return this.control(data);
    try {
      this.reply(this.session.handle(data, now()));
      if (this.state === 'waiting' && this.session.hello) this.set('receiving');
      if (this.session.ended) {
        this.socket.close(1000);
        this.finish('ended');
      }
    } catch (error) {
      if (error instanceof ProtocolError) {
        this.reply([encodeMessage({ kind: MessageKind.ERROR, code: error.code, text: error.message.slice(0, 1000) })]);
      }
      this.fail(error instanceof RemoteError || error instanceof ProtocolError ? error.message : String(error));
      this.socket.close(1000);
    }
  }

  /** A stream server's JSON around a token room's protocol: `ready` (a room listener joins at the room's current
   * frame, and sends nothing back: no FEEDBACK), `end`, `error`. */
  private control(text: string): void {
    let message: { type?: string; message?: string; room?: string };
    try {
      message = JSON.parse(text);
    } catch {
      return this.fail('the server sent text that is not JSON: not a progressive stream');
    }
    if (message.type === 'error') this.fail(`the stream server refused: ${message.message ?? text}`);
    else if (message.type === 'ready' && message.room !== undefined) this.session.joinAtFirstFrame = this.room = true;
  }

  private reply(messages: Uint8Array[]): void {
    if (this.room || this.socket.readyState !== WebSocket.OPEN) return;
    for (const bytes of messages) this.socket.send(bytes);
  }

  private tick(): void {
    if (this.state === 'receiving') {
      try {
        this.reply(this.session.tick(now()));
      } catch (error) {
        this.fail(String(error));
      }
    }
    if (performance.now() - this.drawn > 250) this.render();
  }

  private closed(event: CloseEvent): void {
    if (!this.active) return;
    this.session.finish();
    if (this.session.hello) this.finish('closed');
    else this.fail(`the connection closed before the stream began (code ${event.code}${event.reason ? `: ${event.reason}` : ''})`);
  }

  private fail(error: string): void {
    if (!this.active) return;
    this.error = error;
    this.session.finish();
    this.finish('error');
    showError(error);
  }

  /** The stream is over: `state` once the frames still decoding are done. */
  private finish(state: ReceiveState): void {
    if (this.over) return;
    this.over = true;
    window.clearInterval(this.timer);
    const done = () => {
      this.set(state);
      this.playback?.close();
      receiving = null;
      renderButtons();
    };
    void (this.decoding ?? Promise.resolve()).then(done, done);
  }

  private set(state: ReceiveState): void {
    this.state = state;
    this.render();
  }

  // -- decoding -----------------------------------------------------------------------------------------------------
  private decode(job: DecodeJob): void {
    this.jobs.push(job);
    this.decoding ??= this.pump().finally(() => (this.decoding = null));
  }

  private async pump(): Promise<void> {
    const { numLevels, frameSize } = this.model;
    while (this.jobs.length) {
      const batch = this.jobs.splice(0, MAX_BATCH);
      const count = batch.length;
      const codes = new Uint16Array(numLevels * count);
      const levels = new Uint8Array(count);
      batch.forEach((job, t) => {
        levels[t] = job.record.levelsDecoded;
        for (let k = 0; k < numLevels; k++) codes[k * count + t] = job.tokens[k];
      });
      let result: FrameDecodeResult;
      try {
        result = await this.engine.frameStreamDecode(codes, count, levels);
      } catch (error) {
        this.jobs.length = 0;
        this.fail(`decoding failed: ${(error as Error).message}`);
        return;
      }
      this.decodeMilliseconds = result.milliseconds / count;
      const at = now();
      batch.forEach((job, t) => {
        const pcm = result.pcm.slice(t * frameSize, (t + 1) * frameSize);
        ramp(pcm, job.gainStart, job.gainStop);
        job.record.outputTime = at;
        this.decoded.set(job.record.index, pcm);
        this.playback?.play(pcm.slice());
      });
    }
  }

  /** The output so far: every kept frame in order, trimmed to END's length. */
  pcm(): Float32Array {
    const { frameSize } = this.model;
    const records = this.session.records;
    const out = new Float32Array(Math.min(this.session.numSamples, records.length * frameSize));
    records.forEach((record, i) => {
      const frame = this.decoded.get(record.index);
      if (frame && i * frameSize < out.length) out.set(frame.subarray(0, out.length - i * frameSize), i * frameSize);
    });
    return out;
  }

  // -- view ---------------------------------------------------------------------------------------------------------
  render(): void {
    this.drawn = performance.now();
    const s = this.session;
    const records = s.records;
    const concealed = records.filter((r) => r.concealed).length;
    const received = records.length - concealed;
    const levels = received ? records.reduce((sum, r) => sum + r.levelsReceived, 0) / received : 0;
    const words: Record<ReceiveState, string> = {
      connecting: 'Connecting…', waiting: 'Connected: waiting for the stream', receiving: 'Receiving',
      ended: 'Received', closed: 'The sender went away: kept what came', error: 'Stopped',
    };
    const { frameSize, sampleRate, numLevels } = this.model;
    const delivered = this.active ? s.deliveredBps(now()) : (8 * s.bytesReceived * sampleRate) / (frameSize * (records.length || 1));
    $('receive-status').textContent = `${words[this.state]}${s.hello ? ` · ${records.length} frames · ${levels.toFixed(1)} `
      + `levels on average · ${concealed} concealed · ${kbps(delivered)} delivered${this.active ? '' : ' on average'} · `
      + `decode ${this.decodeMilliseconds.toFixed(1)} ms per frame` : ''}`;
    const total = s.hello?.numSamples ? Math.ceil(s.hello.numSamples / frameSize) - s.startFrame : 0;
    drawStrip($('receive-strip') as HTMLCanvasElement, records, numLevels, total);
  }

  snapshot(withArrays: boolean): unknown {
    const s = this.session;
    const tokens = new Uint16Array(s.tokens.length * this.model.numLevels);
    s.tokens.forEach((column, i) => tokens.set(column, i * this.model.numLevels));
    return {
      url: this.url, state: this.state, error: this.error, startFrame: s.startFrame, complete: s.ended,
      numSamples: s.numSamples, feedbackSent: s.feedbackSent, bytesReceived: s.bytesReceived,
      hello: s.hello && { maxLevels: s.hello.maxLevels, numSamples: s.hello.numSamples, rateControl: s.hello.rateControl },
      frames: s.records.map((r) => ({
        index: r.index, levels: r.levelsReceived, decoded: r.levelsDecoded, concealed: r.concealed, late: r.arrivedLate,
        captureTime: r.captureTime, latency: r.outputTime - r.captureTime,
      })),
      tokens: withArrays ? bytesToBase64(new Uint8Array(tokens.buffer)) : null,
      pcm: withArrays ? bytesToBase64(new Uint8Array(this.pcm().buffer)) : null,
    };
  }
}

/** One bar per frame (all of them when the stream's length is known, else the most recent that fit): as tall as the
 * levels that came; a concealed frame is shaded red, with a red bar as tall as the levels its concealment decoded. */
function drawStrip(canvas: HTMLCanvasElement, records: FrameRecord[], numLevels: number, total: number): void {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 40;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext('2d');
  if (!g) return;
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const bar = total ? Math.max(1, Math.min(8, width / total)) : 3;
  const shown = records.slice(-Math.floor(width / bar));
  shown.forEach((record, i) => {
    const h = (levels: number) => Math.max(2, (levels / numLevels) * height);
    if (record.concealed) {
      g.fillStyle = 'rgba(248, 113, 113, 0.25)';
      g.fillRect(i * bar, 0, Math.max(1, bar - 1), height);
    }
    const levels = record.concealed ? record.levelsDecoded : record.levelsReceived;
    g.fillStyle = record.concealed ? '#f87171' : levels > 1 ? '#fbbf24' : '#7dd3fc';
    g.fillRect(i * bar, height - h(levels), Math.max(1, bar - 1), h(levels));
  });
}

let receiving: Reception | null = null;

export async function toggleReceive(): Promise<void> {
  if (receiving) {
    receiving.stop();
    return;
  }
  const url = checkUrl(($('receive-url') as HTMLInputElement).value, '/receive/NAME');
  showError(null);
  const { engine, model: description } = await model();
  await engine.frameStreamReset('decoder');
  const play = ($('receive-play') as HTMLInputElement).checked;
  const playback = play ? await Playback.start(description.sampleRate, description.frameSize) : null;
  receiving = lastReceive = new Reception(url, engine, description, playback);
  renderButtons();
}

// -- sending ---------------------------------------------------------------------------------------------------------
type SendState = 'connecting' | 'sending' | 'finishing' | 'sent' | 'stopped' | 'error';

class Transmission {
  state: SendState = 'connecting';
  error: string | null = null;
  sender: ProgressiveSender | null = null;
  readonly columns: Uint16Array[] = [];
  numSamples = 0;
  private capture: Capture | null = null;
  private chain: Promise<void> = Promise.resolve();
  private stopping = false;
  private closedSocket: Promise<void>;

  constructor(readonly url: string, readonly source: string, private readonly socket: WebSocket,
    private readonly engine: Engine, private readonly model: ModelDescription) {
    socket.binaryType = 'arraybuffer';
    socket.onmessage = (event: MessageEvent<ArrayBuffer | string>) => this.message(event.data);
    this.closedSocket = new Promise((resolve) => {
      socket.onclose = (event) => {
        if (this.state === 'sending' || this.state === 'connecting') {
          this.fail(`the relay closed the connection (code ${event.code}${event.reason ? `: ${event.reason}` : ''})`);
        }
        resolve();
      };
    });
  }

  get active(): boolean {
    return this.state === 'connecting' || this.state === 'sending' || this.state === 'finishing';
  }

  private message(data: ArrayBuffer | string): void {
    try {
      const message = decodeMessage(data);
      if (message.kind === MessageKind.FEEDBACK && this.sender) this.sender.feedback = message;
      else if (message.kind === MessageKind.ERROR) this.fail(`the receiver reported: ${message.text}`);
      else throw new ProtocolError(`the receiver sent message kind ${message.kind}; only FEEDBACK and ERROR go that way`, ErrorCode.STATE);
    } catch (error) {
      this.fail((error as Error).message);
    }
    this.render();
  }

  private fail(error: string): void {
    if (!this.active) return;
    this.error = error;
    this.state = 'error';
    this.capture?.stop().catch(() => undefined);
    this.socket.close(1000);
    showError(error);
    this.done();
  }

  private done(): void {
    sending = null;
    renderButtons();
    this.render();
  }

  async run(rateText: string): Promise<void> {
    const { frameSize, sampleRate } = this.model;
    const sender = (this.sender = new ProgressiveSender(this.model, parseRate(rateText), (bytes) => {
      if (this.socket.readyState === WebSocket.OPEN) this.socket.send(bytes);
    }));
    await this.engine.frameStreamReset('encoder');
    this.state = 'sending';
    if (this.source === 'mic') {
      this.capture = await Capture.start({
        sampleRate, frameSize, engine: null, selection: () => store.get().selection, monitor: false,
        onFrame: (frame) => this.encode(frame.input.slice()), // the worker takes the copy's buffer
      });
      sender.hello(now(), null);
      return;
    }
    const original = store.get().take?.original;
    if (!original?.length) throw new Error('open an audio file first (or choose the microphone)');
    this.numSamples = original.length;
    const start = now();
    sender.hello(start, original.length);
    const frames = Math.ceil(original.length / frameSize);
    for (let i = 0; i < frames && !this.stopping && this.active; i++) {
      const due = start + ((i + 1) * frameSize) / sampleRate; // the frame's last sample is "captured" then
      const wait = due - now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      const frame = new Float32Array(frameSize);
      frame.set(original.subarray(i * frameSize, (i + 1) * frameSize));
      this.encode(frame);
    }
    if (this.stopping || !this.active) return;
    await this.finish();
  }

  private encode(frame: Float32Array): void {
    this.chain = this.chain.then(async () => {
      if (!this.active || !this.sender) return;
      const { codes } = await this.engine.frameStreamEncode(frame);
      const column = new Uint16Array(codes); // one frame: level-major [K, 1] is the column
      this.columns.push(column);
      this.sender.frame(column, now());
      if (this.columns.length % 3 === 0) this.render();
    }).catch((error) => this.fail(`encoding failed: ${(error as Error).message}`));
  }

  /** END after the last frame, then wait for the receiver to close (30 s at most). */
  private async finish(): Promise<void> {
    await this.chain;
    if (!this.active || !this.sender) return;
    this.state = 'finishing';
    this.sender.finish(this.numSamples);
    this.render();
    const timeout = new Promise((resolve) => setTimeout(resolve, 30_000));
    await Promise.race([this.closedSocket, timeout]);
    if (this.state === 'finishing') this.state = this.socket.readyState === WebSocket.CLOSED ? 'sent' : 'stopped';
    this.socket.close(1000);
    this.done();
  }

  /** The microphone: stop capturing and finish with END. A file: stop where it is, without END. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.capture) {
      const result = await this.capture.stop();
      this.numSamples = result.pcm.length;
      await this.finish();
      return;
    }
    this.state = 'stopped';
    this.socket.close(1000);
    this.done();
  }

  render(): void {
    const s = this.sender;
    const f = s?.feedback;
    const plan = s?.plans[s.plans.length - 1]?.[2];
    const words: Record<SendState, string> = {
      connecting: 'Connecting…', sending: 'Sending', finishing: 'Sent END, waiting for the receiver',
      sent: 'Sent', stopped: 'Stopped', error: 'Stopped',
    };
    $('send-status').textContent = `${words[this.state]}${s ? ` · ${s.frames} frames · ${plan ? `${plan.levelCount} `
      + `level(s), ${plan.framesPerMessage} frame(s) per message` : ''} · ${s.bytesSent} bytes` : ''}${f ? ` · receiver: frame `
      + `${f.framesPlayed}, ${kbps(f.deliveredBps)} delivered, loss ${(f.lossPermille / 10).toFixed(1)} %, latency `
      + `${(f.latencyUs / 1000).toFixed(0)} ms` : ''}`;
  }

  snapshot(withArrays: boolean): unknown {
    const s = this.sender;
    const K = this.model.numLevels;
    const codes = new Uint16Array(K * this.columns.length);
    this.columns.forEach((column, t) => column.forEach((token, k) => (codes[k * this.columns.length + t] = token)));
    return {
      url: this.url, source: this.source, state: this.state, error: this.error, numSamples: this.numSamples,
      frames: s?.frames ?? 0, frameLevels: s?.frameLevels ?? [], messages: s?.messages ?? 0, bytesSent: s?.bytesSent ?? 0,
      plans: s?.plans.map(([first, estimate, plan]) => ({ first, estimate, ...plan })) ?? [], feedback: s?.feedback ?? null,
      codes: withArrays ? bytesToBase64(new Uint8Array(codes.buffer)) : null,
    };
  }
}

let sending: Transmission | null = null;
let lastReceive: Reception | null = null;
let lastSend: Transmission | null = null;

export async function toggleSend(): Promise<void> {
  if (sending) {
    await sending.stop();
    return;
  }
  const url = checkUrl(($('send-url') as HTMLInputElement).value, '/send/NAME');
  const source = ($('send-source') as HTMLSelectElement).value;
  const rate = ($('send-rate') as HTMLInputElement).value;
  parseRate(rate); // a bad bitrate is said before connecting
  showError(null);
  const { engine, model: description } = await model();
  const socket = new WebSocket(url);
  const transmission = (sending = lastSend = new Transmission(url, source, socket, engine, description));
  renderButtons();
  try {
    await opened(socket, url);
    await transmission.run(rate);
  } catch (error) {
    if (transmission.active) {
      transmission.error = (error as Error).message;
      transmission.state = 'error';
      socket.close(1000);
      sending = null;
      renderButtons();
      transmission.render();
    }
    throw error;
  }
}

function renderButtons(): void {
  button('receive-start').textContent = receiving ? '■ Stop receiving' : '⇣ Receive';
  button('receive-start').classList.toggle('active', !!receiving);
  button('send-start').textContent = sending ? '■ Stop sending' : '⇡ Send';
  button('send-start').classList.toggle('active', !!sending);
}

progressiveResults.snapshot = (withArrays) => ({
  receive: lastReceive?.snapshot(withArrays) ?? null,
  send: lastSend?.snapshot(withArrays) ?? null,
});
