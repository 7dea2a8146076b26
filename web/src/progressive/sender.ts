/**
 * The sending end of a progressive stream, without I/O: the page's port of `mimistack.stream.sender` (docs/protocol.md,
 * "The rate rule"). HELLO, then every frame's codes as they are encoded: level 0 first plus as many levels as the
 * bandwidth allows (`planFrames`), batched only when one frame cannot carry level 0; BANDWIDTH whenever the plan
 * changes (the frames waiting for a batch go first, as planned), and END.
 */

import {
  type Feedback, MessageKind, type Message, bitsPerToken, encodeMessage, planFrames, type Plan, type PlanOptions,
} from '../client/protocol.js';
import type { ModelSizes } from './receiver.js';

/** A fixed bandwidth, or a schedule of (start seconds, bit/s) steps from 0 s, as `--bitrate` and `--schedule` take. */
export interface Rate {
  control: 'fixed' | 'schedule';
  steps: [number, number][];
}

const BITRATE = /^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([km]?)\s*$/i;

function bitrate(text: string): number {
  const match = BITRATE.exec(text);
  const value = match ? Number(match[1]) * { '': 1, k: 1e3, m: 1e6 }[match[2].toLowerCase() as '' | 'k' | 'm'] : NaN;
  if (!(value > 0) || !Number.isFinite(value)) throw new Error(`not a bitrate: "${text}" (bit/s, e.g. 4400 or 4.4k)`);
  return value;
}

/** "4400" or "4.4k" (fixed), or "0:200,2:4400,5:500" (200 bit/s from 0 s, 4400 from 2 s, ...). */
export function parseRate(text: string): Rate {
  if (!text.includes(':')) return { control: 'fixed', steps: [[0, bitrate(text)]] };
  const steps = text.split(',').map((part): [number, number] => {
    const [time, rate, extra] = part.split(':');
    if (extra !== undefined || rate === undefined || !time.trim() || !Number.isFinite(Number(time))) {
      throw new Error(`schedule step "${part.trim()}" is not SECONDS:BITRATE (in "${text}")`);
    }
    return [Number(time), bitrate(rate)];
  });
  if (steps[0][0] !== 0) throw new Error(`a bandwidth schedule starts at time 0 ("${text}")`);
  steps.forEach(([time], i) => {
    if (i && !(time > steps[i - 1][0])) throw new Error(`schedule times must increase ("${text}")`);
  });
  return { control: 'schedule', steps };
}

export function rateAt(rate: Rate, seconds: number): number {
  let value = rate.steps[0][1];
  for (const [start, bps] of rate.steps) if (seconds >= start) value = bps;
  return value;
}

export interface SenderOptions {
  maxLevels?: number;
  utilization?: number;
  maxFramesPerMessage?: number;
}

export class ProgressiveSender {
  /** Frames planned so far; levels sent for each (by index); the plans as (first frame, estimate, plan). */
  frames = 0;
  readonly frameLevels: number[] = [];
  readonly plans: [number, number, Plan][] = [];
  messages = 0;
  bytesSent = 0;
  feedback: Feedback | null = null;
  start = 0;
  private readonly width: number;
  private readonly maxLevels: number;
  private pending: Uint16Array[] = [];
  private plan: Plan | null = null;
  private readonly model: ModelSizes;
  private readonly rate: Rate;
  private readonly send: (bytes: Uint8Array) => void;
  private readonly planOptions: PlanOptions;

  constructor(model: ModelSizes, rate: Rate, send: (bytes: Uint8Array) => void, options: SenderOptions = {}) {
    this.model = model;
    this.rate = rate;
    this.send = send;
    this.width = bitsPerToken(model.codebookSize);
    this.maxLevels = options.maxLevels ?? model.numLevels;
    this.planOptions = {
      frameDuration: model.frameSize / model.sampleRate, bitsPerToken: this.width, maxLevels: this.maxLevels,
      utilization: options.utilization ?? 0.9, maxFramesPerMessage: options.maxFramesPerMessage ?? 16,
    };
  }

  /** HELLO: the first sample was captured at `start` (wall-clock seconds); `numSamples` null for a microphone. */
  hello(start: number, numSamples: number | null): void {
    this.start = start;
    const m = this.model;
    this.post({
      kind: MessageKind.HELLO, numLevels: m.numLevels, maxLevels: this.maxLevels, sampleRate: m.sampleRate,
      frameSize: m.frameSize, codebookSize: m.codebookSize, weightsSha256: m.weightsSha256,
      streamStartUs: Math.round(start * 1e6), numSamples, cacheMode: 'window', rateControl: this.rate.control,
      codecConfig: '',
    });
  }

  /** One frame's codes (uint16 [numLevels]) as it was encoded at `now` (wall-clock seconds). */
  frame(column: Uint16Array, now: number): void {
    const estimate = rateAt(this.rate, now - this.start);
    const plan = planFrames(estimate, this.planOptions);
    if (!this.plan || plan.levelCount !== this.plan.levelCount || plan.framesPerMessage !== this.plan.framesPerMessage) {
      this.flush(); // the frames waiting were planned under the old budget: they go as planned
      this.plan = plan;
      this.plans.push([this.frames, estimate, plan]);
      this.post({
        kind: MessageKind.BANDWIDTH, fromFrame: this.frames, estimateBps: Math.min(0xffffffff, Math.round(estimate)),
        levelCount: plan.levelCount, framesPerMessage: plan.framesPerMessage,
      });
    }
    this.pending.push(column);
    this.frames += 1;
    if (this.pending.length >= plan.framesPerMessage) this.flush();
  }

  /** The frames still waiting, then END. */
  finish(numSamples: number): void {
    this.flush();
    this.post({ kind: MessageKind.END, numFrames: this.frames, numSamples });
  }

  private flush(): void {
    if (!this.pending.length || !this.plan) return;
    const levels = this.plan.levelCount;
    const count = this.pending.length;
    const tokens = new Uint16Array(count * levels);
    this.pending.forEach((column, j) => tokens.set(column.subarray(0, levels), j * levels));
    const firstFrame = this.frames - count;
    this.pending = [];
    for (let j = 0; j < count; j++) this.frameLevels.push(levels);
    this.post({ kind: MessageKind.FRAME, firstFrame, frameCount: count, levelCount: levels, bitsPerToken: this.width, tokens });
  }

  private post(message: Message): void {
    const bytes = encodeMessage(message);
    this.send(bytes);
    this.messages += 1;
    this.bytesSent += bytes.length;
  }
}
