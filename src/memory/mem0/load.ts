/**
 * The one door to mem0ai. It reads MEM0_TELEMETRY once, when first loaded (off here unless the
 * operator turned it on; on, it calls home on every add and search), so each loader sets it from
 * the configuration before requiring the package.
 */
import type { Config } from '../../config';

function setTelemetry(config: Config): void {
  process.env.MEM0_TELEMETRY = config.memory.telemetry ? 'true' : 'false';
}

/** mem0ai's OSS engine (`Memory`, its stores and factories). */
export function loadMem0Oss(config: Config): typeof import('mem0ai/oss') {
  setTelemetry(config);
  return require('mem0ai/oss') as typeof import('mem0ai/oss');
}

/** mem0ai's Platform client. */
export function loadMem0Client(config: Config): typeof import('mem0ai') {
  setTelemetry(config);
  return require('mem0ai') as typeof import('mem0ai');
}
