// The settler on a real chain (anvil on 127.0.0.1 with the escrow deployed): usage charged in the
// gateway's ledger goes on chain in batches, paid from the payers' escrow balances to the nodes'
// earnings, exactly once — also when the gateway crashed before sending a batch or after sending it
// but before recording it — and only what payers' balances and caps cover.
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import {
  type Address,
  createPublicClient,
  createTestClient,
  createWalletClient,
  getAbiItem,
  type Hex,
  http,
  parseEventLogs,
  toFunctionSelector,
} from 'viem'
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from 'viem/accounts'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { clusterEscrowAbi } from '../../src/chain/artifacts.ts'
import { type DevChain, devChainViem, startDevChain, testAccounts } from '../../src/chain/devchain.ts'
import { CallRefusedError, EscrowClient } from '../../src/chain/escrow.ts'
import { Settler, type SettlerOptions } from '../../src/chain/settler.ts'
import { signAuthorizeGateway } from '../../src/chain/typed-data.ts'
import type { Account, SettlementBatch, Transaction } from '../../src/ledger/ledger.ts'
import { LevelLedger } from '../../src/ledger/level-ledger.ts'
import { escrowActor } from '../helpers/chain.ts'
import { tempDir } from '../helpers/fixtures.ts'

const UNLIMITED = 2n ** 256n - 1n

let chain: DevChain
let client: EscrowClient
const gatewayKey = () => testAccounts()[1]!.privateKey
const cleanup: Array<() => Promise<void>> = []

beforeAll(async () => {
  chain = await startDevChain()
  client = new EscrowClient(
    { rpcUrl: chain.rpcUrl, chainId: chain.chainId, usdc: chain.usdc, escrow: chain.escrow },
    gatewayKey(),
  )
})

afterAll(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn().catch(() => undefined)
  await chain?.stop()
})

const viemChain = () => devChainViem(chain)
const publicClient = () =>
  createPublicClient({ chain: viemChain(), transport: http(chain.rpcUrl), pollingInterval: 20 })

const testClient = () => createTestClient({ chain: viemChain(), transport: http(chain.rpcUrl), mode: 'anvil' })

/**
 * A JSON-RPC relay on 127.0.0.1 in front of anvil that runs `before(request)` ahead of forwarding
 * each request: a way to make something happen on the chain at an exact point of a client's work.
 */
async function rpcRelay(before: (request: { method: string; params?: unknown[] }) => Promise<void>) {
  const server = createServer((req, res) => {
    const parts: Buffer[] = []
    req.on('data', (part: Buffer) => parts.push(part))
    req.on('end', () => {
      const body = Buffer.concat(parts).toString('utf8')
      void (async () => {
        await before(JSON.parse(body))
        const upstream = await fetch(chain.rpcUrl, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body,
        })
        res.writeHead(upstream.status, { 'content-type': 'application/json' })
        res.end(await upstream.text())
      })().catch((err: unknown) => {
        res.writeHead(502)
        res.end(String(err))
      })
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return { url, close: () => new Promise<void>((resolve) => server.close(() => resolve())) }
}

const read = (functionName: 'earnings' | 'balanceOf', who: Address): Promise<bigint> =>
  publicClient().readContract({ address: chain.escrow, abi: clusterEscrowAbi, functionName, args: [who] })

const freshAddress = (): Address => privateKeyToAccount(generatePrivateKey()).address

/** A wallet acting on the escrow with its own key (a payer, or the gateway paying into its own account). */
const actor = (account: PrivateKeyAccount, usdc: bigint) =>
  escrowActor(chain, account, { usdc, gateway: client.address })

const newPayer = (usdc = 100_000_000n) => actor(privateKeyToAccount(generatePrivateKey()), usdc)

let dir: string
let ledger: LevelLedger
let user: Account
let payoutAddress: Address
let nodeAddresses: Address[]
let nextRequest = 0

async function openLedger(): Promise<LevelLedger> {
  const l = new LevelLedger(dir)
  await l.open()
  return l
}

const settler = (more: Partial<SettlerOptions> = {}) =>
  new Settler(ledger, client, { intervalMs: 60_000, payoutAddress, ...more })

/** A linked payer whose deposit the ledger has credited (as the watcher would). */
async function linkedPayer(deposit: bigint, cap: bigint | undefined, usdc = deposit) {
  const payer = await newPayer(usdc)
  await ledger.linkWallet(user.id, payer.address)
  if (deposit > 0n) {
    const receipt = await payer.deposit(deposit)
    await ledger.chainDeposit({
      address: payer.address,
      amount: deposit,
      ref: `chain:${chain.chainId}:${receipt.transactionHash}:0`,
      txHash: receipt.transactionHash,
    })
  }
  if (cap != null) await payer.authorize(cap)
  return payer
}

/** One call served by `node` and charged in full: a payout backed by a (here opaque) receipt. */
async function charge(amount: bigint, payee: string): Promise<Transaction> {
  const requestId = `req-${++nextRequest}`
  const hold = await ledger.reserve(user.id, amount, requestId)
  return ledger.settle(hold.id, amount, {
    model: 'm',
    requestId,
    tokensIn: 3,
    tokensOut: 5,
    payout: { node: `12D3KooWnode${payee.slice(-4)}`, payee, receipt: `{"requestId":"${requestId}"}` },
  })
}

async function usageRows(): Promise<Transaction[]> {
  const page = await ledger.transactions(user.id, { limit: 100 })
  return page.transactions.filter((t) => t.type === 'usage')
}

async function batchSettledLogs(txHash: string) {
  const receipt = await publicClient().getTransactionReceipt({ hash: txHash as Hex })
  return parseEventLogs({ abi: clusterEscrowAbi, logs: receipt.logs, eventName: 'BatchSettled' })
}

/** The escrow's own record of a batch, from its logs. */
async function settlementsOf(batchId: string) {
  const logs = await publicClient().getContractEvents({
    address: chain.escrow,
    abi: clusterEscrowAbi,
    eventName: 'BatchSettled',
    args: { batchId: batchId as Hex },
    fromBlock: 0n,
  })
  return logs
}

beforeEach(async () => {
  const d = await tempDir('settler')
  cleanup.push(d.remove)
  dir = d.path
  ledger = await openLedger()
  user = await ledger.createAccount({ email: 'user@example.com', role: 'user', passwordHash: '' })
  payoutAddress = freshAddress()
  nodeAddresses = [freshAddress(), freshAddress()]
})

afterEach(async () => {
  // the test's ledger, reopened or not
  await ledger.close()
})

describe('Settler on anvil', () => {
  it('settles charged usage: earnings equal the payouts, the batch id is the ledger’s, usage rows are marked', async () => {
    const [nodeA, nodeB] = nodeAddresses as [Address, Address]
    const p1 = await linkedPayer(5_000_000n, UNLIMITED)
    const p2 = await linkedPayer(3_000_000n, 2_000_000n)
    const t1 = await charge(4_000_000n, nodeA) // p1 4.0
    const t2 = await charge(1_500_000n, nodeB) // p1 1.0, p2 0.5
    const t3 = await charge(250_000n, nodeA) // p2 0.25
    expect(ledger.pendingPayouts(100).map((p) => [p.payer, p.amount])).toEqual([
      [p1.address, 4_000_000n],
      [p1.address, 1_000_000n],
      [p2.address, 500_000n],
      [p2.address, 250_000n],
    ])

    const result = await settler().run()
    expect(result.uncovered).toBe(0)
    expect(result.failed).toEqual([])
    expect(result.settled).toHaveLength(1)
    const [batch] = ledger.batches('settled') as [SettlementBatch]
    expect(batch.batchId).toBe(result.settled[0]?.batchId)
    expect(batch.txHash).toMatch(/^0x[0-9a-f]{64}$/)

    expect(await read('earnings', nodeA)).toBe(4_250_000n)
    expect(await read('earnings', nodeB)).toBe(1_500_000n)
    expect(await read('balanceOf', p1.address)).toBe(0n)
    expect(await read('balanceOf', p2.address)).toBe(2_250_000n)
    const [event] = await batchSettledLogs(batch.txHash!)
    expect(event?.args).toEqual({ batchId: batch.batchId, gateway: client.address, total: 5_750_000n })
    expect(
      await publicClient().readContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'isBatchSettled',
        args: [client.address, batch.batchId as Hex],
      }),
    ).toBe(true)

    const marked = Object.fromEntries((await usageRows()).map((t) => [t.id, t.settlementTxHash]))
    expect(marked).toEqual({ [t1.id]: batch.txHash, [t2.id]: batch.txHash, [t3.id]: batch.txHash })
    expect(ledger.pendingPayouts(100)).toEqual([])

    // nothing left: another round sends nothing
    const again = await settler().run()
    expect(again).toEqual({ settled: [], failed: [], uncovered: 0 })
    expect(await read('earnings', nodeA)).toBe(4_250_000n)
  })

  it('a payer that authorized by signature (authorizeGatewayWithSig) is settled too', async () => {
    const [nodeA] = nodeAddresses as [Address]
    const payer = await linkedPayer(1_000_000n, undefined)
    const deadline = BigInt(Math.floor(Date.now() / 1000) + 600)
    const signature = await signAuthorizeGateway(
      payer.account,
      { chainId: chain.chainId, escrow: chain.escrow },
      { gateway: client.address, cap: 600_000n, nonce: 0n, deadline },
    )
    await client.send({
      functionName: 'authorizeGatewayWithSig',
      args: [payer.address, client.address, 600_000n, deadline, signature],
    })
    await charge(600_000n, nodeA)
    const result = await settler().run()
    expect(result.settled).toHaveLength(1)
    expect(await read('earnings', nodeA)).toBe(600_000n)
    expect(await read('balanceOf', payer.address)).toBe(400_000n)
  })

  it('a batch written but never sent (crash before send) is sent once by the next settler', async () => {
    const [nodeA] = nodeAddresses as [Address]
    await linkedPayer(2_000_000n, UNLIMITED)
    const t1 = await charge(700_000n, nodeA)
    const t2 = await charge(300_000n, nodeA)
    const batch = await ledger.createBatch(ledger.pendingPayouts(100).map((p) => p.id))
    // the process dies here
    await ledger.close()
    ledger = await openLedger()
    expect(ledger.batches('pending').map((b) => b.batchId)).toEqual([batch.batchId])
    expect(await read('earnings', nodeA)).toBe(0n)

    const result = await settler().run()
    expect(result.settled.map((b) => b.batchId)).toEqual([batch.batchId])
    expect(await read('earnings', nodeA)).toBe(1_000_000n)
    const [settled] = ledger.batches('settled')
    expect(settled?.id).toBe(batch.id)
    expect(await settlementsOf(batch.batchId)).toHaveLength(1)
    expect((await settlementsOf(batch.batchId))[0]?.transactionHash).toBe(settled?.txHash)
    expect((await usageRows()).map((t) => [t.id, t.settlementTxHash])).toEqual([
      [t2.id, settled?.txHash],
      [t1.id, settled?.txHash],
    ])
    // and once only
    await settler().run()
    expect(await read('earnings', nodeA)).toBe(1_000_000n)
    expect(await settlementsOf(batch.batchId)).toHaveLength(1)
  })

  it('a batch sent but not recorded (crash after send) is recorded with that tx, not paid again', async () => {
    const [nodeA, nodeB] = nodeAddresses as [Address, Address]
    const payer = await linkedPayer(2_000_000n, UNLIMITED)
    const t1 = await charge(800_000n, nodeA)
    await charge(200_000n, nodeB)
    const batch = await ledger.createBatch(ledger.pendingPayouts(100).map((p) => p.id))
    // the gateway sent it (same key, same id, same contents) and died before writing the outcome
    const sender = new EscrowClient(
      { rpcUrl: chain.rpcUrl, chainId: chain.chainId, usdc: chain.usdc, escrow: chain.escrow },
      gatewayKey(),
    )
    const { hash } = await sender.send({
      functionName: 'settle',
      args: [
        batch.batchId,
        batch.debits.map((d) => ({ payer: d.payer, amount: d.amount })),
        batch.credits.map((c) => ({ payee: c.payee, amount: c.amount })),
      ],
    })
    expect(await read('earnings', nodeA)).toBe(800_000n)
    await ledger.close()
    ledger = await openLedger()

    const result = await settler().run()
    expect(result.settled.map((b) => b.id)).toEqual([batch.id])
    expect(result.failed).toEqual([])
    expect(ledger.batches('settled')[0]?.txHash).toBe(hash)
    expect(await read('earnings', nodeA)).toBe(800_000n)
    expect(await read('earnings', nodeB)).toBe(200_000n)
    expect(await read('balanceOf', payer.address)).toBe(1_000_000n)
    expect(await settlementsOf(batch.batchId)).toHaveLength(1)
    expect((await usageRows()).find((t) => t.id === t1.id)?.settlementTxHash).toBe(hash)
    expect(ledger.pendingPayouts(100)).toEqual([])

    // replaying a settled batch id is refused by the escrow
    const replay = sender.send({
      functionName: 'settle',
      args: [batch.batchId, [{ payer: payer.address, amount: 1n }], [{ payee: nodeA, amount: 1n }]],
    })
    await expect(replay).rejects.toBeInstanceOf(CallRefusedError)
    await expect(replay).rejects.toMatchObject({ reason: 'BatchAlreadySettled' })
    expect(await read('earnings', nodeA)).toBe(800_000n)
  })

  it('an earlier send of the batch mined between the check and the new send: recorded settled, not paid again', async () => {
    const [nodeA] = nodeAddresses as [Address]
    const payer = await linkedPayer(3_000_000n, UNLIMITED)
    await charge(1_000_000n, nodeA)
    const batch = await ledger.createBatch(ledger.pendingPayouts(100).map((p) => p.id))
    const settleSelector = toFunctionSelector(getAbiItem({ abi: clusterEscrowAbi, name: 'settle' }))
    let armed = true
    // When the settler simulates its send, the earlier send (waiting in the mempool until then) is mined.
    const relay = await rpcRelay(async (request) => {
      const data = (request.params?.[0] as { data?: string } | undefined)?.data
      if (armed && request.method === 'eth_call' && data?.startsWith(settleSelector)) {
        armed = false
        await testClient().mine({ blocks: 1 })
        await testClient().setAutomine(true)
      }
    })
    try {
      await testClient().setAutomine(false)
      const gateway = createWalletClient({
        chain: viemChain(),
        transport: http(chain.rpcUrl),
        account: privateKeyToAccount(gatewayKey()),
      })
      const earlier = await gateway.writeContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'settle',
        args: [
          batch.batchId as Hex,
          [{ payer: payer.address, amount: 1_000_000n }],
          [{ payee: nodeA, amount: 1_000_000n }],
        ],
      })
      const relayed = new EscrowClient(
        { rpcUrl: relay.url, chainId: chain.chainId, usdc: chain.usdc, escrow: chain.escrow },
        gatewayKey(),
      )
      const result = await new Settler(ledger, relayed, { intervalMs: 60_000, payoutAddress }).run()
      expect(armed).toBe(false)
      expect((await publicClient().getTransactionReceipt({ hash: earlier })).status).toBe('success')
      expect(result.failed).toEqual([])
      expect(result.settled.map((b) => b.id)).toEqual([batch.id])
      expect(ledger.batches('settled').map((b) => [b.id, b.txHash])).toEqual([[batch.id, earlier]])
      expect(ledger.pendingPayouts(100)).toEqual([])
      await settler().run()
      expect(await read('earnings', nodeA)).toBe(1_000_000n)
      expect(await read('balanceOf', payer.address)).toBe(2_000_000n)
    } finally {
      await testClient().setAutomine(true)
      await relay.close()
    }
  })

  it('payouts a payer cannot cover (no cap, or no balance) stay pending; the rest settles', async () => {
    const [nodeA, nodeB] = nodeAddresses as [Address, Address]
    expect(await client.capacity(client.address)).toMatchObject({ balance: 0n }) // the gateway's own: empty
    await ledger.credit(user.id, 1_000_000n, { type: 'credit' }) // paid by '' on chain
    const ok = await linkedPayer(1_000_000n, UNLIMITED)
    const noCap = await linkedPayer(1_000_000n, undefined)
    const small = await linkedPayer(100_000n, 50_000n)
    const t1 = await charge(1_000_000n, nodeB) // ok 1.0
    const t2 = await charge(400_000n, nodeA) // noCap 0.4: it never authorized this gateway
    const t3 = await charge(1_600_000n, nodeB) // noCap 0.6, small 0.1 (cap 0.05), '' 0.9 (no balance)

    const result = await settler().run()
    expect(result.failed).toEqual([])
    expect(result.settled).toHaveLength(1)
    expect(result.uncovered).toBe(4)
    expect(ledger.pendingPayouts(100).map((p) => [p.payer, p.amount])).toEqual([
      [noCap.address, 400_000n],
      [noCap.address, 600_000n],
      [small.address, 100_000n],
      ['', 900_000n],
    ])
    expect(ledger.batches('settled')[0]?.debits).toEqual([{ payer: ok.address, amount: 1_000_000n }])
    expect(await read('earnings', nodeA)).toBe(0n)
    expect(await read('earnings', nodeB)).toBe(1_000_000n)
    expect(await read('balanceOf', noCap.address)).toBe(1_000_000n)
    expect(await read('balanceOf', small.address)).toBe(100_000n)
    const marks = async () => Object.fromEntries((await usageRows()).map((t) => [t.id, t.settlementTxHash]))
    const firstTx = ledger.batches('settled')[0]?.txHash
    expect(await marks()).toEqual({ [t1.id]: firstTx, [t2.id]: undefined, [t3.id]: undefined })

    // once the payer authorizes, the next round settles its share
    await noCap.authorize(UNLIMITED)
    const later = await settler().run()
    expect(later.settled).toHaveLength(1)
    expect(later.uncovered).toBe(2)
    expect(await read('earnings', nodeA)).toBe(400_000n)
    expect(await read('earnings', nodeB)).toBe(1_600_000n)
    expect(await read('balanceOf', noCap.address)).toBe(0n)
    expect(ledger.pendingPayouts(100).map((p) => p.payer)).toEqual([small.address, ''])
    expect((await marks())[t2.id]).toBe(ledger.batches('settled')[1]?.txHash)
  })

  it("payer '' is the gateway's own escrow account; payee '' is the configured payout address", async () => {
    const [nodeA] = nodeAddresses as [Address]
    // admin credit: no wallet backs it, so the gateway's own escrow balance pays
    await ledger.credit(user.id, 10_000_000n, { type: 'credit' })
    await charge(300_000n, nodeA)
    await charge(200_000n, '') // a node that gave no payout address
    const gatewayOwnBefore = await read('balanceOf', client.address)
    expect(gatewayOwnBefore).toBe(0n)

    // nothing from the gateway's account before it deposits and authorizes itself
    const first = await settler().run()
    expect(first.settled).toEqual([])
    expect(first.uncovered).toBe(2)

    const gateway = await actor(privateKeyToAccount(gatewayKey()), 1_000_000n)
    await gateway.deposit(1_000_000n)
    await gateway.authorize(UNLIMITED)
    const result = await settler().run()
    expect(result.settled).toHaveLength(1)
    const [batch] = ledger.batches('settled') as [SettlementBatch]
    expect(batch.debits).toEqual([{ payer: '', amount: 500_000n }])
    expect(await read('earnings', nodeA)).toBe(300_000n)
    expect(await read('earnings', payoutAddress)).toBe(200_000n)
    expect(await read('balanceOf', client.address)).toBe(gatewayOwnBefore + 1_000_000n - 500_000n)
    const events = await publicClient().getContractEvents({
      address: chain.escrow,
      abi: clusterEscrowAbi,
      eventName: 'Settled',
      args: { batchId: batch.batchId as Hex },
      fromBlock: 0n,
    })
    expect(events.map((e) => [e.args.payer, e.args.amount])).toEqual([[client.address, 500_000n]])
  })

  it('a payout whose payer has since asked to withdraw is settled from the thawing amount', async () => {
    const [nodeA] = nodeAddresses as [Address]
    const payer = await linkedPayer(1_000_000n, UNLIMITED)
    await charge(700_000n, nodeA)
    await payer.requestWithdraw(1_000_000n) // all of it thawing, none available
    const before = await client.account(payer.address)
    expect(before).toMatchObject({ available: 0n, thawing: 1_000_000n })

    const result = await settler().run()
    expect(result.settled).toHaveLength(1)
    expect(result.uncovered).toBe(0)
    expect(await read('earnings', nodeA)).toBe(700_000n)
    expect(await client.account(payer.address)).toMatchObject({ available: 0n, thawing: 300_000n })
  })

  it('a batch the chain refuses is recorded failed, and its payouts are pending again', async () => {
    const [nodeA] = nodeAddresses as [Address]
    const payer = await linkedPayer(1_000_000n, UNLIMITED, 2_000_000n)
    await charge(600_000n, nodeA)
    const batch = await ledger.createBatch(ledger.pendingPayouts(100).map((p) => p.id))
    // between writing the batch and sending it, the payer's balance went elsewhere: another
    // gateway (here: anvil's account 3, authorized by the payer) settled most of it
    const other = new EscrowClient(
      { rpcUrl: chain.rpcUrl, chainId: chain.chainId, usdc: chain.usdc, escrow: chain.escrow },
      testAccounts()[3]!.privateKey,
    )
    const wallet = createWalletClient({ chain: viemChain(), transport: http(chain.rpcUrl), account: payer.account })
    await publicClient().waitForTransactionReceipt({
      hash: await wallet.writeContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'authorizeGateway',
        args: [other.address, UNLIMITED],
      }),
    })
    await other.send({
      functionName: 'settle',
      args: [
        `0x${'ab'.repeat(32)}`,
        [{ payer: payer.address, amount: 900_000n }],
        [{ payee: nodeA, amount: 900_000n }],
      ],
    })
    const lines: string[] = []
    const result = await settler({ log: (l) => lines.push(l) }).run()
    expect(result.failed.map((b) => b.id)).toEqual([batch.id])
    expect(ledger.batches('failed')[0]?.error).toMatch(/InsufficientBalance/)
    expect(lines.join('\n')).toMatch(/refused/)
    expect(ledger.pendingPayouts(100).map((p) => p.amount)).toEqual([600_000n])
    expect(await read('earnings', nodeA)).toBe(900_000n)
    expect(await settlementsOf(batch.batchId)).toHaveLength(0)
    // the payer tops up: the payout settles in a new batch, under a new id
    await payer.deposit(1_000_000n)
    const retry = await settler().run()
    expect(retry.settled).toHaveLength(1)
    expect(retry.settled[0]?.batchId).not.toBe(batch.batchId)
    expect(await read('earnings', nodeA)).toBe(1_500_000n)
  })
})
