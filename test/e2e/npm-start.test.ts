// `npm start`, run as a user would: it comes up, writes dev.json, answers a chat request with the
// demo model, and stops everything cleanly within 5 s of Ctrl-C (SIGINT to its process group).
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { ExactEvmScheme } from '@x402/evm/exact/client'
import { wrapFetchWithPayment, x402Client } from '@x402/fetch'
import OpenAI from 'openai'
import { type Address, createPublicClient, createWalletClient, type Hex, http, parseUnits } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { foundry } from 'viem/chains'
import { afterAll, describe, expect, it } from 'vitest'
import { clusterEscrowAbi, testUsdcAbi } from '../../src/chain/artifacts.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

interface DevJson {
  gatewayUrl: string
  adminApiKey: string
  demoApiKey: string
  models: string[]
  peers: Array<{ role: string; peerId: string; multiaddrs: string[] }>
  chain: {
    rpcUrl: string
    chainId: number
    usdc: Address
    escrow: Address
    demoWalletAddress: Address
    demoWalletPrivateKey: Hex
  }
  x402: { network: `eip155:${number}`; asset: Address; payTo: Address; payerPrivateKey: Hex }
}

const exited = (child: ChildProcess): Promise<number | null> =>
  child.exitCode != null ? Promise.resolve(child.exitCode) : new Promise((r) => child.once('exit', (code) => r(code)))

describe('npm start', () => {
  let child: ChildProcess | undefined
  let cleanup: (() => Promise<void>) | undefined

  afterAll(async () => {
    if (child?.pid != null && child.exitCode == null && child.signalCode == null) {
      try {
        process.kill(-child.pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    await cleanup?.()
  })

  it('serves a chat completion from the demo model and stops on Ctrl-C within 5 s', async () => {
    const dir = await tempDir('npm-start')
    cleanup = dir.remove
    let output = ''
    child = spawn('npm', ['start', '--silent'], {
      cwd: join(import.meta.dirname, '..', '..'),
      env: { ...process.env, PORT: '0', CLUSTER_DATA_DIR: dir.path },
      detached: true, // its own process group, like a terminal's foreground job
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    child.stdout?.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.stderr?.on('data', (d: Buffer) => {
      output += d.toString()
    })
    const devJson = join(dir.path, 'dev.json')
    await waitFor(() => existsSync(devJson) || child?.exitCode != null, 60_000, 'dev.json')
    expect(child.exitCode, output).toBeNull()
    const dev = JSON.parse(readFileSync(devJson, 'utf8')) as DevJson
    expect(dev.gatewayUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    expect(dev.peers.map((p) => p.role).sort()).toEqual(['gateway', 'node'])
    for (const p of dev.peers) expect(p.multiaddrs.every((a) => a.startsWith('/ip4/127.0.0.1/'))).toBe(true)
    // dev.json is written just before the banner is printed: give the pipe a moment.
    await waitFor(() => output.includes(`curl ${dev.gatewayUrl}/v1/chat/completions`), 5_000, 'the printed curl')

    const health = (await (await fetch(`${dev.gatewayUrl}/health`)).json()) as { status: string; uptime: number }
    expect(health.status).toBe('ok')
    expect(Number.isInteger(health.uptime)).toBe(true)

    // The demo model went through the Models API: in the registry with a CID, deployed on the node.
    const listed = (await (await fetch(`${dev.gatewayUrl}/api/models/public`)).json()) as {
      models: Array<{ id: string; cid: string; deployments: Array<{ nodeId: string; state: string }> }>
    }
    const nodeId = dev.peers.find((p) => p.role === 'node')?.peerId
    expect(listed.models).toEqual([
      expect.objectContaining({
        id: dev.models[0],
        deployments: [expect.objectContaining({ nodeId, state: 'ready' })],
      }),
    ])
    expect(listed.models[0]?.cid).toMatch(/^baf[ky]/)

    expect(dev.adminApiKey).toMatch(/^sk-cluster-/)
    // Keys live in dev.json and admin.key (the owner's only), never in the output.
    expect(statSync(devJson).mode & 0o777).toBe(0o600)
    expect(output).not.toContain(dev.adminApiKey)
    expect(output).not.toContain(dev.demoApiKey)
    expect(dev.demoApiKey).toMatch(/^sk-cluster-/)
    const me = await fetch(`${dev.gatewayUrl}/api/auth/me`, { headers: { authorization: `Bearer ${dev.demoApiKey}` } })
    expect(((await me.json()) as { balance: string }).balance).toBe('5.00')
    const client = new OpenAI({ baseURL: `${dev.gatewayUrl}/v1`, apiKey: dev.demoApiKey, maxRetries: 0 })
    const model = dev.models[0] as string
    const res = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Hello!' }],
      max_tokens: 8,
      temperature: 0,
      seed: 5,
    })
    expect(res.choices[0]?.message.content?.length).toBeGreaterThan(0)
    expect(res.usage?.completion_tokens).toBeGreaterThan(0)
    // The call was charged to the demo user.
    const after = await fetch(`${dev.gatewayUrl}/api/user/stats`, {
      headers: { authorization: `Bearer ${dev.demoApiKey}` },
    })
    const stats = (await after.json()) as { totalCalls: number; totalSpent: string }
    expect(stats.totalCalls).toBe(1)
    expect(stats.totalSpent).not.toBe('0.00')

    // The demo wallet in dev.json deposits on the local chain: approve, then deposit(uint256).
    expect(dev.chain.rpcUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    expect(output).not.toContain(dev.chain.demoWalletPrivateKey)
    const account = privateKeyToAccount(dev.chain.demoWalletPrivateKey)
    expect(account.address).toBe(dev.chain.demoWalletAddress)
    const transport = http(dev.chain.rpcUrl)
    const chain = { ...foundry, id: dev.chain.chainId }
    const publicClient = createPublicClient({ chain, transport })
    const wallet = createWalletClient({ chain, transport, account })
    const spendable = async (): Promise<string> => {
      const r = await fetch(`${dev.gatewayUrl}/api/auth/me`, { headers: { authorization: `Bearer ${dev.demoApiKey}` } })
      return ((await r.json()) as { balance: string }).balance
    }
    const before = await spendable()
    const amount = parseUnits('1.5', 6)
    for (const hash of [
      await wallet.writeContract({
        address: dev.chain.usdc,
        abi: testUsdcAbi,
        functionName: 'approve',
        args: [dev.chain.escrow, amount],
      }),
      await wallet.writeContract({
        address: dev.chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'deposit',
        args: [amount],
      }),
    ]) {
      expect((await publicClient.waitForTransactionReceipt({ hash })).status).toBe('success')
    }
    const expected = (Number(before) + 1.5).toFixed(6)
    await waitFor(async () => Number(await spendable()).toFixed(6) === expected, 10_000, 'the deposit credited')

    // No account: the x402 payer from dev.json pays per request with the official client.
    expect(output).not.toContain(dev.x402.payerPrivateKey)
    const payer = privateKeyToAccount(dev.x402.payerPrivateKey)
    const pay = wrapFetchWithPayment(
      fetch,
      new x402Client()
        .register(dev.x402.network, new ExactEvmScheme(payer))
        .setSpendControls({ allowedAssets: [{ network: dev.x402.network, asset: dev.x402.asset }] }),
    )
    const usdc = (who: Address) =>
      publicClient.readContract({ address: dev.x402.asset, abi: testUsdcAbi, functionName: 'balanceOf', args: [who] })
    const paid = await usdc(payer.address)
    const unpaid = await fetch(`${dev.gatewayUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: dev.models[0], messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4 }),
    })
    expect(unpaid.status).toBe(402)
    expect(unpaid.headers.get('payment-required')).toBeTruthy()
    const x402Res = await pay(`${dev.gatewayUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: dev.models[0], messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4 }),
    })
    expect(x402Res.status).toBe(200)
    expect(paid - (await usdc(payer.address))).toBe(3000n)

    const t0 = Date.now()
    process.kill(-(child.pid as number), 'SIGINT')
    await Promise.race([exited(child), new Promise((r) => setTimeout(r, 6_000))])
    expect(child.exitCode ?? child.signalCode, output).not.toBeNull()
    expect(Date.now() - t0).toBeLessThan(5_000)
    // Nothing is left listening.
    await expect(fetch(`${dev.gatewayUrl}/health`)).rejects.toThrow()

    // Started again on the same data: the demo model is not uploaded again, and is served again.
    rmSync(devJson)
    child = spawn('npm', ['start', '--silent'], {
      cwd: join(import.meta.dirname, '..', '..'),
      env: { ...process.env, PORT: '0', CLUSTER_DATA_DIR: dir.path },
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    child.stdout?.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.stderr?.on('data', (d: Buffer) => {
      output += d.toString()
    })
    await waitFor(() => existsSync(devJson) || child?.exitCode != null, 60_000, 'dev.json again')
    expect(child.exitCode, output).toBeNull()
    const again = JSON.parse(readFileSync(devJson, 'utf8')) as DevJson
    const versions = (await (await fetch(`${again.gatewayUrl}/api/models/${again.models[0]}/versions`)).json()) as {
      versions: unknown[]
    }
    expect(versions.versions).toHaveLength(1)
    const second = new OpenAI({ baseURL: `${again.gatewayUrl}/v1`, apiKey: again.demoApiKey, maxRetries: 0 })
    const answer = await second.chat.completions.create({
      model: again.models[0] as string,
      messages: [{ role: 'user', content: 'Hello again' }],
      max_tokens: 4,
    })
    expect(answer.usage?.completion_tokens).toBeGreaterThan(0)
    process.kill(-(child.pid as number), 'SIGINT')
    await Promise.race([exited(child), new Promise((r) => setTimeout(r, 6_000))])
    expect(child.exitCode ?? child.signalCode, output).not.toBeNull()
  })
})
