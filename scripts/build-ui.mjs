// Builds the memory console (ui/) into a static folder the server serves under /ui/:
// app.js (Preact + views, one minified IIFE), app.css and index.html.
// Usage: node scripts/build-ui.mjs [--out=DIR]   (default: dist/ui at the repo root)
import { build } from 'esbuild';
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const outArg = process.argv.slice(2).find((a) => a.startsWith('--out='));
const outDir = outArg ? resolve(outArg.slice('--out='.length)) : join(root, 'dist', 'ui');

function kb(bytes) {
  return `${(bytes / 1024).toFixed(1)} KB`;
}

try {
  const started = Date.now();
  await mkdir(outDir, { recursive: true });
  await build({
    absWorkingDir: root,
    entryPoints: [join(root, 'ui/src/main.tsx')],
    outfile: join(outDir, 'app.js'), // the CSS it imports goes to app.css beside it
    tsconfig: join(root, 'ui/tsconfig.json'),
    bundle: true,
    minify: true,
    format: 'iife',
    target: ['es2020'],
    legalComments: 'none',
    logLevel: 'warning',
  });
  await copyFile(join(root, 'ui/index.html'), join(outDir, 'index.html'));

  let totalGzip = 0;
  for (const name of ['app.js', 'app.css']) {
    const data = await readFile(join(outDir, name));
    const gz = gzipSync(data).length;
    totalGzip += gz;
    console.log(`${name.padEnd(8)} ${kb(data.length).padStart(9)} raw  ${kb(gz).padStart(9)} gzip`);
  }
  console.log(`total gzip ${kb(totalGzip)}; built ${relative(process.cwd(), outDir) || '.'} in ${Date.now() - started} ms`);
} catch (err) {
  // esbuild has already printed its diagnostics; anything else gets a line here.
  if (!(err && Array.isArray(err.errors))) console.error(err);
  process.exit(1);
}
