/**
 * The microphone: "Record" (captured, then encoded and decoded like a file) and "Live" (every 80 ms frame streams
 * through the models as it arrives, heard with the levels selected at that moment; `live.ts`). While capturing,
 * the stack and the signals show the last 20 s.
 */

import { encodeWav } from '../audio-io';
import { readyEngine } from '../browser-engine';
import type { ModelDescription } from '../engine/messages';
import type { TokenGrid } from '../grid';
import { Capture, type LiveFrame } from '../live';
import { type CaptureKind, emptyLive, LIVE_WINDOW_FRAMES, newTake, sampleRate, store } from '../state';
import { decodeTake, encodeTake, installTake } from '../takes';
import { $, formatTime } from './dom';
import { busy, guard, notice, showError } from './feedback';
import { renderTake } from './take';
import { decodedView, originalView, player, stack } from './views';

const takeName = (kind: CaptureKind) => (kind === 'live' ? 'live stream' : 'recording');

async function toggleCapture(kind: CaptureKind): Promise<void> {
  showError(null);
  if (store.get().capture) {
    await finishCapture();
    return;
  }
  player.stop();
  const engine = kind === 'live' ? await readyEngine() : null;
  const { model, info } = store.get();
  const frameSize = model?.frameSize ?? info?.frame_size ?? 1920;
  store.update({ live: emptyLive() });
  installTake(newTake(takeName(kind), null, null, kind === 'live' ? 'live' : 'browser'));
  const capture = await Capture.start({
    sampleRate: sampleRate(), frameSize, engine, selection: () => store.get().selection,
    monitor: $<HTMLInputElement>('monitor').checked, onFrame: onLiveFrame,
  });
  store.update({ capture, captureKind: kind });
  renderTake();
  $(kind).classList.add('active');
  $(kind).textContent = kind === 'live' ? '■ Stop live' : '■ Stop recording';
}

function onLiveFrame(frame: LiveFrame): void {
  const { live, capture, captureKind, info } = store.get();
  if (frame.lagging) notice(frame.lagging);
  const s = live.stats;
  s.frames += 1;
  s.encodeMilliseconds = frame.encodeMilliseconds;
  s.decodeMilliseconds = frame.decodeMilliseconds;
  s.backlog = frame.backlog;
  s.busyMilliseconds += frame.encodeMilliseconds + frame.decodeMilliseconds;
  s.backlogSum += frame.backlog;
  s.maxBacklog = Math.max(s.maxBacklog, frame.backlog);
  const seconds = capture?.seconds ?? 0;
  if (frame.codes) live.columns.push(frame.codes);
  for (const [list, value] of [[live.input, frame.input], [live.output, frame.output]] as const) {
    if (!value) continue;
    list.push(value);
    if (list.length > LIVE_WINDOW_FRAMES) list.shift();
  }
  const frameMs = 1000 / (info?.frame_rate ?? 12.5);
  $('source-info').textContent = captureKind === 'live'
    ? `Live · ${formatTime(seconds)} · ${s.frames} frames · step ${(s.encodeMilliseconds + s.decodeMilliseconds).toFixed(1)} ms `
      + `(encode ${s.encodeMilliseconds.toFixed(1)} + decode ${s.decodeMilliseconds.toFixed(1)}) of ${frameMs} ms per frame`
      + (s.backlog > 1 ? ` · falling behind by ${s.backlog} frames` : '')
    : `Recording · ${formatTime(seconds)}`;
  if (s.frames % 3 !== 0) return; // redraw at about 4 Hz
  const frameSize = frame.input.length;
  if (frame.codes) {
    stack.setGrid(columnsToGrid(live.columns, live.columns.length * frameSize), LIVE_WINDOW_FRAMES);
  }
  const windowSeconds = (LIVE_WINDOW_FRAMES * frameSize) / sampleRate();
  originalView.set(rolling(live.input, frameSize), sampleRate(), windowSeconds);
  if (frame.output) decodedView.set(rolling(live.output, frameSize), sampleRate(), windowSeconds);
}

/** The last frames right-aligned in a LIVE_WINDOW_FRAMES-long buffer (silence before the first). */
function rolling(frames: Float32Array[], frameSize: number): Float32Array {
  const out = new Float32Array(LIVE_WINDOW_FRAMES * frameSize);
  frames.forEach((frame, i) => out.set(frame, (LIVE_WINDOW_FRAMES - frames.length + i) * frameSize));
  return out;
}

function columnsToGrid(columns: Uint16Array[], numSamples: number): TokenGrid {
  const model = store.get().model as ModelDescription;
  const frames = columns.length;
  const codes = new Uint16Array(model.numLevels * frames);
  columns.forEach((column, t) => column.forEach((token, level) => (codes[level * frames + t] = token)));
  return {
    codes, numLevels: model.numLevels, numFrames: frames, numSamples, sampleRate: model.sampleRate, frameRate: model.frameRate,
    codebookSize: model.codebookSize, weightsSha256: model.weightsSha256, levelsPresent: Array.from({ length: model.numLevels }, (_, i) => i),
  };
}

async function finishCapture(): Promise<void> {
  const { capture, captureKind } = store.get();
  const kind = captureKind as CaptureKind;
  store.update({ capture: null });
  $(kind).classList.remove('active');
  $(kind).textContent = kind === 'live' ? '◉ Live' : '● Record';
  await busy('finishing', async () => {
    const result = await (capture as Capture).stop();
    store.update({ captureKind: null });
    const rate = sampleRate();
    const seconds = result.pcm.length / rate;
    const take = newTake(takeName(kind), encodeWav(result.pcm, rate, 'float32'), result.pcm, kind === 'live' ? 'live' : store.get().mode);
    installTake(take);
    $('source-info').textContent = `${take.name} · ${formatTime(seconds)} from the microphone`
      + (kind === 'live' ? ` · ${result.columns.length} frames streamed${result.underruns ? ` · ${result.underruns} playback underruns` : ''}` : '');
    if (kind === 'live' && result.columns.length) {
      take.grid = columnsToGrid(result.columns, result.pcm.length);
      stack.setGrid(take.grid);
      renderTake();
    } else {
      await encodeTake(take);
    }
  });
  await decodeTake();
}

export function wireCapture(): void {
  $('record').addEventListener('click', guard(() => toggleCapture('record')));
  $('live').addEventListener('click', guard(() => toggleCapture('live')));
}
