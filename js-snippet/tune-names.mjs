// Search the mangler's name order (NAMES in pipeline.mjs) for the smallest gzip -9 build of the
// current source: random swaps, kept when the size does not grow. Prints the best order; paste it
// into pipeline.mjs and rebuild. `node tune-names.mjs [ITERATIONS] [SEED]` (about 60 per second).
import { NAMES, bundle, finish, gzipSize } from './pipeline.mjs';

const iterations = +process.argv[2] || 2000;
let seed = +process.argv[3] || 1;
const random = (n) => ((seed = (seed * 1103515245 + 12345) % 2147483648), Math.floor(seed / 65536) % n);
const bundled = await bundle();
const size = async (names) => gzipSize(await finish(bundled, names));
let order = NAMES;
let best = await size(order);
console.log(`start: ${best} bytes gzip -9`);
for (let i = 0; i < iterations; i++) {
  const a = order.split('');
  const x = random(40); // the first ~30 names are the ones in use
  const y = random(a.length);
  [a[x], a[y]] = [a[y], a[x]];
  const s = await size(a.join(''));
  if (s <= best) {
    if (s < best) console.log(`${i}: ${s}`);
    [best, order] = [s, a.join('')];
  }
}
console.log(`best: ${best} bytes gzip -9\nNAMES = '${order}'`);
