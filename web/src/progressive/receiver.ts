/**
 * The receiving end of a progressive stream, without I/O: the page's port of `mimistack.stream.session`'s
 * `ReceiverSession` (docs/protocol.md, "Receiver behaviour"). Messages and their arrival times in; decode jobs (one
 * per output frame: tokens, level count, gain ramp) and replies (FEEDBACK) out. Decoding itself is asynchronous (the
 * worker), so the decisions here never wait for it.
 *
 * Concealment: a frame is concealed when a later one arrives first (the message holding it was lost) or when it is
 * still missing `maxDelay` s after its capture (plus the smallest one-way delay seen); its data arriving later is
 * dropped. A concealed frame decodes the last received frame's tokens again with the level count halved per
 * consecutive concealed frame (at least 1); from the third the output fades to silence over three frames, and the
 * next received frame fades back in. Before any frame has arrived, concealed frames are silent.
 */

import {
  captureTime, type End, ErrorCode, type Feedback, type Frame, type Hello, MessageKind, ProtocolError, bitsPerToken,
  decodeMessage, encodeMessage,
} from '../client/protocol.js';

export interface ModelSizes {
  numLevels: number;
  sampleRate: number;
  frameSize: number;
  codebookSize: number;
  weightsSha256: string;
}

export interface FrameRecord {
  index: number;
  /** Levels that arrived (0 for a concealed frame). */
  levelsReceived: number;
  /** Levels decoded (the concealment's decayed count for a concealed frame; 0: silence before any frame). */
  levelsDecoded: number;
  concealed: 'lost' | 'deadline' | null;
  /** Sender wall-clock seconds of the frame's last sample. */
  captureTime: number;
  /** Receiver wall-clock seconds when it was decoded (set by the decoder; the decision time until then). */
  outputTime: number;
  arrivedLate: boolean;
}

export interface DecodeJob {
  record: FrameRecord;
  /** uint16 [numLevels]: the levels decoded are 0..record.levelsDecoded-1 (the rest are zeros). */
  tokens: Uint16Array;
  /** The frame's output is multiplied by a gain going linearly from gainStart to gainStop across it. */
  gainStart: number;
  gainStop: number;
}

export interface ReceiverOptions {
  maxDelay?: number;
  feedbackInterval?: number;
  rateWindow?: number;
  maxGapFrames?: number;
}

/** The other end sent ERROR: the session is over (nothing is sent back). */
export class RemoteError extends Error {
  readonly code: number;

  constructor(code: number, text: string) {
    super(`the other end reported an error (code ${code}): ${text}`);
    this.code = code;
  }
}

export class ReceiverSession {
  hello: Hello | null = null;
  end: End | null = null;
  readonly records: FrameRecord[] = [];
  /** Per output frame: the tokens decoded (received levels, or the concealment's repeat). */
  readonly tokens: Uint16Array[] = [];
  bytesReceived = 0;
  feedbackSent = 0;
  /** The first frame of this receiver's output: 0, or where a room listener joined (`joinAtFirstFrame`). */
  startFrame = 0;
  /** A listener that joins a running room starts its output at the first frame it receives. */
  joinAtFirstFrame = false;
  private readonly maxDelay: number;
  private readonly feedbackInterval: number;
  private readonly rateWindow: number;
  private readonly maxGapFrames: number;
  private arrivals: [number, number][] = [];
  private offset = Infinity;
  private queueDelay = 0;
  private lastArrived = -1;
  private batch = 1;
  private lastTokens: Uint16Array | null = null;
  private lastLevels = 0;
  private run = 0;
  private gain = 1;
  private nextFeedback = Infinity;
  private helloArrival = 0;
  private readonly model: ModelSizes;
  private readonly onDecode: (job: DecodeJob) => void;

  constructor(model: ModelSizes, onDecode: (job: DecodeJob) => void, options: ReceiverOptions = {}) {
    this.model = model;
    this.onDecode = onDecode;
    this.maxDelay = options.maxDelay ?? 3;
    this.feedbackInterval = options.feedbackInterval ?? 0.25;
    this.rateWindow = options.rateWindow ?? 1;
    this.maxGapFrames = options.maxGapFrames ?? 1000;
  }

  get nextFrame(): number {
    return this.startFrame + this.records.length;
  }

  get ended(): boolean {
    return this.end !== null;
  }

  /** One binary message that arrived at `arrival` (wall-clock seconds); returns the replies to send. Throws
   * `ProtocolError` for anything the session does not take. */
  handle(data: ArrayBuffer, arrival: number): Uint8Array[] {
    const message = decodeMessage(data);
    this.bytesReceived += data.byteLength;
    this.arrivals.push([arrival, data.byteLength]);
    if (message.kind === MessageKind.ERROR) throw new RemoteError(message.code, message.text);
    if (message.kind === MessageKind.HELLO) {
      this.start(message, arrival);
      return this.replies(arrival);
    }
    if (!this.hello) throw new ProtocolError(`message kind ${message.kind} before HELLO`, ErrorCode.STATE);
    if (this.end) throw new ProtocolError('a message after END', ErrorCode.STATE);
    if (message.kind === MessageKind.FEEDBACK) {
      throw new ProtocolError('FEEDBACK goes from receiver to sender, not to the receiver', ErrorCode.STATE);
    }
    this.concealOverdue(arrival);
    if (message.kind === MessageKind.FRAME) this.onFrame(message, arrival);
    else if (message.kind === MessageKind.BANDWIDTH) this.batch = message.framesPerMessage;
    else if (message.kind === MessageKind.END) {
      this.onEnd(message, arrival);
      return [this.feedback(arrival)];
    }
    return this.replies(arrival);
  }

  /** Conceal the frames whose deadline has passed by `now`; returns the FEEDBACK due, if any. */
  tick(now: number): Uint8Array[] {
    if (!this.hello || this.end) return [];
    this.concealOverdue(now);
    return this.replies(now);
  }

  /** The connection closed without END: trailing concealed frames are dropped (nothing says those frames exist). */
  finish(): void {
    if (this.end || !this.hello) return;
    while (this.records.length && this.records[this.records.length - 1].concealed) {
      this.records.pop();
      this.tokens.pop();
    }
  }

  /** Samples of output: END's length (from where this receiver started), else every frame kept. */
  get numSamples(): number {
    const frames = this.records.length * this.model.frameSize;
    return this.end ? Math.max(0, this.end.numSamples - this.startFrame * this.model.frameSize) : frames;
  }

  // -- session ------------------------------------------------------------------------------------------------------
  private start(hello: Hello, arrival: number): void {
    if (this.hello) throw new ProtocolError('a second HELLO in one session', ErrorCode.STATE);
    const m = this.model;
    const problems: string[] = [];
    for (const [name, theirs, ours] of [['sample_rate', hello.sampleRate, m.sampleRate],
      ['frame_size', hello.frameSize, m.frameSize], ['num_levels', hello.numLevels, m.numLevels],
      ['codebook_size', hello.codebookSize, m.codebookSize]] as const) {
      if (theirs !== ours) problems.push(`${name} ${theirs} (this page's model has ${ours})`);
    }
    if (hello.weightsSha256 !== m.weightsSha256) {
      problems.push(`weights sha256 ${hello.weightsSha256.slice(0, 16)}… (this page decodes with `
        + `${m.weightsSha256.slice(0, 16)}…: load the sender's weights)`);
    }
    if (problems.length) {
      throw new ProtocolError(`the sender's codec does not match: ${problems.join('; ')}`, ErrorCode.INCOMPATIBLE);
    }
    this.hello = hello;
    this.offset = arrival - hello.streamStartUs / 1e6;
    this.helloArrival = arrival;
    this.nextFeedback = arrival + this.feedbackInterval;
  }

  private get session(): Hello {
    if (!this.hello) throw new ProtocolError('no HELLO yet', ErrorCode.STATE);
    return this.hello;
  }

  private framesCovering(numSamples: number): number {
    return Math.ceil(numSamples / this.model.frameSize);
  }

  private deadline(index: number): number {
    return captureTime(this.session, index) + this.offset + this.maxDelay;
  }

  private onFrame(frame: Frame, arrival: number): void {
    const hello = this.session;
    const width = bitsPerToken(hello.codebookSize);
    const last = frame.firstFrame + frame.frameCount - 1;
    if (frame.bitsPerToken !== width) {
      throw new ProtocolError(`FRAME packs ${frame.bitsPerToken}-bit tokens, the session's codebook needs ${width}`);
    }
    if (frame.levelCount > hello.maxLevels) {
      throw new ProtocolError(`FRAME holds ${frame.levelCount} levels, HELLO allows at most ${hello.maxLevels}`);
    }
    if (frame.tokens.some((token) => token >= hello.codebookSize)) {
      throw new ProtocolError(`FRAME holds a token outside the codebook of ${hello.codebookSize}`);
    }
    if (hello.numSamples !== null && last >= this.framesCovering(hello.numSamples)) {
      throw new ProtocolError(`FRAME ${last} lies past the ${hello.numSamples} samples HELLO announced`);
    }
    if (this.joinAtFirstFrame && this.records.length === 0) this.startFrame = frame.firstFrame;
    const gap = frame.firstFrame - this.nextFrame;
    if (gap > this.maxGapFrames) {
      throw new ProtocolError(`FRAME index jumps from ${this.nextFrame} to ${frame.firstFrame} `
        + `(more than ${this.maxGapFrames} frames missing)`);
    }
    const oneWay = arrival - captureTime(hello, last);
    this.offset = Math.min(this.offset, oneWay);
    this.queueDelay = Math.max(0, oneWay - this.offset);
    this.lastArrived = last;
    for (let i = 0; i < gap; i++) this.conceal('lost', arrival);
    for (let j = 0; j < frame.frameCount; j++) {
      const index = frame.firstFrame + j;
      if (index < this.nextFrame) {
        const record = this.records[index - this.startFrame];
        if (record?.concealed === 'deadline') record.arrivedLate = true;
        continue;
      }
      this.decodeReceived(frame.tokens.subarray(j * frame.levelCount, (j + 1) * frame.levelCount), index, arrival);
    }
  }

  private onEnd(end: End, arrival: number): void {
    const hello = this.session;
    const covering = this.framesCovering(end.numSamples);
    if (end.numFrames !== covering) {
      throw new ProtocolError(`END states ${end.numFrames} frames for ${end.numSamples} samples; ${covering} cover them`);
    }
    if (hello.numSamples !== null && end.numSamples !== hello.numSamples) {
      throw new ProtocolError(`END states ${end.numSamples} samples, HELLO announced ${hello.numSamples}`);
    }
    if (end.numFrames - this.nextFrame > this.maxGapFrames) {
      throw new ProtocolError(`END states ${end.numFrames} frames, only ${this.nextFrame} arrived`);
    }
    while (this.nextFrame < end.numFrames) this.conceal('lost', arrival);
    const keep = Math.max(0, end.numFrames - this.startFrame);
    if (this.records.slice(keep).some((r) => !r.concealed)) {
      throw new ProtocolError(`END states ${end.numFrames} frames, but frame ${this.nextFrame - 1} arrived`);
    }
    this.records.length = Math.min(this.records.length, keep); // concealed at their deadline after the stream ended
    this.tokens.length = this.records.length;
    this.end = end;
    const last = this.records[this.records.length - 1];
    if (last) { // a last, partial frame was complete when the source ended, before its nominal time
      last.captureTime = Math.min(last.captureTime, hello.streamStartUs / 1e6 + end.numSamples / hello.sampleRate);
    }
  }

  // -- decoding and concealment -------------------------------------------------------------------------------------
  private decodeReceived(codes: Uint16Array, index: number, now: number): void {
    const hello = this.session;
    const levels = codes.length;
    const tokens = new Uint16Array(hello.numLevels);
    tokens.set(codes);
    const record: FrameRecord = {
      index, levelsReceived: levels, levelsDecoded: levels, concealed: null, captureTime: captureTime(hello, index),
      outputTime: now, arrivedLate: false,
    };
    this.onDecode({ record, tokens, gainStart: this.gain, gainStop: 1 });
    this.gain = 1;
    this.lastTokens = tokens;
    this.lastLevels = levels;
    this.run = 0;
    this.records.push(record);
    this.tokens.push(tokens);
  }

  private conceal(reason: 'lost' | 'deadline', now: number): void {
    const hello = this.session;
    this.run += 1;
    let tokens: Uint16Array;
    let levels: number;
    let gain: number;
    if (!this.lastTokens) { // nothing received yet: keep the decoder's clock running, output silence
      tokens = new Uint16Array(hello.numLevels);
      levels = 0;
      gain = 0;
      this.gain = 0;
    } else {
      tokens = this.lastTokens;
      levels = Math.max(1, this.lastLevels >> this.run);
      gain = Math.min(1, Math.max(0, 1 - (this.run - 2) / 3));
    }
    const index = this.nextFrame;
    const record: FrameRecord = {
      index, levelsReceived: 0, levelsDecoded: levels, concealed: reason, captureTime: captureTime(hello, index),
      outputTime: now, arrivedLate: false,
    };
    this.onDecode({ record, tokens, gainStart: this.gain, gainStop: gain });
    this.gain = gain;
    this.records.push(record);
    this.tokens.push(tokens.slice());
  }

  private get frameLimit(): number {
    const hello = this.session;
    return hello.numSamples === null ? Infinity : this.framesCovering(hello.numSamples);
  }

  private concealOverdue(now: number): void {
    if (this.joinAtFirstFrame && this.records.length === 0) return; // where this listener starts is not known yet
    while (this.nextFrame < this.frameLimit && this.deadline(this.nextFrame) < now) this.conceal('deadline', now);
  }

  // -- feedback -----------------------------------------------------------------------------------------------------
  private replies(now: number): Uint8Array[] {
    if (now < this.nextFeedback) return [];
    this.nextFeedback += this.feedbackInterval;
    if (this.nextFeedback <= now) this.nextFeedback = now + this.feedbackInterval;
    return [this.feedback(now)];
  }

  /** Bits per second of every message received over the last `rateWindow` seconds (or since HELLO). */
  deliveredBps(now: number): number {
    while (this.arrivals.length && this.arrivals[0][0] <= now - this.rateWindow) this.arrivals.shift();
    const window = Math.max(this.feedbackInterval, Math.min(this.rateWindow, now - this.helloArrival));
    return (this.arrivals.reduce((sum, [, size]) => sum + size, 0) * 8) / window;
  }

  private feedback(now: number): Uint8Array {
    const hello = this.session;
    const delivered = this.deliveredBps(now);
    const frameRate = hello.sampleRate / hello.frameSize;
    const recent = this.records.slice(-Math.floor(this.rateWindow * frameRate) - 1)
      .filter((r) => r.outputTime > now - this.rateWindow);
    const loss = recent.length ? Math.round((1000 * recent.filter((r) => r.concealed).length) / recent.length) : 0;
    let received: FrameRecord | undefined;
    for (let i = this.records.length - 1; i >= 0 && !received; i--) if (!this.records[i].concealed) received = this.records[i];
    const clamp = (value: number) => Math.min(0xffffffff, Math.max(0, Math.round(value)));
    const message: Feedback = {
      kind: MessageKind.FEEDBACK,
      sequence: this.feedbackSent,
      framesPlayed: this.nextFrame,
      framesConcealed: this.records.filter((r) => r.concealed).length,
      levelCount: this.lastLevels,
      deliveredBps: clamp(delivered),
      lossPermille: loss,
      latencyUs: received ? clamp((received.outputTime - received.captureTime) * 1e6) : 0,
      queueDelayUs: clamp(this.currentQueueDelay(now) * 1e6),
    };
    this.feedbackSent += 1;
    return encodeMessage(message);
  }

  private currentQueueDelay(now: number): number {
    const expected = this.lastArrived + this.batch;
    if (!this.hello || this.lastArrived < 0 || expected >= this.frameLimit) return this.queueDelay;
    return Math.max(this.queueDelay, now - this.offset - captureTime(this.hello, expected));
  }
}

/** Multiply `pcm` in place by a gain going linearly from `start` to `stop` across it (the receiver's fades; the same
 * float operations as numpy's `linspace(start, stop, n, endpoint=False)`). */
export function ramp(pcm: Float32Array, start: number, stop: number): void {
  if (start === 1 && stop === 1) return;
  const step = (stop - start) / pcm.length;
  for (let i = 0; i < pcm.length; i++) pcm[i] *= Math.fround(i * step + start);
}
