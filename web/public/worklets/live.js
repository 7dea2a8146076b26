// AudioWorklet for the mimistack page's microphone modes (loaded by src/live.ts; plain JS so it is served as is).
// Input: the microphone, at the context's rate (the model's 24 kHz): posted to the page in frames of
// `frameSize` samples. Output: decoded audio the page posts back, played from a queue (silence when it runs dry).
class MimistackLive extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSize = options.processorOptions.frameSize;
    this.frame = new Float32Array(this.frameSize);
    this.filled = 0;
    this.queue = [];
    this.queueOffset = 0;
    this.queued = 0;
    this.started = false;
    this.underruns = 0;
    this.prebuffer = options.processorOptions.prebuffer ?? this.frameSize;
    this.running = true;
    this.port.onmessage = (event) => {
      const message = event.data;
      if (message.type === 'play') {
        this.queue.push(message.pcm);
        this.queued += message.pcm.length;
      } else if (message.type === 'stop') {
        this.port.postMessage({ type: 'tail', pcm: this.frame.slice(0, this.filled), underruns: this.underruns });
        this.filled = 0;
        this.running = false;
      }
    };
  }

  process(inputs, outputs) {
    const input = inputs[0] && inputs[0][0];
    if (this.running && input) {
      let offset = 0;
      while (offset < input.length) {
        const count = Math.min(input.length - offset, this.frameSize - this.filled);
        this.frame.set(input.subarray(offset, offset + count), this.filled);
        this.filled += count;
        offset += count;
        if (this.filled === this.frameSize) {
          const frame = this.frame;
          this.port.postMessage({ type: 'frame', pcm: frame }, [frame.buffer]);
          this.frame = new Float32Array(this.frameSize);
          this.filled = 0;
        }
      }
    }
    const output = outputs[0] && outputs[0][0];
    if (output) this.fill(output);
    return this.running || this.queued > 0;
  }

  fill(output) {
    if (!this.started && this.queued < this.prebuffer) {
      output.fill(0);
      return;
    }
    this.started = true;
    let written = 0;
    while (written < output.length && this.queue.length) {
      const head = this.queue[0];
      const count = Math.min(output.length - written, head.length - this.queueOffset);
      output.set(head.subarray(this.queueOffset, this.queueOffset + count), written);
      written += count;
      this.queueOffset += count;
      this.queued -= count;
      if (this.queueOffset === head.length) {
        this.queue.shift();
        this.queueOffset = 0;
      }
    }
    if (written < output.length) {
      output.fill(0, written);
      if (this.running) this.underruns += 1;
      this.started = false; // wait for a frame's worth again rather than stutter sample by sample
    }
  }
}

registerProcessor('mimistack-live', MimistackLive);
