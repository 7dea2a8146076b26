// Runs the transformers.js folder written by `mimistack export-onnx` through @huggingface/transformers' MimiModel
// in Node (onnxruntime-node), as a web page would: used by tests/test_transformers_js.py.
//
//   node mimi_roundtrip.mjs FOLDER INPUT.f32 OUTPUT.json LEVEL_COUNTS
//
// INPUT.f32: mono pcm as little-endian float32. LEVEL_COUNTS: comma-separated prefixes to decode ("1,8,32").
// OUTPUT.json: {"codes": {"dims", "data"}, "audio": {"<k>": {"dims", "base64"}}} (audio as float32 LE).
import { readFileSync, writeFileSync } from 'node:fs';
import { MimiModel, Tensor, env } from '@huggingface/transformers';

const [folder, inputPath, outputPath, levelCounts] = process.argv.slice(2);
if (!folder || !inputPath || !outputPath || !levelCounts) {
    console.error('usage: node mimi_roundtrip.mjs FOLDER INPUT.f32 OUTPUT.json LEVEL_COUNTS');
    process.exit(2);
}
env.allowRemoteModels = false; // the folder is all there is: nothing may come from the hub
env.allowLocalModels = true;

const model = await MimiModel.from_pretrained(folder, { dtype: 'fp32', device: 'cpu' });
const raw = readFileSync(inputPath);
const pcm = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
const input_values = new Tensor('float32', pcm, [1, 1, pcm.length]);
const { audio_codes } = await model.encode({ input_values });

const result = {
    codes: { dims: audio_codes.dims, data: Array.from(audio_codes.data, Number) },
    audio: {},
};
for (const count of levelCounts.split(',').map(Number)) {
    const prefix = audio_codes.slice(null, [0, count], null);
    const { audio_values } = await model.decode({ audio_codes: prefix });
    const bytes = Buffer.from(audio_values.data.buffer, audio_values.data.byteOffset, audio_values.data.byteLength);
    result.audio[count] = { dims: audio_values.dims, base64: bytes.toString('base64') };
}
writeFileSync(outputPath, JSON.stringify(result));
console.log(`ok: ${audio_codes.dims.join('x')} codes, decoded prefixes ${levelCounts}`);
