/**
 * Writing the key registry file: atomically (a temp file in the same folder, fsynced, then renamed
 * over the old one), so the proxy's SIGHUP reload never reads a half-written file, and with mode
 * 0600, because even digests are no business of other local users.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { KeysFileJson } from './registry';

export const KEYS_FILE_MODE = 0o600;

/** Replaces `file` with `content` as JSON, atomically, mode 0600. */
export function writeKeysFile(file: string, content: KeysFileJson): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = fs.openSync(tmp, 'wx', KEYS_FILE_MODE);
  try {
    // The umask may only narrow the mode at creation; set it exactly.
    fs.fchmodSync(fd, KEYS_FILE_MODE);
    fs.writeSync(fd, `${JSON.stringify(content, null, 2)}\n`);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  try {
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}
