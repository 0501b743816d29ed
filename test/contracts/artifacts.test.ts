// src/chain/artifacts.ts is generated (npm run contracts:build). This rebuilds contracts/ with forge and
// fails when the committed file differs from what the build renders, so a contract change cannot ship
// with stale ABIs or bytecode.
import { readFile } from 'node:fs/promises'
import { decodeFunctionData, encodeFunctionData, getAddress } from 'viem'
import { describe, expect, it } from 'vitest'
import { ARTIFACTS_FILE, buildContracts, renderArtifacts } from '../../scripts/contracts.ts'
import {
  clusterEscrowAbi,
  clusterEscrowBytecode,
  clusterEscrowDeployedBytecode,
  multicall3Abi,
  multicall3Bytecode,
  multicall3DeployedBytecode,
  testUsdcAbi,
  testUsdcBytecode,
  testUsdcDeployedBytecode,
} from '../../src/chain/artifacts.ts'

describe('src/chain/artifacts.ts', () => {
  it('matches a fresh build of contracts/ (if not: npm run contracts:build)', async () => {
    const build = await buildContracts()
    console.log(`forge build: ${(build.ms / 1000).toFixed(1)} s`)
    const fresh = await renderArtifacts()
    const committed = await readFile(ARTIFACTS_FILE, 'utf8')
    if (committed !== fresh) {
      const a = committed.split('\n')
      const b = fresh.split('\n')
      const line = a.findIndex((text, i) => text !== b[i])
      const at = line === -1 ? Math.min(a.length, b.length) : line
      expect.fail(
        `src/chain/artifacts.ts is stale: run \`npm run contracts:build\`. First difference at line ${at + 1}:\n` +
          `  committed: ${(a[at] ?? '<end of file>').slice(0, 200)}\n  fresh:     ${(b[at] ?? '<end of file>').slice(0, 200)}`,
      )
    }
  }, 240_000)

  it('exports typed ABIs and bytecode viem can use', () => {
    for (const code of [
      clusterEscrowBytecode,
      clusterEscrowDeployedBytecode,
      testUsdcBytecode,
      testUsdcDeployedBytecode,
      multicall3Bytecode,
      multicall3DeployedBytecode,
    ]) {
      expect(code).toMatch(/^0x[0-9a-f]+$/)
    }
    // Multicall3 has no constructor and no immutables: its creation code carries its runtime code verbatim
    // (what anvil_setCode puts at the canonical address).
    expect(multicall3Bytecode.includes(multicall3DeployedBytecode.slice(2))).toBe(true)
    expect(multicall3DeployedBytecode.length).toBeLessThan(multicall3Bytecode.length)
    const payer = getAddress('0x00000000000000000000000000000000000000a1')
    const node = getAddress('0x00000000000000000000000000000000000000b2')
    const batchId = `0x${'11'.repeat(32)}` as const
    // Types are inferred from the `as const` ABI: a wrong argument here is a typecheck error.
    const data = encodeFunctionData({
      abi: clusterEscrowAbi,
      functionName: 'settle',
      args: [batchId, [{ payer, amount: 5n }], [{ payee: node, amount: 5n }]],
    })
    const decoded = decodeFunctionData({ abi: clusterEscrowAbi, data })
    expect(decoded.functionName).toBe('settle')
    expect(decoded.args).toEqual([batchId, [{ payer, amount: 5n }], [{ payee: node, amount: 5n }]])
    const names = (abi: readonly { type: string; name?: string }[], type: string) =>
      abi.filter((item) => item.type === type).map((item) => item.name)
    expect(names(clusterEscrowAbi, 'event')).toEqual(
      expect.arrayContaining([
        'Deposited',
        'GatewayAuthorized',
        'Settled',
        'EarningsCredited',
        'BatchSettled',
        'WithdrawRequested',
        'WithdrawCancelled',
        'Withdrawn',
        'EarningsClaimed',
      ]),
    )
    expect(names(clusterEscrowAbi, 'function')).toEqual(
      expect.arrayContaining(['requestWithdraw', 'requestWithdrawWithSig', 'REQUEST_WITHDRAW_TYPEHASH']),
    )
    expect(names(multicall3Abi, 'function').sort()).toEqual(
      [
        'aggregate',
        'aggregate3',
        'aggregate3Value',
        'blockAndAggregate',
        'getBasefee',
        'getBlockHash',
        'getBlockNumber',
        'getChainId',
        'getCurrentBlockCoinbase',
        'getCurrentBlockDifficulty',
        'getCurrentBlockGasLimit',
        'getCurrentBlockTimestamp',
        'getEthBalance',
        'getLastBlockHash',
        'tryAggregate',
        'tryBlockAndAggregate',
      ].sort(),
    )
    expect(names(testUsdcAbi, 'function')).toEqual(
      expect.arrayContaining([
        'transferWithAuthorization',
        'receiveWithAuthorization',
        'cancelAuthorization',
        'authorizationState',
        'mint',
      ]),
    )
  })
})
