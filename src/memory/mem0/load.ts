/**
 * The one door to mem0ai. It reads MEM0_TELEMETRY once, when first loaded (off here unless the
 * operator turned it on; on, it calls home on every add and search), so each loader sets it from
 * the configuration before requiring the package. The OSS loader also puts NounPhrases in front
 * of the compromise module mem0ai requires, before mem0ai requires it (see noun-phrases.ts).
 */
import os from 'node:os';
import path from 'node:path';
import type { Config } from '../../config';
import { type Nlp, NounPhrases } from './noun-phrases';

function setTelemetry(config: Config): void {
  process.env.MEM0_TELEMETRY = config.memory.telemetry ? 'true' : 'false';
}

// Per thread, like the module cache it lives in: mem0ai holds the compromise it required first.
let nounPhrases: NounPhrases | undefined;

/**
 * Replaces compromise's exports in the module cache with the NounPhrases stand-in, once per
 * thread and only before mem0ai is loaded (after that, mem0ai holds compromise itself). Undefined
 * when compromise is not installed (mem0ai then extracts entities without it) or mem0ai was
 * loaded first.
 */
function installNounPhrases(): NounPhrases | undefined {
  if (nounPhrases) return nounPhrases;
  let mem0File: string;
  let file: string;
  try {
    mem0File = require.resolve('mem0ai/oss');
    file = require.resolve('compromise', { paths: [path.dirname(mem0File)] });
  } catch {
    return undefined;
  }
  if (require.cache[mem0File]) return undefined;
  const real = require(file) as Nlp;
  const entry = require.cache[file];
  if (typeof real !== 'function' || !entry) return undefined;
  // No second thread where the process may use one core only (as for the scan helper).
  nounPhrases = new NounPhrases(real, os.availableParallelism() > 1 ? file : undefined);
  entry.exports = nounPhrases.standIn();
  return nounPhrases;
}

/** mem0ai's OSS engine (`Memory`, its stores and factories). */
export function loadMem0Oss(config: Config): typeof import('mem0ai/oss') {
  setTelemetry(config);
  installNounPhrases();
  return require('mem0ai/oss') as typeof import('mem0ai/oss');
}

/**
 * The noun phrases mem0ai's entity extraction uses on this thread, when loadMem0Oss put the
 * stand-in in place.
 */
export function mem0NounPhrases(): NounPhrases | undefined {
  return nounPhrases;
}

/** mem0ai's Platform client. */
export function loadMem0Client(config: Config): typeof import('mem0ai') {
  setTelemetry(config);
  return require('mem0ai') as typeof import('mem0ai');
}
