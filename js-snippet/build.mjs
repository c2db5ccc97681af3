// Build the tracker: one minified IIFE, written to collector/static/t.js (shipped inside the
// Python package, so `pip install .` needs no Node). `node build.mjs OUT` writes elsewhere (the
// freshness test builds into a temp dir and compares bytes). The pipeline is in pipeline.mjs.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { at, bundle, finish, gzipSize } from './pipeline.mjs';

const out = process.argv[2] ? resolve(process.argv[2]) : at('../collector/static/t.js');
const code = await finish(await bundle());
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, code);
let gz = '?';
try {
  gz = gzipSize(code);
} catch {} // no gzip on PATH: Node's figure only
const node = gzipSync(code, { level: 9 }).length;
console.log(`${out}: ${code.length} bytes, ${gz} bytes gzip -9 (budget 1500; Node's zlib: ${node})`);
