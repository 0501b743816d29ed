// Restart safety with real processes: `cluster gateway` (settling on anvil) is killed with SIGKILL
// while deposits arrive and while settlement runs, and restarted on the same data dir. In the end
// every deposit is credited exactly once, and the node has been paid exactly what was charged.
import { existsSync, readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { ExactEvmScheme } from '@x402/evm/exact/client'
import { wrapFetchWithPayment, x402Client } from '@x402/fetch'
import { type Address, createPublicClient, createWalletClient, type Hex, http, maxUint256, parseUnits } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { afterAll, describe, expect, it } from 'vitest'
import { clusterEscrowAbi, testUsdcAbi } from '../../src/chain/artifacts.ts'
import { type DevChain, devChainViem, fundWallet, startDevChain, testAccounts } from '../../src/chain/devchain.ts'
import { parseUsd } from '../../src/payments/money.ts'
import { tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { type ClusterProcess, cluster, exited, killAll } from '../helpers/processes.ts'

const MODEL = 'tiny-restart'
const accounts = testAccounts()
const gatewayKey = (accounts[1] as { privateKey: Hex }).privateKey
const payout = (accounts[6] as { address: Address }).address
const wallet = privateKeyToAccount((accounts[7] as { privateKey: Hex }).privateKey)
const facilitatorKey = (accounts[5] as { privateKey: Hex }).privateKey

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })

const units = (dollars: string): bigint => (dollars.startsWith('-') ? -parseUsd(dollars.slice(1)) : parseUsd(dollars))

describe('restart safety of deposits and settlement (SIGKILL)', () => {
  const cleanups: Array<() => Promise<void>> = []
  afterAll(async () => {
    await killAll()
    for (const c of cleanups) await c().catch(() => undefined)
  })

  it('kill the gateway between and during events, restart: totals are exact', async () => {
    const chain: DevChain = await startDevChain()
    cleanups.push(() => chain.stop())
    const dir = await tempDir('cluster-chain-restart-')
    cleanups.push(dir.remove)
    const [p2pPort, httpPort] = [await freePort(), await freePort()]
    const url = `http://127.0.0.1:${httpPort}`
    const gwDir = join(dir.path, 'gateway')
    const config = join(dir.path, 'config.json')
    await writeFile(
      config,
      JSON.stringify({
        gateway: {
          rateLimit: { capacity: 100_000, refillPerSecond: 10_000 },
          pricing: { models: { [MODEL]: { input: '40.00', output: '90.00' } } },
        },
        chain: {
          rpcUrl: chain.rpcUrl,
          chainId: chain.chainId,
          usdc: chain.usdc,
          escrow: chain.escrow,
          pollIntervalMs: 50,
          settleIntervalMs: 150,
        },
        // x402 with the embedded facilitator, its key from the environment.
        x402: {},
      }),
    )
    let gateway: ClusterProcess | undefined
    const startGatewayProcess = async (): Promise<void> => {
      gateway = cluster(
        [
          'gateway',
          '--config',
          config,
          '--data-dir',
          gwDir,
          '--listen',
          `/ip4/127.0.0.1/tcp/${p2pPort}`,
          '--port',
          String(httpPort),
        ],
        { CLUSTER_GATEWAY_KEY: gatewayKey, CLUSTER_FACILITATOR_KEY: facilitatorKey },
      )
      await waitFor(
        async () =>
          ((await fetch(`${url}/health`).catch(() => undefined))?.ok === true &&
            existsSync(join(gwDir, 'peer.json'))) ||
          gateway?.exitCode != null,
        30_000,
        'the gateway',
      )
      expect(gateway.exitCode, gateway.output()).toBeNull()
      expect(gateway.output()).not.toContain(gatewayKey.slice(2))
    }
    const kill = async (): Promise<void> => {
      gateway?.kill('SIGKILL')
      if (gateway) await exited(gateway)
    }
    await startGatewayProcess()
    const gwPeer = JSON.parse(readFileSync(join(gwDir, 'peer.json'), 'utf8')) as { multiaddrs: string[] }
    cluster([
      'node',
      '--data-dir',
      join(dir.path, 'node'),
      '--listen',
      '/ip4/127.0.0.1/tcp/0',
      '--bootstrap',
      gwPeer.multiaddrs[0] as string,
      '--model',
      await tinyModelPath(),
      '--model-id',
      MODEL,
      '--threads',
      '1',
      '--gpu',
      'off',
      '--payout-address',
      payout,
    ])

    const api = async (path: string, key?: string, body?: unknown) => {
      const res = await fetch(`${url}${path}`, {
        method: body === undefined ? 'GET' : 'POST',
        headers: {
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(key ? { authorization: `Bearer ${key}` } : {}),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      })
      return { status: res.status, body: (await res.json()) as Record<string, unknown> }
    }
    const reg = await api('/api/auth/register', undefined, { email: 'restart@example.com', password: 'long enough pw' })
    expect(reg.status).toBe(201)
    const key = reg.body.apiKey as string
    const challenge = await api('/api/user/wallet/challenge', key, { address: wallet.address })
    const message = challenge.body.message as string
    expect(
      (await api('/api/user/wallet', key, { message, signature: await wallet.signMessage({ message }) })).status,
    ).toBe(201)

    // The wallet approves and authorizes once, then deposits in steps.
    const transport = http(chain.rpcUrl)
    const publicClient = createPublicClient({ chain: devChainViem(chain), transport })
    const client = createWalletClient({ chain: devChainViem(chain), transport, account: wallet })
    const send = async (hash: Hex): Promise<void> => {
      expect((await publicClient.waitForTransactionReceipt({ hash })).status).toBe('success')
    }
    await fundWallet(chain, wallet.address, { usdc: parseUnits('100', 6) })
    await send(
      await client.writeContract({
        address: chain.usdc,
        abi: testUsdcAbi,
        functionName: 'approve',
        args: [chain.escrow, maxUint256],
      }),
    )
    await send(
      await client.writeContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'authorizeGateway',
        args: [privateKeyToAccount(gatewayKey).address, maxUint256],
      }),
    )
    const balance = async (): Promise<bigint> => units((await api('/api/auth/me', key)).body.balance as string)
    let deposited = 0n
    for (let i = 1; i <= 12; i++) {
      const amount = BigInt(i) * 100_000n
      await send(
        await client.writeContract({
          address: chain.escrow,
          abi: clusterEscrowAbi,
          functionName: 'deposit',
          args: [amount],
        }),
      )
      deposited += amount
      // Killed right after a deposit lands (maybe while crediting it); deposits go on while it is down.
      if (i === 3 || i === 8) await kill()
      if (i === 5 || i === 10) await startGatewayProcess()
    }
    await waitFor(async () => (await balance()) === deposited, 20_000, 'every deposit credited')
    const listed = (await api('/api/user/transactions?limit=100', key)).body.transactions as Array<{ type: string }>
    expect(listed.filter((t) => t.type === 'deposit')).toHaveLength(12)

    // Calls, with settlement every 150 ms, and kills in the middle of it.
    await waitFor(
      async () => ((await api('/v1/models', key)).body.data as unknown[] | undefined)?.length === 1,
      20_000,
      'the node',
    )
    const call = async (): Promise<void> => {
      const r = await api('/v1/chat/completions', key, {
        model: MODEL,
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 4,
      })
      expect(r.status, JSON.stringify(r.body)).toBe(200)
    }
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 4; i++) await call()
      await new Promise((r) => setTimeout(r, 60 + round * 70))
      await kill()
      await startGatewayProcess()
      await waitFor(
        async () => ((await api('/v1/models', key)).body.data as unknown[] | undefined)?.length === 1,
        20_000,
        'the node back in the directory',
      )
    }
    const usage = async () =>
      (
        (await api('/api/user/transactions?limit=100', key)).body.transactions as Array<{
          type: string
          amount: string
          settlementTxHash?: string
        }>
      ).filter((t) => t.type === 'usage')
    await waitFor(
      async () => (await usage()).every((t) => t.settlementTxHash != null),
      30_000,
      'every call settled on chain',
    )
    const rows = await usage()
    expect(rows).toHaveLength(12)
    const charged = rows.reduce((s, t) => s - units(t.amount), 0n)
    const earned = await publicClient.readContract({
      address: chain.escrow,
      abi: clusterEscrowAbi,
      functionName: 'earnings',
      args: [payout],
    })
    expect(earned).toBe(charged)
    const escrowBalance = await publicClient.readContract({
      address: chain.escrow,
      abi: clusterEscrowAbi,
      functionName: 'balanceOf',
      args: [wallet.address],
    })
    expect(escrowBalance).toBe(deposited - charged)
    expect(await balance()).toBe(deposited - charged)

    // The same process, configured from the file, takes x402 payments too.
    const x402Payer = privateKeyToAccount((accounts[8] as { privateKey: Hex }).privateKey)
    await fundWallet(chain, x402Payer.address, { usdc: 10_000n })
    const network = `eip155:${chain.chainId}` as const
    const pay = wrapFetchWithPayment(
      fetch,
      new x402Client()
        .register(network, new ExactEvmScheme(x402Payer))
        .setSpendControls({ allowedAssets: [{ network, asset: chain.usdc }] }),
    )
    const paid = await pay(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
    })
    expect(paid.status).toBe(200)
    expect(
      await publicClient.readContract({
        address: chain.usdc,
        abi: testUsdcAbi,
        functionName: 'balanceOf',
        args: [x402Payer.address],
      }),
    ).toBe(7_000n)
  }, 180_000)
})
