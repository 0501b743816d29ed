// Runs the Solidity tests (contracts/test: unit, fuzz and invariant) with the npm-installed forge, so that
// `npm test` covers the contracts too. Fuzz and invariant runs use a fixed seed (contracts/foundry.toml).
import { describe, expect, it } from 'vitest'
import { forge } from '../../scripts/contracts.ts'

describe('forge test (contracts/)', () => {
  it('passes every Solidity test', async () => {
    const result = await forge(['test'])
    const lines = result.stdout.split('\n')
    const summary = lines.filter((line) => /^(Ran \d+ tests? for|Suite result:|Ran \d+ test suites?)/.test(line))
    const failures = lines.filter((line) => line.startsWith('[FAIL'))
    console.log([`forge test: ${(result.ms / 1000).toFixed(1)} s (build included)`, ...summary, ...failures].join('\n'))
    if (result.code !== 0) {
      expect.fail(`forge test exited with ${result.code}:\n${result.stdout.slice(-20_000)}\n${result.stderr}`)
    }
    expect(summary.at(-1)).toMatch(/ 0 failed/)
  }, 240_000)
})
