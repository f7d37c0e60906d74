/** Detecting integers that would change value when a body is parsed and re-serialised. */
import { hasUnsafeInteger } from '../../src/memory/unsafe-numbers';

describe('hasUnsafeInteger', () => {
  it.each([
    ['{"seed":9007199254740993}', true],
    ['{"a":[1,2,-9007199254740993]}', true],
    ['{"seed":9007199254740991}', false],
    ['{"x":123456789012345678901234567890.5}', false],
    ['{"note":"order 9007199254740993 shipped"}', false],
    ['{"note":"quote \\" 9007199254740993"}', false],
    ['{"t":1.5e300,"n":-3}', false],
    ['{"messages":[{"role":"user","content":"hi"}],"seed":12345678901234567890}', true],
  ])('%s → %s', (json, expected) => {
    expect(hasUnsafeInteger(json)).toBe(expected);
  });
});
