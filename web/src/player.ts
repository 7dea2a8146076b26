/**
 * A/B playback of the original and the decoded signal with Web Audio.
 *
 * Both signals play in sync from the same position; A/B only changes which one is heard, so the comparison is
 * instant. When the decoded signal changes (a new level selection) while it plays, playback continues from the
 * same position with the new audio. Used by `ui/player.ts` and `takes.ts`; the playhead time drives the views' cursors.
 */

export type Track = 'original' | 'decoded';

interface Playing {
  sources: Partial<Record<Track, AudioBufferSourceNode>>;
  gains: Partial<Record<Track, GainNode>>;
  startedAt: number;
  offset: number;
}

export class Player {
  private context: AudioContext | null = null;
  private buffers: Partial<Record<Track, AudioBuffer>> = {};
  private playing: Playing | null = null;
  heard: Track = 'decoded';
  onChange: () => void = () => {};

  private audio(): AudioContext {
    this.context ??= new AudioContext({ latencyHint: 'playback' });
    return this.context;
  }

  set(track: Track, pcm: Float32Array | null, sampleRate: number): void {
    if (!pcm || pcm.length === 0) {
      delete this.buffers[track];
    } else {
      const buffer = this.audio().createBuffer(1, pcm.length, sampleRate);
      buffer.copyToChannel(pcm as Float32Array<ArrayBuffer>, 0);
      this.buffers[track] = buffer;
    }
    if (this.playing) this.play(this.heard, this.position() ?? 0); // keep going with the new audio
  }

  has(track: Track): boolean {
    return !!this.buffers[track];
  }

  get isPlaying(): boolean {
    return this.playing !== null;
  }

  /** Seconds into the signal, or null when stopped. */
  position(): number | null {
    if (!this.playing || !this.context) return null;
    return this.playing.offset + this.context.currentTime - this.playing.startedAt;
  }

  play(track: Track, from = 0): void {
    this.halt();
    const context = this.audio();
    void context.resume();
    this.heard = this.buffers[track] ? track : (track === 'decoded' ? 'original' : 'decoded');
    const playing: Playing = { sources: {}, gains: {}, startedAt: context.currentTime + 0.05, offset: from };
    const longest = Math.max(...Object.values(this.buffers).map((b) => b.duration));
    if (!(from < longest)) playing.offset = 0;
    for (const name of ['original', 'decoded'] as Track[]) {
      const buffer = this.buffers[name];
      if (!buffer) continue;
      const source = context.createBufferSource();
      source.buffer = buffer;
      const gain = context.createGain();
      gain.gain.value = name === this.heard ? 1 : 0;
      source.connect(gain).connect(context.destination);
      if (playing.offset < buffer.duration) source.start(playing.startedAt, playing.offset);
      playing.sources[name] = source;
      playing.gains[name] = gain;
    }
    const longestSource = Object.entries(playing.sources).sort(([, a], [, b]) => (b.buffer?.duration ?? 0) - (a.buffer?.duration ?? 0))[0]?.[1];
    if (longestSource) {
      longestSource.onended = () => {
        if (this.playing === playing) {
          this.playing = null;
          this.onChange();
        }
      };
    }
    this.playing = playing;
    this.onChange();
  }

  /** Switch what is heard without interrupting playback (A/B). */
  switchTo(track: Track): void {
    if (!this.buffers[track]) return;
    this.heard = track;
    const context = this.context;
    if (this.playing && context) {
      for (const [name, gain] of Object.entries(this.playing.gains)) {
        gain.gain.setTargetAtTime(name === track ? 1 : 0, context.currentTime, 0.005);
      }
    }
    this.onChange();
  }

  stop(): void {
    this.halt();
    this.onChange();
  }

  private halt(): void {
    if (!this.playing) return;
    const playing = this.playing;
    this.playing = null;
    for (const source of Object.values(playing.sources)) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        // a source that had not started yet
      }
      source.disconnect();
    }
  }
}
