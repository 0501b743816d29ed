// The deposit watcher on a real chain (anvil on 127.0.0.1 with the escrow deployed): the gateway's
// ledger, its escrow client and the watcher in-process, payers acting on the escrow with their own
// keys. Every event moves the ledger exactly once — after confirmations, across crashes that lose
// the cursor, and for events made while the watcher was down.
import { createPublicClient, createTestClient, createWalletClient, type Hex, http } from 'viem'
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { clusterEscrowAbi, testUsdcAbi } from '../../src/chain/artifacts.ts'
import { type DevChain, devChainViem, fundWallet, startDevChain, testAccounts } from '../../src/chain/devchain.ts'
import { EscrowClient } from '../../src/chain/escrow.ts'
import { Settler } from '../../src/chain/settler.ts'
import { DepositWatcher, type WatcherOptions } from '../../src/chain/watcher.ts'
import type { Account, Ledger, Transaction } from '../../src/ledger/ledger.ts'
import { LevelLedger } from '../../src/ledger/level-ledger.ts'
import { escrowActor } from '../helpers/chain.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

let chain: DevChain
let client: EscrowClient
const cleanup: Array<() => Promise<void>> = []

beforeAll(async () => {
  chain = await startDevChain()
  client = new EscrowClient(
    { rpcUrl: chain.rpcUrl, chainId: chain.chainId, usdc: chain.usdc, escrow: chain.escrow },
    testAccounts()[1]!.privateKey,
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

/** A payer with its own key, test ETH and `usdc` TestUSDC, acting on the escrow directly. */
const newPayer = (usdc: bigint) =>
  escrowActor(chain, privateKeyToAccount(generatePrivateKey()), { usdc, gateway: client.address })

/** A gateway's chain side without HTTP: a ledger in a temp dir, one account, and watchers from `fromBlock`. */
class GatewaySide {
  ledger!: LevelLedger
  account!: Account

  constructor(
    readonly dir: string,
    readonly fromBlock: bigint,
  ) {}

  static async create(): Promise<GatewaySide> {
    const dir = await tempDir('watcher')
    cleanup.push(dir.remove)
    const side = new GatewaySide(dir.path, (await publicClient().getBlockNumber()) + 1n)
    await side.open()
    cleanup.push(() => side.ledger.close())
    side.account = await side.ledger.createAccount({ email: 'payer@example.com', role: 'user', passwordHash: '' })
    return side
  }

  watcher(ledger: Ledger = this.ledger, more: Partial<WatcherOptions> = {}): DepositWatcher {
    return new DepositWatcher(ledger, client, {
      confirmations: 0,
      pollIntervalMs: 50,
      fromBlock: this.fromBlock,
      ...more,
    })
  }

  async open(): Promise<LevelLedger> {
    this.ledger = new LevelLedger(this.dir)
    await this.ledger.open()
    return this.ledger
  }

  /** Closes the ledger and opens it again from disk, as a restarted gateway does. */
  async restart(): Promise<LevelLedger> {
    await this.ledger.close()
    return this.open()
  }

  async balance(): Promise<bigint> {
    return (await this.ledger.getAccount(this.account.id))?.balance ?? -1n
  }
}

async function rows(ledger: Ledger, accountId: string): Promise<Transaction[]> {
  const page = await ledger.transactions(accountId, { limit: 100 })
  const txs = page.transactions.reverse() // oldest first
  const account = await ledger.getAccount(accountId)
  // the account's invariant: its balance is the sum of its rows
  expect(txs.reduce((s, t) => s + t.amount, 0n)).toBe(account?.balance)
  return txs
}

const amounts = (txs: Transaction[]) => txs.map((t) => [t.type, t.amount, t.txHash])

describe('DepositWatcher on anvil', () => {
  let g: GatewaySide

  beforeEach(async () => {
    g = await GatewaySide.create()
  })

  it('credits a deposit exactly once, with its tx hash, and keeps its place', async () => {
    const payer = await newPayer(10_000_000n)
    await g.ledger.linkWallet(g.account.id, payer.address)
    const receipt = await payer.deposit(2_500_000n)
    const watcher = g.watcher()
    await watcher.poll()
    expect(await g.balance()).toBe(2_500_000n)
    await watcher.poll()
    await Promise.all([watcher.poll(), watcher.poll(), watcher.poll()])
    expect(amounts(await rows(g.ledger, g.account.id))).toEqual([['deposit', 2_500_000n, receipt.transactionHash]])
    expect((await rows(g.ledger, g.account.id))[0]?.wallet).toBe(payer.address)
    expect(g.ledger.walletOwner(payer.address)?.funds).toBe(2_500_000n)
    expect(g.ledger.cursor(await watcher.cursorName())).toBe(await publicClient().getBlockNumber())
    const genesis = await publicClient().getBlock({ blockNumber: 0n })
    expect(await watcher.cursorName()).toBe(`escrow:${chain.chainId}:${genesis.hash}:${chain.escrow.toLowerCase()}`)
  })

  it('with confirmations 2, credits only once the deposit has 2 blocks on top', async () => {
    const payer = await newPayer(10_000_000n)
    await g.ledger.linkWallet(g.account.id, payer.address)
    const watcher = g.watcher(g.ledger, { confirmations: 2 })
    const receipt = await payer.deposit(1_000_000n)
    expect(await publicClient().getBlockNumber()).toBe(receipt.blockNumber)
    await watcher.poll()
    expect(await g.balance()).toBe(0n)
    await testClient().mine({ blocks: 1 })
    await watcher.poll()
    expect(await g.balance()).toBe(0n)
    expect(g.ledger.cursor(await watcher.cursorName())).toBe(receipt.blockNumber - 1n)
    await testClient().mine({ blocks: 1 })
    await watcher.poll()
    expect(await g.balance()).toBe(1_000_000n)
    expect(g.ledger.cursor(await watcher.cursorName())).toBe(receipt.blockNumber)
    await testClient().mine({ blocks: 3 })
    await watcher.poll()
    expect(amounts(await rows(g.ledger, g.account.id))).toEqual([['deposit', 1_000_000n, receipt.transactionHash]])
  })

  it('a crash after the credits but before the cursor write, then a restart: no double credit, no miss', async () => {
    const payer = await newPayer(100_000_000n)
    await g.ledger.linkWallet(g.account.id, payer.address)
    const r1 = await payer.deposit(1_000_000n)
    const r2 = await payer.deposit(2_000_000n)
    const r3 = await payer.deposit(3_000_000n)

    // The process "dies" writing the cursor of the block of the second deposit: that deposit is
    // credited, the cursor still points before it, and the third deposit is not read yet.
    const real = g.ledger
    const crashing = new Proxy(real, {
      get(target, prop, receiver) {
        if (prop === 'setCursor') {
          return async (name: string, block: bigint) => {
            if (block === r2.blockNumber) throw new Error('crash')
            return target.setCursor(name, block)
          }
        }
        const value = Reflect.get(target, prop, receiver)
        return typeof value === 'function' ? value.bind(target) : value
      },
    })
    const first = g.watcher(crashing, { chunk: 1n, fromBlock: r1.blockNumber })
    await expect(first.poll()).rejects.toThrow('crash')
    await first.stop()
    expect(g.ledger.cursor(await first.cursorName())).toBe(r2.blockNumber - 1n)
    expect(await g.balance()).toBe(3_000_000n) // deposits 1 and 2 are written, 3 is not

    // while it is down, one more deposit
    const r4 = await payer.deposit(4_000_000n)
    await g.restart()
    expect(g.ledger.cursor(await first.cursorName())).toBe(r2.blockNumber - 1n)
    expect(await g.balance()).toBe(3_000_000n)
    const second = g.watcher(g.ledger, { chunk: 1n, fromBlock: r1.blockNumber })
    await second.poll()
    expect(await g.balance()).toBe(10_000_000n)
    expect(amounts(await rows(g.ledger, g.account.id))).toEqual([
      ['deposit', 1_000_000n, r1.transactionHash],
      ['deposit', 2_000_000n, r2.transactionHash],
      ['deposit', 3_000_000n, r3.transactionHash],
      ['deposit', 4_000_000n, r4.transactionHash],
    ])
    expect(g.ledger.walletOwner(payer.address)?.funds).toBe(10_000_000n)
    expect(g.ledger.cursor(await second.cursorName())).toBe(r4.blockNumber)
  })

  it('a cursor lost back to the start (as if never written), then a restart: every event once', async () => {
    const payer = await newPayer(100_000_000n)
    await g.ledger.linkWallet(g.account.id, payer.address)
    const d1 = await payer.deposit(5_000_000n)
    const w1 = await payer.requestWithdraw(2_000_000n)
    const watcher = g.watcher()
    await watcher.poll()
    expect(await g.balance()).toBe(3_000_000n)
    const c1 = await payer.cancelWithdraw()
    await watcher.poll()
    expect(await g.balance()).toBe(5_000_000n)
    await watcher.stop()
    const before = await rows(g.ledger, g.account.id)

    await g.ledger.setCursor(await watcher.cursorName(), g.fromBlock - 1n)
    await g.restart()
    // and down a while: a deposit the restarted watcher must pick up
    const d2 = await payer.deposit(1_000_000n)
    const again = g.watcher()
    await again.poll()
    const after = await rows(g.ledger, g.account.id)
    expect(after.slice(0, before.length)).toEqual(before)
    expect(amounts(after)).toEqual([
      ['deposit', 5_000_000n, d1.transactionHash],
      ['withdrawal', -2_000_000n, w1.transactionHash],
      ['withdrawal', 2_000_000n, c1.transactionHash],
      ['deposit', 1_000_000n, d2.transactionHash],
    ])
    expect(await g.balance()).toBe(6_000_000n)
    expect(g.ledger.walletOwner(payer.address)?.funds).toBe(6_000_000n)
  })

  it('WithdrawRequested debits the linked account once; WithdrawCancelled credits it back once', async () => {
    const payer = await newPayer(10_000_000n)
    await g.ledger.linkWallet(g.account.id, payer.address)
    const watcher = g.watcher()
    await payer.deposit(4_000_000n)
    await watcher.poll()
    const w = await payer.requestWithdraw(1_500_000n)
    await watcher.poll()
    await watcher.poll()
    expect(await g.balance()).toBe(2_500_000n)
    expect(g.ledger.walletOwner(payer.address)?.funds).toBe(2_500_000n)
    const c = await payer.cancelWithdraw()
    await watcher.poll()
    await watcher.poll()
    expect(await g.balance()).toBe(4_000_000n)
    const txs = await rows(g.ledger, g.account.id)
    expect(amounts(txs.slice(1))).toEqual([
      ['withdrawal', -1_500_000n, w.transactionHash],
      ['withdrawal', 1_500_000n, c.transactionHash],
    ])
    expect(txs.every((t) => t.wallet === payer.address)).toBe(true)
  })

  it('events of an unlinked payer are parked, and credited once when it is linked', async () => {
    const payer = await newPayer(10_000_000n)
    const watcher = g.watcher()
    const d1 = await payer.deposit(700_000n)
    const d2 = await payer.deposit(300_000n)
    await watcher.poll()
    expect(await g.balance()).toBe(0n)
    expect(await rows(g.ledger, g.account.id)).toEqual([])
    // parked on disk: a restart keeps them
    await g.restart()
    await g.ledger.setCursor(await watcher.cursorName(), g.fromBlock - 1n)
    await g.watcher().poll()
    const { credited } = await g.ledger.linkWallet(g.account.id, payer.address)
    expect(credited.map((t) => t.txHash).sort()).toEqual([d1.transactionHash, d2.transactionHash].sort())
    expect(await g.balance()).toBe(1_000_000n)
    // later deposits credit at once; re-reading the old ones changes nothing
    const d3 = await payer.deposit(5n)
    await g.ledger.setCursor(await watcher.cursorName(), g.fromBlock - 1n)
    await g.watcher().poll()
    expect(await g.balance()).toBe(1_000_005n)
    expect((await rows(g.ledger, g.account.id)).map((t) => t.txHash).at(-1)).toBe(d3.transactionHash)
  })

  it('a withdrawal asked for and cancelled on chain before usage settled: the ledger ends where the escrow does', async () => {
    const payer = await newPayer(10_000_000n)
    await g.ledger.linkWallet(g.account.id, payer.address)
    await payer.authorize(2n ** 256n - 1n)
    const watcher = g.watcher()
    await payer.deposit(1_000_000n)
    await watcher.poll()
    // 0.8 of usage, served and charged, not settled on chain yet
    const hold = await g.ledger.reserve(g.account.id, 800_000n, 'call')
    const node = privateKeyToAccount(generatePrivateKey()).address
    await g.ledger.settle(hold.id, 800_000n, {
      model: 'm',
      requestId: 'call',
      tokensIn: 1,
      tokensOut: 1,
      payout: { node: 'n', payee: node, receipt: '{}' },
    })
    expect(await g.balance()).toBe(200_000n)
    // the payer asks the escrow directly for all of it, then thinks better of it
    await payer.requestWithdraw(1_000_000n)
    await watcher.poll()
    expect(await g.balance()).toBe(0n)
    await payer.cancelWithdraw()
    await watcher.poll()
    // the usage settles from the escrow balance: what is left there is what the account has
    const settled = await new Settler(g.ledger, client, { intervalMs: 60_000 }).run()
    expect(settled.settled).toHaveLength(1)
    const onChain = await client.capacity(payer.address)
    expect(onChain.balance).toBe(200_000n)
    expect(await g.balance()).toBe(onChain.balance)
    expect(g.ledger.walletOwner(payer.address)?.funds).toBe(onChain.balance)
    await rows(g.ledger, g.account.id)
  })

  it('a request for the whole deposit made on chain during a call: never negative, the call paid from the deposit, the ledger ends where the escrow does', async () => {
    const payer = await newPayer(10_000_000n)
    await g.ledger.linkWallet(g.account.id, payer.address)
    await payer.authorize(2n ** 256n - 1n)
    const watcher = g.watcher()
    const d = await payer.deposit(6_699_863n)
    await watcher.poll()
    const spendable = async (): Promise<bigint> => {
      const a = await g.ledger.getAccount(g.account.id)
      expect(a?.balance).toBeGreaterThanOrEqual(0n)
      return (a?.balance ?? 0n) - (a?.held ?? 0n)
    }
    const house = await client.capacity(client.address)
    // a streamed call holds 816 ...
    const hold = await g.ledger.reserve(g.account.id, 816n, 'call')
    // ... while the wallet asks the escrow itself for all of it
    const r = await payer.requestWithdraw(6_699_863n)
    await watcher.poll()
    expect(await spendable()).toBe(0n)
    expect(await g.balance()).toBe(816n)
    const node = privateKeyToAccount(generatePrivateKey()).address
    await g.ledger.settle(hold.id, 800n, {
      model: 'm',
      requestId: 'call',
      tokensIn: 1,
      tokensOut: 1,
      payout: { node: 'n', payee: node, receipt: '{}' },
    })
    expect(await spendable()).toBe(16n)
    // the charge is the wallet's to pay, and is paid on chain from its thawing amount
    expect(g.ledger.pendingPayouts(10).map((p) => [p.payer, p.amount])).toEqual([[payer.address, 800n]])
    const settled = await new Settler(g.ledger, client, { intervalMs: 60_000 }).run()
    expect(settled.settled).toHaveLength(1)
    expect(settled.failed).toEqual([])
    expect(
      await publicClient().readContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'earnings',
        args: [node],
      }),
    ).toBe(800n)
    expect(await client.account(payer.address)).toMatchObject({ available: 0n, thawing: 6_699_063n })
    expect((await client.capacity(client.address)).balance).toBe(house.balance)
    // after the thaw the wallet withdraws what is left of it: the ledger follows
    await testClient().increaseTime({ seconds: Number(chain.thawPeriod) + 1 })
    await testClient().mine({ blocks: 1 })
    const w = await payer.withdraw()
    await watcher.poll()
    expect(await spendable()).toBe(0n)
    const onChain = await client.capacity(payer.address)
    expect(onChain.balance).toBe(0n)
    expect(await g.balance()).toBe(onChain.balance)
    expect(g.ledger.walletOwner(payer.address)?.funds).toBe(0n)
    const txs = await rows(g.ledger, g.account.id)
    expect(amounts(txs)).toEqual([
      ['deposit', 6_699_863n, d.transactionHash],
      ['withdrawal', -6_699_047n, r.transactionHash],
      ['usage', -800n, undefined],
      ['withdrawal', -16n, w.transactionHash],
    ])
    // nothing left for the link to back: it can go
    expect(await g.ledger.unlinkWallet(g.account.id, payer.address)).toBe(true)
  })

  it('an unlinked payer that deposited and asked for it all back: linking credits nothing', async () => {
    const payer = await newPayer(10_000_000n)
    const watcher = g.watcher()
    await payer.deposit(1_000_000n)
    await payer.requestWithdraw(1_000_000n)
    await watcher.poll()
    const { credited } = await g.ledger.linkWallet(g.account.id, payer.address)
    expect(credited.map((t) => t.amount)).toEqual([1_000_000n, -1_000_000n])
    expect(await g.balance()).toBe(0n)
    expect(g.ledger.walletOwner(payer.address)?.funds).toBe(0n)
    // cancelled after all: the money is the account's
    await payer.cancelWithdraw()
    await watcher.poll()
    expect(await g.balance()).toBe(1_000_000n)
    expect(g.ledger.walletOwner(payer.address)?.funds).toBe(1_000_000n)
    await rows(g.ledger, g.account.id)
  })

  it('start() follows the chain on its own until stop()', async () => {
    const payer = await newPayer(10_000_000n)
    await g.ledger.linkWallet(g.account.id, payer.address)
    const lines: string[] = []
    const watcher = g.watcher(g.ledger, { pollIntervalMs: 25, log: (l) => lines.push(l) })
    watcher.start()
    try {
      await payer.deposit(100n)
      await waitFor(async () => (await g.balance()) === 100n, 5_000, 'the first deposit')
      await payer.deposit(200n)
      await waitFor(async () => (await g.balance()) === 300n, 5_000, 'the second deposit')
    } finally {
      await watcher.stop()
    }
    await payer.deposit(400n)
    await new Promise((r) => setTimeout(r, 150))
    expect(await g.balance()).toBe(300n)
    expect(lines).toEqual([])
  })
})

describe('a local chain started afresh', () => {
  it('repeats its tx hashes; the genesis hash in refs and cursors keeps its deposits apart', async () => {
    const dir = await tempDir('watcher-fresh')
    cleanup.push(dir.remove)
    const ledger = new LevelLedger(dir.path)
    await ledger.open()
    cleanup.push(() => ledger.close())
    const owner = await ledger.createAccount({ email: 'fresh@example.com', role: 'user', passwordHash: '' })
    const payer = privateKeyToAccount(testAccounts()[8]!.privateKey)
    await ledger.linkWallet(owner.id, payer.address)
    const hashes: string[] = []
    for (let round = 0; round < 2; round++) {
      // A fresh chain started later: anvil's genesis hash changes with its (whole-second) start time.
      if (round > 0) await new Promise((r) => setTimeout(r, 1_100))
      const fresh = await startDevChain()
      try {
        const freshClient = new EscrowClient(
          { rpcUrl: fresh.rpcUrl, chainId: fresh.chainId, usdc: fresh.usdc, escrow: fresh.escrow },
          testAccounts()[1]!.privateKey,
        )
        await fundWallet(fresh, payer.address, { usdc: 1_000_000n })
        const transport = http(fresh.rpcUrl)
        const pc = createPublicClient({ chain: devChainViem(fresh), transport })
        const wallet = createWalletClient({ chain: devChainViem(fresh), transport, account: payer })
        const send = async (hash: Hex): Promise<Hex> => {
          expect((await pc.waitForTransactionReceipt({ hash })).status).toBe('success')
          return hash
        }
        await send(
          await wallet.writeContract({
            address: fresh.usdc,
            abi: testUsdcAbi,
            functionName: 'approve',
            args: [fresh.escrow, 1_000_000n],
          }),
        )
        hashes.push(
          await send(
            await wallet.writeContract({
              address: fresh.escrow,
              abi: clusterEscrowAbi,
              functionName: 'deposit',
              args: [1_000_000n],
            }),
          ),
        )
        await new DepositWatcher(ledger, freshClient, { confirmations: 0, pollIntervalMs: 50, fromBlock: 0n }).poll()
      } finally {
        await fresh.stop()
      }
    }
    // The premise: the second chain's deposit has the very same tx hash as the first's.
    expect(hashes[1]).toBe(hashes[0])
    expect((await ledger.getAccount(owner.id))?.balance).toBe(2_000_000n)
  })
})
