// Build the tracker: one minified IIFE, written to collector/static/t.js (shipped inside the
// Python package, so `pip install .` needs no Node). `node build.mjs OUT` writes elsewhere
// (the freshness test builds into a temp dir and compares bytes).
import { build } from 'esbuild';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const at = (p) => fileURLToPath(new URL(p, import.meta.url));
const out = process.argv[2] ? resolve(process.argv[2]) : at('../collector/static/t.js');
const { version } = JSON.parse(readFileSync(at('package.json'), 'utf8'));

const result = await build({
  entryPoints: [at('src/index.js')],
  bundle: true,
  minify: true,
  format: 'iife',
  target: 'es2021',
  define: { VERSION: JSON.stringify(version) },
  legalComments: 'none',
  charset: 'utf8',
  write: false,
  logLevel: 'warning',
});
const code = result.outputFiles[0].contents;
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, code);
const gz = gzipSync(code, { level: 9 }).length;
console.log(`${out}: ${code.length} bytes, ${gz} bytes gzip -9 (budget 1500)`);
