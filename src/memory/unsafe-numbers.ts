/**
 * Whether a JSON text holds an integer that JavaScript cannot represent exactly (beyond 2^53).
 *
 * The chat path re-serialises the body when it injects memories; `JSON.parse` would round such an
 * integer (a `seed`, an id), changing a value the caller sent. Bodies that hold one are forwarded
 * as sent, without memories, instead. A small scanner: number tokens outside strings only.
 */
export function hasUnsafeInteger(json: string): boolean {
  let inString = false;
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \\ */) i++;
      else if (c === 0x22 /* " */) inString = false;
      continue;
    }
    if (c === 0x22) {
      inString = true;
      continue;
    }
    const isDigit = c >= 0x30 && c <= 0x39;
    if (!isDigit && c !== 0x2d /* - */) continue;
    // A number token: digits, optionally with a sign, fraction or exponent.
    let j = i + 1;
    while (j < json.length && /[0-9eE+\-.]/.test(json[j] ?? '')) j++;
    const token = json.slice(i, j);
    i = j - 1;
    if (/^-?\d{16,}$/.test(token) && !Number.isSafeInteger(Number(token))) return true;
  }
  return false;
}
