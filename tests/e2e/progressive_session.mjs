// Drives the page's receiving and sending ends (web/src/progressive/receiver.ts and sender.ts, compiled by tsc) in
// Node, without a browser, for tests/test_web_progressive.py, which runs the same events through Python's
// `ReceiverSession` and compares.
//
//   node progressive_session.mjs RECEIVER_JS SENDER_JS INPUT_JSON OUTPUT_JSON
//
// INPUT_JSON: {"model": {...ModelSizes}, "options": {...ReceiverOptions}, "join": bool, "events": [{"at": s,
// "hex": message} | {"at": s, "tick": true} | {"finish": true}], "sender": {"rate": text, "frames": [[tokens], ...],
// "times": [s, ...], "start": s, "numSamples": n} | null}. Writes, per event, the replies (hex) or the error that
// ended the session, then the session's records and decode jobs (levels, gains), and the sender's messages (hex).
import { readFileSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const [receiverPath, senderPath, inputPath, outputPath] = process.argv.slice(2);
const { ReceiverSession } = await import(pathToFileURL(receiverPath).href);
const { ProgressiveSender, parseRate } = await import(pathToFileURL(senderPath).href);
const input = JSON.parse(readFileSync(inputPath, 'utf8'));
const hex = (bytes) => Buffer.from(bytes).toString('hex');

const jobs = [];
const session = new ReceiverSession(input.model, (job) => jobs.push({
  index: job.record.index, levels: job.record.levelsDecoded, gainStart: job.gainStart, gainStop: job.gainStop,
  tokens: Array.from(job.tokens),
}), input.options);
session.joinAtFirstFrame = !!input.join;
const steps = [];
for (const event of input.events) {
  try {
    if (event.finish) {
      session.finish();
      steps.push({ replies: [] });
    } else if (event.tick) {
      steps.push({ replies: session.tick(event.at).map(hex) });
    } else {
      const bytes = Buffer.from(event.hex, 'hex');
      const data = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
      steps.push({ replies: session.handle(data, event.at).map(hex) });
    }
  } catch (error) {
    steps.push({ error: { name: error.constructor.name, code: error.code ?? null, message: error.message } });
    break;
  }
}

let sent = null;
if (input.sender) {
  const s = input.sender;
  sent = { messages: [], rateError: null };
  try {
    const sender = new ProgressiveSender(input.model, parseRate(s.rate), (bytes) => sent.messages.push(hex(bytes)));
    sender.hello(s.start, s.numSamples);
    s.frames.forEach((column, i) => sender.frame(Uint16Array.from(column), s.times[i]));
    sender.finish(s.numSamples);
    sent.frameLevels = sender.frameLevels;
  } catch (error) {
    sent.rateError = error.message;
  }
}

writeFileSync(outputPath, JSON.stringify({
  steps, jobs, records: session.records, startFrame: session.startFrame, numSamples: session.numSamples,
  ended: session.ended, sent,
}));
