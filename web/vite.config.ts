/**
 * Build of the mimistack page: `npm run build` writes the page into ../src/mimistack/server/static (served by
 * `mimistack serve`, copied into static sites by `mimistack export-web`), plus onnxruntime-web's WebAssembly runtime
 * under static/ort/ (so nothing loads from a CDN). Every URL in the build is relative (`base: './'`), so the page
 * works from any folder of any static file server.
 * `npm run dev` serves the page with hot reload and forwards /api and /models to a `mimistack serve` on port 8765.
 */

import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultClientConditions, defineConfig, type Plugin } from 'vite';

const here = dirname(fileURLToPath(import.meta.url));
const outDir = resolve(here, '../src/mimistack/server/static');
const ortDist = resolve(here, 'node_modules/onnxruntime-web/dist');
/** The runtimes the page may load: plain WebAssembly (SIMD + threads) and the WebGPU build. */
const ORT_FILES = [
  'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm',
  'ort-wasm-simd-threaded.asyncify.mjs', 'ort-wasm-simd-threaded.asyncify.wasm',
];
const SERVER = process.env.MIMISTACK_SERVER ?? 'http://127.0.0.1:8765';
const ISOLATION = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };

function onnxRuntimeFiles(): Plugin {
  return {
    name: 'mimistack-onnxruntime-files',
    apply: 'build',
    buildStart() {
      // Empty the output folder but keep its .gitignore (the build output is not committed).
      if (!existsSync(outDir)) return;
      for (const entry of readdirSync(outDir)) {
        if (entry !== '.gitignore') rmSync(join(outDir, entry), { recursive: true, force: true });
      }
    },
    closeBundle() {
      mkdirSync(join(outDir, 'ort'), { recursive: true });
      for (const file of ORT_FILES) copyFileSync(join(ortDist, file), join(outDir, 'ort', file));
    },
  };
}

function serveOnnxRuntimeInDev(): Plugin {
  return {
    name: 'mimistack-onnxruntime-dev',
    apply: 'serve',
    configureServer(server) {
      server.middlewares.use('/ort', (request, response, next) => {
        const name = (request.url ?? '').replace(/^\//, '').split('?')[0];
        if (!ORT_FILES.includes(name)) return next();
        response.setHeader('Content-Type', name.endsWith('.wasm') ? 'application/wasm' : 'text/javascript');
        import('node:fs').then((fs) => fs.createReadStream(join(ortDist, name)).pipe(response));
      });
    },
  };
}

export default defineConfig({
  base: './',
  resolve: {
    // The builds of onnxruntime-web that load their .mjs/.wasm from env.wasm.wasmPaths (/ort/) instead of
    // embedding them: the files are then served once, by us, and pthread workers can load them.
    conditions: [...defaultClientConditions, 'onnxruntime-web-use-extern-wasm'],
  },
  worker: { format: 'es' },
  build: {
    outDir,
    emptyOutDir: false,
    target: 'es2022',
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 1500,
  },
  server: {
    headers: ISOLATION,
    proxy: { '/api': SERVER, '/models': SERVER },
  },
  preview: { headers: ISOLATION },
  plugins: [onnxRuntimeFiles(), serveOnnxRuntimeInDev()],
});
