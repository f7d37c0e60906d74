/**
 * Where the test run's transpiled copy of `src/` lives (built once per jest run by
 * test/setup/build-source.ts): child proxies and engine threads start from it without a
 * TypeScript loader. It sits one level under the repository root, like `dist/`, so the
 * `__dirname/..` paths in config.ts resolve the same.
 */
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '..', '..');
export const BUILT_DIR = path.join(ROOT, '.test-build');
/** The proxy's entry point (`src/index.ts`, transpiled). */
export const BUILT_ENTRY = path.join(BUILT_DIR, 'index.js');
/** The memory engine's worker thread (`src/memory/worker/engine-thread.ts`, transpiled). */
export const BUILT_ENGINE_THREAD = path.join(BUILT_DIR, 'memory', 'worker', 'engine-thread.js');
/** The PGlite data directory test databases start from (`<this>.tar`; `<this>.error` if making it failed). */
export const PGLITE_TEMPLATE = path.join(BUILT_DIR, 'pglite-template');
