// Money on a real chain, end to end: anvil with the escrow and test USDC, a gateway settling on it, a
// real node with a payout address, users' wallets linked by signature. Deposits (direct and gasless)
// become balances, calls are paid to the node on chain backed by its signed receipts, the node claims
// exactly what it earned, withdrawals thaw, and receipts or batches that do not check out are refused.
import { generateKeyPair } from '@libp2p/crypto/keys'
import OpenAI from 'openai'
import {
  type Address,
  createPublicClient,
  createTestClient,
  createWalletClient,
  type Hex,
  http,
  keccak256,
  maxUint256,
  parseUnits,
  toHex,
} from 'viem'
import { type PrivateKeyAccount, privateKeyToAccount } from 'viem/accounts'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { HeartbeatPublisher } from '../../node/heartbeat.ts'
import type { RunningNode } from '../../node/node.ts'
import {
  type Capabilities,
  decodeFrames,
  encodeOwnFrame,
  INFERENCE_PROTOCOL,
  InferenceRequestFrameSchema,
  type InferenceResponseFrame,
  type Receipt,
} from '../../protocols/index.ts'
import { clusterEscrowAbi, testUsdcAbi } from '../../src/chain/artifacts.ts'
import { type DevChain, devChainViem, fundWallet, startDevChain, testAccounts } from '../../src/chain/devchain.ts'
import { signAuthorizeGateway, signGaslessDeposit, signRequestWithdraw } from '../../src/chain/typed-data.ts'
import { GossipBus } from '../../src/mesh/gossip.ts'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { signReceipt } from '../../src/mesh/receipts.ts'
import { serveCapabilities } from '../../src/mesh/streams.ts'
import { parseUsd } from '../../src/payments/money.ts'
import { startTinyNode, tempDir, waitFor } from '../helpers/fixtures.ts'
import { cluster, exited, killAll } from '../helpers/processes.ts'

const MODEL = 'tiny-chain'
const ROGUE_MODEL = 'rogue-model'
const THAW = 600n
const accounts = testAccounts()
const gatewayKey = (accounts[1] as { privateKey: Hex }).privateKey
const payout = accounts[3] as { address: Address; privateKey: Hex }
const walletA = privateKeyToAccount((accounts[4] as { privateKey: Hex }).privateKey)
const walletB = privateKeyToAccount((accounts[5] as { privateKey: Hex }).privateKey)

interface Tx {
  type: string
  amount: string
  requestId?: string
  txHash?: string
  settlementTxHash?: string
}

const units = (dollars: string): bigint => (dollars.startsWith('-') ? -parseUsd(dollars.slice(1)) : parseUsd(dollars))

describe('USDC escrow on a real chain', () => {
  let chain: DevChain
  let gw: RunningGateway
  let node: RunningNode
  let rogue: { peer: MeshPeer; stop: () => Promise<void>; mode: 'forged' | 'altered' | 'replayed' | 'honest' }
  const cleanups: Array<() => Promise<void>> = []
  let publicClient: ReturnType<typeof createPublicClient>
  let testClient: ReturnType<typeof createTestClient>
  const keys: Record<string, string> = {}

  const api = async (
    path: string,
    init: { key?: string; body?: unknown; method?: string } = {},
  ): Promise<{ status: number; body: Record<string, unknown> }> => {
    const res = await fetch(`${gw.url}${path}`, {
      method: init.method ?? (init.body !== undefined ? 'POST' : 'GET'),
      headers: {
        ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(init.key ? { authorization: `Bearer ${init.key}` } : {}),
      },
      ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
    })
    const text = await res.text()
    return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} }
  }

  const balance = async (key: string): Promise<string> => (await api('/api/auth/me', { key })).body.balance as string

  const transactions = async (key: string): Promise<Tx[]> =>
    (await api('/api/user/transactions?limit=100', { key })).body.transactions as Tx[]

  const walletClient = (account: PrivateKeyAccount) =>
    createWalletClient({ chain: devChainViem(chain), transport: http(chain.rpcUrl), account })

  const mined = async (hash: Hex): Promise<void> => {
    const receipt = await publicClient.waitForTransactionReceipt({ hash })
    expect(receipt.status).toBe('success')
  }

  const usdcOf = (address: Address): Promise<bigint> =>
    publicClient.readContract({ address: chain.usdc, abi: testUsdcAbi, functionName: 'balanceOf', args: [address] })

  const earnings = (address: Address): Promise<bigint> =>
    publicClient.readContract({
      address: chain.escrow,
      abi: clusterEscrowAbi,
      functionName: 'earnings',
      args: [address],
    })

  const link = async (key: string, wallet: PrivateKeyAccount): Promise<void> => {
    const challenge = await api('/api/user/wallet/challenge', { key, body: { address: wallet.address } })
    expect(challenge.status, JSON.stringify(challenge.body)).toBe(200)
    const message = challenge.body.message as string
    expect(message).toContain(wallet.address)
    const signature = await wallet.signMessage({ message })
    const linked = await api('/api/user/wallet', { key, body: { message, signature } })
    expect(linked.status, JSON.stringify(linked.body)).toBe(201)
    expect(linked.body.address).toBe(wallet.address)
  }

  const authorize = async (key: string, wallet: PrivateKeyAccount): Promise<void> => {
    const deadline = BigInt(Math.floor(Date.now() / 1000) + 3600)
    const nonce = await publicClient.readContract({
      address: chain.escrow,
      abi: clusterEscrowAbi,
      functionName: 'nonces',
      args: [wallet.address],
    })
    const signature = await signAuthorizeGateway(wallet, chain, {
      gateway: privateKeyToAccount(gatewayKey).address,
      cap: maxUint256,
      nonce,
      deadline,
    })
    const r = await api('/api/user/wallet/authorize', {
      key,
      body: { address: wallet.address, cap: 'unlimited', deadline: Number(deadline), signature },
    })
    expect(r.status, JSON.stringify(r.body)).toBe(200)
  }

  const chat = async (key: string, model = MODEL, stream = false): Promise<void> => {
    const client = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1` })
    if (stream) {
      const s = await client.chat.completions.create({
        model,
        messages: [{ role: 'user', content: 'count' }],
        max_tokens: 6,
        stream: true,
      })
      for await (const _ of s) {
        // read it all
      }
    } else {
      const r = await client.chat.completions.create({
        model,
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 6,
      })
      expect(r.choices[0]?.message.role).toBe('assistant')
    }
  }

  beforeAll(async () => {
    chain = await startDevChain({ thawPeriod: THAW })
    cleanups.push(() => chain.stop())
    const transport = http(chain.rpcUrl)
    publicClient = createPublicClient({ chain: devChainViem(chain), transport })
    testClient = createTestClient({ chain: devChainViem(chain), transport, mode: 'anvil' })
    const dir = await tempDir('cluster-chain-')
    cleanups.push(dir.remove)
    gw = await startGateway({
      dataDir: `${dir.path}/gateway`,
      port: 0,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      pricing: {
        models: { [MODEL]: { input: '2.00', output: '6.00' }, [ROGUE_MODEL]: { input: '2.00', output: '6.00' } },
      },
      log: () => undefined,
      chain: {
        rpcUrl: chain.rpcUrl,
        chainId: chain.chainId,
        usdc: chain.usdc,
        escrow: chain.escrow,
        signerKey: gatewayKey,
        confirmations: 0,
        pollIntervalMs: 100,
        // Settlement is run by the tests, at the points they check.
        settleIntervalMs: 3_600_000,
      },
    })
    cleanups.unshift(() => gw.stop())
    node = await startTinyNode({
      dataDir: `${dir.path}/node`,
      bootstrap: gw.multiaddrs(),
      model: MODEL,
      payoutAddress: payout.address,
    })
    cleanups.unshift(() => node.stop())
    rogue = await startRogueNode(`${dir.path}/rogue`, gw.multiaddrs())
    cleanups.unshift(() => rogue.stop())
    await waitFor(
      () =>
        gw.directory.get(node.peerId)?.capabilities?.payoutAddress === payout.address &&
        gw.directory.nodesServing(ROGUE_MODEL).length > 0,
      15_000,
      'the node and its payout address in the directory',
    )
    for (const name of ['alice', 'bob']) {
      const r = await api('/api/auth/register', { body: { email: `${name}@example.com`, password: 'long enough pw' } })
      expect(r.status).toBe(201)
      keys[name] = r.body.apiKey as string
    }
    await fundWallet(chain, walletA.address, { usdc: parseUnits('20', 6) })
    await fundWallet(chain, walletB.address, { usdc: parseUnits('20', 6) })
  }, 120_000)

  afterAll(async () => {
    await killAll()
    for (const c of cleanups) await c().catch(() => undefined)
  })

  it('links wallets by signature; a message for another account, a reused nonce or a wrong signer are refused', async () => {
    const alice = keys.alice as string
    const bob = keys.bob as string
    // Signed by another wallet than the one named: refused.
    const c1 = await api('/api/user/wallet/challenge', { key: alice, body: { address: walletA.address } })
    const bad = await api('/api/user/wallet', {
      key: alice,
      body: { message: c1.body.message, signature: await walletB.signMessage({ message: c1.body.message as string }) },
    })
    expect(bad.status).toBe(401)
    // That nonce is spent now, even with the right signature.
    const reused = await api('/api/user/wallet', {
      key: alice,
      body: { message: c1.body.message, signature: await walletA.signMessage({ message: c1.body.message as string }) },
    })
    expect(reused.status).toBe(401)
    expect(reused.body.error).toMatch(/nonce/)
    // Issued to alice, presented by bob: refused.
    const c2 = await api('/api/user/wallet/challenge', { key: alice, body: { address: walletA.address } })
    const stolen = await api('/api/user/wallet', {
      key: bob,
      body: { message: c2.body.message, signature: await walletA.signMessage({ message: c2.body.message as string }) },
    })
    expect(stolen.status).toBe(401)
    expect((await api('/api/user/wallet', { key: alice })).body.wallets).toEqual([])

    await link(alice, walletA)
    await link(bob, walletB)
    // A wallet belongs to one account.
    const taken = await api('/api/user/wallet/challenge', { key: bob, body: { address: walletA.address } })
    expect(taken.status).toBe(409)
    expect(taken.body.code).toBe('CONFLICT')
    const listed = (await api('/api/user/wallet', { key: alice })).body.wallets as Array<{ address: string }>
    expect(listed.map((w) => w.address)).toEqual([walletA.address])
    // Bad input: a clear 400, no 500.
    const junk = await api('/api/user/wallet/challenge', { key: alice, body: { address: '0x1234' } })
    expect(junk.status).toBe(400)
    expect(junk.body.code).toBe('INVALID_REQUEST')
  })

  it('a direct deposit (approve + deposit) and a gasless one relayed by the gateway each show up as 5.00', async () => {
    const alice = keys.alice as string
    const bob = keys.bob as string
    const five = parseUnits('5', 6)
    const a = walletClient(walletA)
    await mined(
      await a.writeContract({
        address: chain.usdc,
        abi: testUsdcAbi,
        functionName: 'approve',
        args: [chain.escrow, five],
      }),
    )
    await mined(
      await a.writeContract({ address: chain.escrow, abi: clusterEscrowAbi, functionName: 'deposit', args: [five] }),
    )
    await waitFor(async () => (await balance(alice)) === '5.00', 10_000, "alice's deposit credited")

    const info = (await api('/api/chain')).body as { usdcDomain: { name: string; version: string } }
    expect(info.usdcDomain).toEqual({ name: 'USD Coin', version: '2' })
    const salt = keccak256(toHex('bob deposit 1'))
    const validBefore = BigInt(Math.floor(Date.now() / 1000) + 3600)
    const signature = await signGaslessDeposit(
      walletB,
      { ...chain, usdcDomain: info.usdcDomain },
      { beneficiary: walletB.address, value: five, validAfter: 0n, validBefore, salt },
    )
    const bobEthBefore = await publicClient.getBalance({ address: walletB.address })
    const body = {
      from: walletB.address,
      value: five.toString(),
      validAfter: 0,
      validBefore: Number(validBefore),
      salt,
      signature,
    }
    const r = await api('/api/user/deposit', { key: bob, body })
    expect(r.status, JSON.stringify(r.body)).toBe(200)
    expect(r.body.status).toBe('credited')
    expect(await balance(bob)).toBe('5.00')
    // Gasless: bob's wallet paid no gas.
    expect(await publicClient.getBalance({ address: walletB.address })).toBe(bobEthBefore)
    // The same authorization again: refused by the token (nonce used), nothing credited twice.
    const again = await api('/api/user/deposit', { key: bob, body })
    expect(again.status).toBe(400)
    expect(again.body.code).toBe('CHAIN_REFUSED')
    expect(await balance(bob)).toBe('5.00')
    // Deposits are listed with their tx hash.
    const deposits = (await transactions(bob)).filter((t) => t.type === 'deposit')
    expect(deposits).toHaveLength(1)
    expect(deposits[0]?.txHash).toBe(r.body.txHash)
    expect((await transactions(alice)).filter((t) => t.type === 'deposit')[0]?.txHash).toMatch(/^0x[0-9a-f]{64}$/)
  })

  it('calls are settled on chain to the node, which claims exactly the sum of its receipts', async () => {
    const alice = keys.alice as string
    const bob = keys.bob as string
    await authorize(alice, walletA)
    await authorize(bob, walletB)
    for (const [i, key] of [alice, bob, alice, bob, alice].entries()) await chat(key, MODEL, i % 2 === 1)
    const usage = [...(await transactions(alice)), ...(await transactions(bob))].filter((t) => t.type === 'usage')
    expect(usage).toHaveLength(5)
    const charged = usage.reduce((s, t) => s - units(t.amount), 0n)
    expect(charged).toBeGreaterThan(0n)

    const before = await earnings(payout.address)
    const result = await gw.chain?.settler.run()
    expect(result?.settled.length).toBeGreaterThan(0)
    expect(result?.failed).toEqual([])
    expect((await earnings(payout.address)) - before).toBe(charged)
    // Every usage row names the transaction that settled it.
    for (const t of [...(await transactions(alice)), ...(await transactions(bob))].filter((x) => x.type === 'usage')) {
      expect(t.settlementTxHash).toMatch(/^0x[0-9a-f]{64}$/)
    }
    // The escrow balances went down by what each was charged; the ledger agrees.
    for (const [key, wallet] of [
      [alice, walletA],
      [bob, walletB],
    ] as const) {
      const onChain = await publicClient.readContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'balanceOf',
        args: [wallet.address],
      })
      expect(onChain).toBe(units(await balance(key)))
    }
    // Nothing left to settle: a second run pays nothing more.
    await gw.chain?.settler.run()
    expect((await earnings(payout.address)) - before).toBe(charged)

    // The node operator claims with `cluster earnings --claim`.
    const claimable = await earnings(payout.address)
    const usdcBefore = await usdcOf(payout.address)
    const cli = cluster(['earnings', '--claim', '--rpc-url', chain.rpcUrl, '--escrow', chain.escrow], {
      CLUSTER_PAYOUT_KEY: payout.privateKey,
    })
    await exited(cli)
    expect(cli.exitCode, cli.output()).toBe(0)
    expect(cli.stdoutText()).toContain('claimed')
    expect(cli.output()).not.toContain(payout.privateKey.slice(2))
    expect((await usdcOf(payout.address)) - usdcBefore).toBe(claimable)
    expect(await earnings(payout.address)).toBe(0n)
  }, 60_000)

  it('forged, altered and replayed receipts are refused: the call is not charged and the node is not paid', async () => {
    const alice = keys.alice as string
    rogue.mode = 'honest'
    const before = units(await balance(alice))
    await chat(alice, ROGUE_MODEL)
    const honest = units(await balance(alice))
    // The rogue peer's honest receipt is accepted: charged, and a payout waits.
    expect(honest).toBeLessThan(before)
    expect(gw.ledger.pendingPayouts(100).filter((p) => p.node === rogue.peer.peerId.toString())).toHaveLength(1)
    for (const mode of ['forged', 'altered', 'replayed'] as const) {
      rogue.mode = mode
      await chat(alice, ROGUE_MODEL)
      expect(units(await balance(alice)), mode).toBe(honest)
    }
    expect(gw.ledger.pendingPayouts(100).filter((p) => p.node === rogue.peer.peerId.toString())).toHaveLength(1)
    // Settle it (to the gateway's payout address: the rogue node gave none), leaving nothing open.
    await gw.chain?.settler.run()
  })

  it('bad input on the chain routes: a clear 4xx in the docs shape, never a 500, nothing moved', async () => {
    const alice = keys.alice as string
    const before = await balance(alice)
    const cases: Array<[string, unknown, number, string]> = [
      ['/api/user/deposit', {}, 400, 'INVALID_REQUEST'],
      [
        '/api/user/deposit',
        { from: walletA.address, value: '-5', validAfter: 0, validBefore: 1, salt: '0x00', signature: '0x00' },
        400,
        'INVALID_REQUEST',
      ],
      // A real signature, over something else: the token refuses it.
      [
        '/api/user/deposit',
        {
          from: walletA.address,
          value: '1000',
          validAfter: 0,
          validBefore: 4_000_000_000,
          salt: `0x${'11'.repeat(32)}`,
          signature: await walletA.signMessage({ message: 'not an authorization' }),
        },
        400,
        'CHAIN_REFUSED',
      ],
      // A wallet of somebody else's account.
      [
        '/api/user/deposit',
        {
          from: walletB.address,
          value: '1000',
          validAfter: 0,
          validBefore: 4_000_000_000,
          salt: `0x${'11'.repeat(32)}`,
          signature: `0x${'22'.repeat(65)}`,
        },
        400,
        'INVALID_REQUEST',
      ],
      [
        '/api/user/withdraw',
        { address: walletA.address, amount: '1', deadline: 1, signature: `0x${'33'.repeat(65)}` },
        400,
        'CHAIN_REFUSED',
      ],
      [
        '/api/user/withdraw',
        { address: walletA.address, amount: '0', deadline: 1, signature: `0x${'33'.repeat(65)}` },
        400,
        'INVALID_REQUEST',
      ],
      [
        '/api/user/wallet/authorize',
        { address: walletA.address, cap: '1.5', deadline: 1, signature: '0x' },
        400,
        'INVALID_REQUEST',
      ],
      ['/api/user/wallet', { message: 'hello', signature: `0x${'44'.repeat(65)}` }, 401, 'BAD_SIGNATURE'],
    ]
    for (const [path, body, status, code] of cases) {
      const r = await api(path, { key: alice, body })
      expect([path, r.status, r.body.code], JSON.stringify(body)).toEqual([path, status, code])
      expect(typeof r.body.error).toBe('string')
    }
    const anonymous = await api('/api/user/deposit', { body: {} })
    expect(anonymous.status).toBe(401)
    expect((await api('/api/user/wallet/0xnope', { key: alice, method: 'DELETE' })).status).toBe(400)
    expect(await balance(alice)).toBe(before)
  })

  it('a settled batch cannot be replayed, on chain or in the ledger', async () => {
    const [batch] = gw.ledger.batches('settled')
    if (batch == null) throw new Error('no settled batch')
    const gatewayWallet = walletClient(privateKeyToAccount(gatewayKey))
    await expect(
      gatewayWallet.writeContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'settle',
        args: [
          batch.batchId as Hex,
          batch.debits.map((d) => ({ payer: d.payer as Address, amount: d.amount })),
          batch.credits.map((c) => ({ payee: (c.payee || payout.address) as Address, amount: c.amount })),
        ],
      }),
    ).rejects.toThrow(/BatchAlreadySettled/)
    await expect(gw.ledger.settleBatch(batch.id, '0x00')).rejects.toThrow(/settled/)
  })

  it('withdraw: the gateway relays the signed request, too early reverts, after the thaw the unspent amount returns', async () => {
    const alice = keys.alice as string
    // A call made before the request: still settled, from the thawing amount if need be.
    await chat(alice, MODEL)
    const unspent = units(await balance(alice))
    const wallet = (await api('/api/user/wallet', { key: alice })).body.wallets as Array<{ nonce: string }>
    const deadline = BigInt(Math.floor(Date.now() / 1000) + 3600)
    const signature = await signRequestWithdraw(walletA, chain, {
      amount: unspent,
      nonce: BigInt(wallet[0]?.nonce ?? '0'),
      deadline,
    })
    // More than is unspent: refused before anything is sent.
    const greedy = await api('/api/user/withdraw', {
      key: alice,
      body: { address: walletA.address, amount: (unspent + 1n).toString(), deadline: Number(deadline), signature },
    })
    expect(greedy.status).toBe(400)
    const r = await api('/api/user/withdraw', {
      key: alice,
      body: { address: walletA.address, amount: unspent.toString(), deadline: Number(deadline), signature },
    })
    expect(r.status, JSON.stringify(r.body)).toBe(200)
    expect(await balance(alice)).toBe('0.00')
    // The same signature again: its nonce is used.
    const replay = await api('/api/user/withdraw', {
      key: alice,
      body: { address: walletA.address, amount: '1', deadline: Number(deadline), signature },
    })
    expect(replay.status).toBe(400)
    // Nothing left to spend.
    const broke = await api('/v1/chat/completions', {
      key: alice,
      body: { model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 },
    })
    expect(broke.status).toBe(402)

    const a = walletClient(walletA)
    await expect(
      a.writeContract({ address: chain.escrow, abi: clusterEscrowAbi, functionName: 'withdraw' }),
    ).rejects.toThrow(/ThawNotOver/)
    await testClient.increaseTime({ seconds: Number(THAW) + 1 })
    await testClient.mine({ blocks: 1 })
    const usdcBefore = await usdcOf(walletA.address)
    await mined(await a.writeContract({ address: chain.escrow, abi: clusterEscrowAbi, functionName: 'withdraw' }))
    expect((await usdcOf(walletA.address)) - usdcBefore).toBe(unspent)
    const after = await publicClient.readContract({
      address: chain.escrow,
      abi: clusterEscrowAbi,
      functionName: 'balanceOf',
      args: [walletA.address],
    })
    expect(after).toBe(0n)
    const withdrawal = (await transactions(alice)).find((t) => t.type === 'withdrawal')
    expect(withdrawal?.txHash).toBe(r.body.txHash)
  }, 60_000)

  it('a withdrawal requested on chain directly: the ledger follows, and earlier usage is still settled from the thaw', async () => {
    const bob = keys.bob as string
    await chat(bob, MODEL)
    const [lastUsage] = (await transactions(bob)).filter((t) => t.type === 'usage')
    const owed = -units(lastUsage?.amount ?? '0')
    const account = await publicClient.readContract({
      address: chain.escrow,
      abi: clusterEscrowAbi,
      functionName: 'accounts',
      args: [walletB.address],
    })
    // Bob asks for everything the chain shows as available: more than he has left to spend.
    const b = walletClient(walletB)
    await mined(
      await b.writeContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'requestWithdraw',
        args: [account.available],
      }),
    )
    await waitFor(async () => (await balance(bob)) === '0.00', 10_000, "bob's withdrawal seen by the watcher")
    const earned = await earnings(payout.address)
    const result = await gw.chain?.settler.run()
    expect(result?.failed).toEqual([])
    expect((await earnings(payout.address)) - earned).toBe(owed)
    await testClient.increaseTime({ seconds: Number(THAW) + 1 })
    await testClient.mine({ blocks: 1 })
    const usdcBefore = await usdcOf(walletB.address)
    await mined(await b.writeContract({ address: chain.escrow, abi: clusterEscrowAbi, functionName: 'withdraw' }))
    expect((await usdcOf(walletB.address)) - usdcBefore).toBe(account.available - owed)
  }, 60_000)
})

/**
 * A peer that serves ROGUE_MODEL by the protocol, but whose receipts can be made dishonest: signed
 * by another key (forged), for other token counts than it reports (altered), or a receipt of an
 * earlier request sent again (replayed).
 */
async function startRogueNode(dataDir: string, bootstrap: string[]) {
  const peer = await createMeshPeer({ dataDir, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap })
  const peerId = peer.peerId.toString()
  const ownKey = (await import('../../src/mesh/peer-key.ts')).loadOrCreatePeerKey(dataDir)
  const otherKey = await generateKeyPair('Ed25519')
  const bus = new GossipBus(peer.services.pubsub)
  const caps = (): Capabilities => ({
    v: 1,
    peerId,
    incarnation: 1,
    version: 1,
    models: [{ id: ROGUE_MODEL, contextSize: 512, state: 'ready', tasks: ['chat'] }],
    hardware: { cpu: { model: 'rogue', cores: 1 }, ramBytes: 1, gpus: [] },
    prices: [],
    payoutAddress: '',
    software: { name: 'rogue', version: '0' },
  })
  await serveCapabilities(peer, caps)
  let last: Receipt | undefined
  const state = {
    peer,
    mode: 'honest' as 'forged' | 'altered' | 'replayed' | 'honest',
    stop: async () => {
      await heartbeat.stop()
      bus.close()
      await peer.stop()
    },
  }
  await peer.handle(INFERENCE_PROTOCOL, async (stream, connection) => {
    const frames = decodeFrames(stream, InferenceRequestFrameSchema)
    const first = await frames.next()
    if (first.done) return
    const request = first.value
    const usage = { promptTokens: 5, completionTokens: 2 }
    const genuine = await signReceipt(state.mode === 'forged' ? otherKey : await ownKey, {
      v: 1,
      requestId: request.id,
      model: request.model,
      modelSha256: '',
      promptTokens: usage.promptTokens,
      completionTokens: state.mode === 'altered' ? 20 : usage.completionTokens,
      gateway: connection.remotePeer.toString(),
      node: peerId,
      issuedAt: Date.now(),
    })
    const receipt = state.mode === 'replayed' && last != null ? last : genuine
    if (state.mode === 'honest') last = genuine
    const send = (f: InferenceResponseFrame): void => {
      stream.send(encodeOwnFrame<InferenceResponseFrame>(f))
    }
    send({ type: 'delta', text: 'ok', tokens: 2, promptTokens: 5 })
    send({ type: 'done', finishReason: 'stop', usage, receipt })
    await stream.close()
  })
  const heartbeat = new HeartbeatPublisher({
    bus,
    peerId,
    incarnation: 1,
    intervalMs: 200,
    load: () => ({ active: 0, queued: 0, slots: 1, maxQueue: 1 }),
    readyModels: () => [ROGUE_MODEL],
    capabilities: caps,
  })
  heartbeat.start()
  return state
}
