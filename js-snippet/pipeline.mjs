// The tracker's build pipeline, shared by build.mjs (writes the file) and tune-names.mjs (searches
// the mangler's name order). esbuild bundles and minifies src/index.js into one IIFE; terser then
// minifies again: its mangler reuses the same few names in every scope, which gzip compresses
// better (about 40 bytes gzip -9).
import { build } from 'esbuild';
import { minify } from 'terser';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';

export const at = (p) => fileURLToPath(new URL(p, import.meta.url));

// The order in which terser hands out one-letter names. Its default ranks letters by their
// frequency in the output; this order, found by tune-names.mjs for the current source, gzips 14
// bytes smaller. After changing the source, re-run `node tune-names.mjs` (it starts from this
// order and prints a better one, if any) or keep it: any order is correct, only the size differs.
export const NAMES = 'itaslgTvMopeSwyqmrcLnfuJhKOd_NPIGHURVWECzXkQFYb$ZxAjBD';

/** terser's name generator over `order` (then digits after the first character, like its own). */
const nth = (order) => ({
  get(num) {
    let ret = '';
    let base = 54;
    num++;
    do {
      num--;
      ret += (base == 54 ? order : order + '0123456789')[num % base];
      num = Math.floor(num / base);
      base = 64;
    } while (num > 0);
    return ret;
  },
});

/** esbuild's output for the source (the part that does not depend on the name order). */
export const bundle = async () => {
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
  return result.outputFiles[0].text;
};

/** The shipped file: esbuild's output minified by terser with the given name order. */
export const finish = async (bundled, names = NAMES) => {
  const min = await minify(bundled, { ecma: 2021, compress: { passes: 2 }, mangle: { nth_identifier: nth(names) } });
  return Buffer.from(min.code);
};

/** The size the issue and test_build.py mean: zlib at level 9 without a file name (GNU gzip -9 -n,
 * Python's gzip module). Node's bundled zlib is a fork whose matcher differs by a few bytes. */
export const gzipSize = (code) => execFileSync('gzip', ['-9', '-n'], { input: code }).length;
