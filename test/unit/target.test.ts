/**
 * The `/v1/*` request target is only ever resolved against UPSTREAM_BASE_URL's path
 * (src/proxy/target.ts): the suffix is appended as text, and anything that could mean another
 * path to the upstream is refused with 400.
 */
import { BadRequestError } from '../../src/errors';
import { resolveUpstreamPath } from '../../src/proxy/target';

describe('resolveUpstreamPath', () => {
  it('appends the suffix and query after the mount path to the base path', () => {
    expect(resolveUpstreamPath('/v1', '/v1', '/v1/chat/completions?x=1')).toBe('/v1/chat/completions?x=1');
    expect(resolveUpstreamPath('/openai/v1/', '/v1', '/v1/models/gpt-4o')).toBe('/openai/v1/models/gpt-4o');
    expect(resolveUpstreamPath('', '/v1', '/v1/models')).toBe('/models');
    expect(resolveUpstreamPath('/v1', '/v1', '/v1')).toBe('/v1');
    expect(resolveUpstreamPath('/v1', '/v1', '/v1?beta=true')).toBe('/v1?beta=true');
    // A trailing slash is kept; an encoded ordinary character stays as sent.
    expect(resolveUpstreamPath('/v1', '/v1', '/v1/models/')).toBe('/v1/models/');
    expect(resolveUpstreamPath('/v1', '/v1', '/v1/files/a%20b')).toBe('/v1/files/a%20b');
  });

  it.each([
    ['an absolute-form target', 'http://evil.example/v1/models'],
    ['a target outside the mount', '/admin/v1'],
    ['a suffix glued to the mount', '/v1models'],
    ['a dot segment', '/v1/../admin'],
    ['a single dot segment', '/v1/./models'],
    ['an encoded dot segment', '/v1/%2e%2e/admin'],
    ['a double-encoded dot segment', '/v1/%252e%252e/admin'],
    ['an encoded slash', '/v1/models%2F..%2Fadmin'],
    ['an encoded backslash', '/v1/models%5Cadmin'],
    ['a backslash', '/v1/models\\admin'],
    ['an empty segment', '/v1//evil.example/x'],
    ['a control character', '/v1/models\u0000'],
    ['an encoded control character', '/v1/models%0d%0aX-Injected:1'],
    ['a fragment in the query', '/v1/models?x=1#frag'],
    ['malformed percent-encoding', '/v1/models%zz'],
  ])('refuses %s (400)', (_what, target) => {
    expect(() => resolveUpstreamPath('/v1', '/v1', target)).toThrow(BadRequestError);
  });

  it('says what was wrong', () => {
    expect(() => resolveUpstreamPath('/v1', '/v1', '/v1/a/../b')).toThrow('Dot segments are not allowed in the request path');
    expect(() => resolveUpstreamPath('/v1', '/v1', '/v1/%E0%A4%A')).toThrow('Malformed percent-encoding in the request path');
  });
});
