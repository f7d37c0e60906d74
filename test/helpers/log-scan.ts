/**
 * Runs after every test file: nothing any test app logged may contain a configured secret. Logs are
 * captured at debug level, so this covers every line the process can write.
 */
import { capturedLogLines } from './app';
import { ALL_TEST_SECRETS, runtimeSecrets } from './secrets';

afterAll(() => {
  const secrets = [...ALL_TEST_SECRETS, ...runtimeSecrets];
  const hits = capturedLogLines.flatMap((line) =>
    secrets.filter((s) => line.includes(s)).map((s) => `${s.slice(0, 6)}… in ${line.slice(0, 200)}`),
  );
  expect(hits).toEqual([]);
});
