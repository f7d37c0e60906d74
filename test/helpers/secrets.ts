/**
 * Secret values the tests configure. The suite-wide log scan (see log-scan.ts) fails any test file
 * whose captured logs contain one of these.
 */
export const TEST_AUTH_TOKEN = 'test-auth-token-7f3a9c1e5b';
export const TEST_OPENAI_KEY = 'sk-test-upstream-key-2b8d4e6f0a';
export const TEST_MEM0_KEY = 'm0-test-platform-key-9c7e5a3b1d';
export const TEST_DB_PASSWORD = 'pg-test-password-4e2c8a';
export const TEST_ANTHROPIC_KEY = 'sk-ant-test-upstream-key-5d1f9b3c7e';

export const ALL_TEST_SECRETS: readonly string[] = [TEST_AUTH_TOKEN, TEST_OPENAI_KEY, TEST_MEM0_KEY, TEST_DB_PASSWORD, TEST_ANTHROPIC_KEY];

/** Extra secrets a test file generates at run time (e.g. registry keys) and wants scanned too. */
export const runtimeSecrets: string[] = [];
