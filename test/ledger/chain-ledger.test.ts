// The ledger's chain side, without a chain: wallet links, deposits parked until their wallet is
// linked, withdrawals and cancellations, watcher cursors, payouts split over who pays on chain,
// and settlement batches. Every on-chain event is applied once per ref, across restarts too, and
// an account's balance is always the sum of its transaction rows.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  type Account,
  LedgerError,
  type Payout,
  type Transaction,
  UnknownHoldError,
  WalletInUseError,
  WalletLinkedError,
  withdrawalHoldPrefix,
} from '../../src/ledger/ledger.ts'
import { LevelLedger } from '../../src/ledger/level-ledger.ts'
import { tempDir } from '../helpers/fixtures.ts'

// Addresses chosen so that the one linked first sorts last: link order, not address order, decides.
const W1 = '0xBbBBbbBBbBBbBbbbBbbBbBbbBbBBbBbbbbbbBBbb'
const W2 = '0xaAaAaAaaAaAaAaaAaAAAAAAAAaaaAaAaAaaAaaAa'
const W3 = '0x3333333333333333333333333333333333333333'
const NODE_A = '0x00000000000000000000000000000000000000Aa'
const NODE_B = '0x00000000000000000000000000000000000000bB'

let dirs: Array<{ path: string; remove: () => Promise<void> }> = []
let dir: string
let ledger: LevelLedger
let seq = 0

async function openLedger(path = dir): Promise<LevelLedger> {
  const l = new LevelLedger(path)
  await l.open()
  return l
}

async function reopen(): Promise<void> {
  await ledger.close()
  ledger = await openLedger()
}

async function newAccount(l: LevelLedger = ledger): Promise<Account> {
  return l.createAccount({ email: `chain${++seq}@example.com`, role: 'user', passwordHash: '' })
}

async function account(id: string, l: LevelLedger = ledger): Promise<Account> {
  const a = await l.getAccount(id)
  if (a == null) throw new Error(`account ${id} vanished`)
  return a
}

async function allTransactions(accountId: string, l: LevelLedger = ledger): Promise<Transaction[]> {
  const out: Transaction[] = []
  let cursor: string | undefined
  for (;;) {
    const page = await l.transactions(accountId, { limit: 100, ...(cursor != null ? { cursor } : {}) })
    out.push(...page.transactions)
    if (page.nextCursor == null) return out
    cursor = page.nextCursor
  }
}

/** Balance = the sum of the rows, the newest row agrees, and it is never below zero. */
async function expectConsistent(accountId: string, l: LevelLedger = ledger): Promise<Transaction[]> {
  const a = await account(accountId, l)
  const txs = await allTransactions(accountId, l)
  expect(txs.reduce((sum, t) => sum + t.amount, 0n)).toBe(a.balance)
  if (txs.length > 0) expect(txs[0]?.balanceAfter).toBe(a.balance)
  let running = 0n
  for (const t of [...txs].reverse()) {
    running += t.amount
    expect(t.balanceAfter).toBe(running)
  }
  expect(a.balance >= 0n).toBe(true)
  expect(a.held >= 0n).toBe(true)
  return txs
}

const funds = (address: string, l: LevelLedger = ledger): bigint | undefined => l.walletOwner(address)?.funds

let refSeq = 0
const ref = (): string => `chain:31337:0x${(++refSeq).toString(16).padStart(64, '0')}:0`
const hash = (n: number): string => `0x${n.toString(16).padStart(64, 'f')}`

/** Links with distinct timestamps, so link order is unambiguous. */
async function linkInOrder(accountId: string, ...addresses: string[]): Promise<void> {
  for (const address of addresses) {
    await ledger.linkWallet(accountId, address)
    await new Promise((r) => setTimeout(r, 3))
  }
}

/** One charged call with a payout: reserve `amount`, settle it all. */
async function charge(accountId: string, amount: bigint, payee = NODE_A, requestId = `req-${++seq}`) {
  const hold = await ledger.reserve(accountId, amount, requestId)
  return ledger.settle(hold.id, amount, {
    model: 'm',
    requestId,
    tokensIn: 1,
    tokensOut: 2,
    payout: { node: `12D3KooW${payee.slice(-4)}`, payee, receipt: `{"r":"${requestId}"}` },
  })
}

const deposit = (address: string, amount: bigint, r = ref()) =>
  ledger.chainDeposit({ address, amount, ref: r, txHash: hash(refSeq) })

const summary = (ps: Payout[]) => ps.map((p) => [p.payer, p.amount])

beforeEach(async () => {
  const d = await tempDir('chain-ledger')
  dirs.push(d)
  dir = d.path
  ledger = await openLedger()
})

afterEach(async () => {
  await ledger.close().catch(() => undefined)
  await Promise.all(dirs.map((d) => d.remove()))
  dirs = []
})

describe('wallet links and deposits', () => {
  it('a deposit of an unlinked wallet is parked, then credited once when the wallet is linked', async () => {
    const a = await newAccount()
    const r = ref()
    expect(await deposit(W1, 7_000n, r)).toBeUndefined()
    expect(await deposit(W1, 7_000n, r)).toBeUndefined() // the watcher read it twice
    expect(await account(a.id)).toMatchObject({ balance: 0n })
    expect(await allTransactions(a.id)).toEqual([])

    // parked on disk: it survives a restart
    await reopen()
    const { link, credited } = await ledger.linkWallet(a.id, W1.toLowerCase())
    expect(credited).toHaveLength(1)
    expect(credited[0]).toMatchObject({ type: 'deposit', amount: 7_000n, wallet: W1.toLowerCase() })
    expect(link.funds).toBe(7_000n)
    expect(await account(a.id)).toMatchObject({ balance: 7_000n })
    expect(funds(W1)).toBe(7_000n)

    // linking again, the same ref again, and a restart: nothing more
    expect((await ledger.linkWallet(a.id, W1)).credited).toEqual([])
    expect((await deposit(W1, 7_000n, r))?.id).toBe(credited[0]?.id)
    await reopen()
    expect((await ledger.linkWallet(a.id, W1)).credited).toEqual([])
    expect(await account(a.id)).toMatchObject({ balance: 7_000n })
    expect(funds(W1)).toBe(7_000n)
    const txs = await expectConsistent(a.id)
    expect(txs).toHaveLength(1)
    expect(txs[0]?.txHash).toBe(credited[0]?.txHash)
  })

  it('several parked deposits are all credited on link, and the wallet funds add up', async () => {
    const a = await newAccount()
    await deposit(W1, 1_000n)
    await deposit(W1, 2_000n)
    await deposit(W2, 4_000n) // another wallet's: stays parked
    const { credited, link } = await ledger.linkWallet(a.id, W1)
    expect(credited.map((t) => t.amount).sort()).toEqual([1_000n, 2_000n])
    expect(link.funds).toBe(3_000n)
    expect(await account(a.id)).toMatchObject({ balance: 3_000n })
    const { credited: more } = await ledger.linkWallet(a.id, W2)
    expect(more.map((t) => t.amount)).toEqual([4_000n])
    expect(await account(a.id)).toMatchObject({ balance: 7_000n })
    await expectConsistent(a.id)
  })

  it('a deposit of a linked wallet credits at once, once per ref, also across a restart', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    const r = ref()
    const first = await ledger.chainDeposit({ address: W1, amount: 5_000n, ref: r, txHash: hash(1) })
    expect(first).toMatchObject({ type: 'deposit', amount: 5_000n, txHash: hash(1), wallet: W1, balanceAfter: 5_000n })
    const again = await ledger.chainDeposit({ address: W1, amount: 5_000n, ref: r, txHash: hash(1) })
    expect(again?.id).toBe(first?.id)
    await reopen()
    const afterRestart = await ledger.chainDeposit({ address: W1, amount: 5_000n, ref: r, txHash: hash(1) })
    expect(afterRestart?.id).toBe(first?.id)
    expect(await account(a.id)).toMatchObject({ balance: 5_000n })
    expect(funds(W1)).toBe(5_000n)
    expect(await expectConsistent(a.id)).toHaveLength(1)
    // and the ref is spent for credit() too: a deposit ref moves money once, whichever path
    await ledger.credit(a.id, 5_000n, { type: 'deposit', ref: r })
    expect(await account(a.id)).toMatchObject({ balance: 5_000n })
    await expect(ledger.chainDeposit({ address: W1, amount: 0n, ref: ref(), txHash: hash(2) })).rejects.toBeInstanceOf(
      LedgerError,
    )
  })

  it('a wallet linked to one account cannot be linked to another (in any letter case)', async () => {
    const a = await newAccount()
    const b = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await expect(ledger.linkWallet(b.id, W1)).rejects.toBeInstanceOf(WalletLinkedError)
    await expect(ledger.linkWallet(b.id, W1.toLowerCase())).rejects.toBeInstanceOf(WalletLinkedError)
    await reopen()
    await expect(ledger.linkWallet(b.id, W1.toUpperCase().replace('0X', '0x'))).rejects.toBeInstanceOf(
      WalletLinkedError,
    )
    expect(ledger.walletOwner(W1.toLowerCase())?.accountId).toBe(a.id)
    expect(ledger.wallets(b.id)).toEqual([])
    // its deposits still go to the first account
    await deposit(W1, 10n)
    expect(await account(a.id)).toMatchObject({ balance: 10n })
    expect(await account(b.id)).toMatchObject({ balance: 0n })
  })

  it('unlink: only by its account; afterwards deposits are parked and another account may link it', async () => {
    const a = await newAccount()
    const b = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 100n)
    expect(await ledger.unlinkWallet(b.id, W1)).toBe(false)
    // While its deposits back the balance, or a withdrawal of it thaws, the link must stay.
    await expect(ledger.unlinkWallet(a.id, W1.toLowerCase())).rejects.toThrow(WalletInUseError)
    await ledger.credit(a.id, 30n, { type: 'credit' })
    await ledger.chainWithdrawal({ address: W1, amount: 100n, ref: ref(), txHash: hash(90) })
    await expect(ledger.unlinkWallet(a.id, W1)).rejects.toThrow(WalletInUseError)
    await ledger.chainWithdrawn({ address: W1, amount: 100n, ref: ref(), txHash: hash(91) })
    expect(await ledger.unlinkWallet(a.id, W1.toLowerCase())).toBe(true)
    expect(await ledger.unlinkWallet(a.id, W1)).toBe(false)
    expect(ledger.walletOwner(W1)).toBeUndefined()
    expect(ledger.wallets(a.id)).toEqual([])
    // the admin credit stays in the balance
    expect(await account(a.id)).toMatchObject({ balance: 30n })
    await reopen()
    expect(ledger.walletOwner(W1)).toBeUndefined()
    expect(await deposit(W1, 50n)).toBeUndefined()
    expect(await account(a.id)).toMatchObject({ balance: 30n })
    const { credited } = await ledger.linkWallet(b.id, W1)
    expect(credited.map((t) => t.amount)).toEqual([50n])
    expect(await account(b.id)).toMatchObject({ balance: 50n })
    expect(funds(W1)).toBe(50n)
    await expectConsistent(a.id)
    await expectConsistent(b.id)
  })
})

describe('payouts', () => {
  it("settle splits a charge over the linked wallets in link order by their funds, then '' for the rest", async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' }) // admin credit: the gateway's own account pays it
    await linkInOrder(a.id, W1, W2)
    expect(ledger.wallets(a.id).map((w) => w.address)).toEqual([W1, W2])
    await deposit(W1, 300n)
    await deposit(W2, 200n)

    const t1 = await charge(a.id, 400n)
    const p1 = ledger.pendingPayouts(100)
    expect(summary(p1)).toEqual([
      [W1, 300n],
      [W2, 100n],
    ])
    expect(p1.every((p) => p.txId === t1.id && p.accountId === a.id && p.payee === NODE_A)).toBe(true)
    expect(p1[0]).toMatchObject({ node: `12D3KooW${NODE_A.slice(-4)}`, requestId: t1.requestId })
    expect(p1[0]?.receipt).toContain(t1.requestId)
    expect([funds(W1), funds(W2)]).toEqual([0n, 100n])

    await charge(a.id, 250n, NODE_B)
    expect(summary(ledger.pendingPayouts(100).slice(2))).toEqual([
      [W2, 100n],
      ['', 150n],
    ])
    expect([funds(W1), funds(W2)]).toEqual([0n, 0n])
    // a new deposit backs later usage again
    await deposit(W1, 20n)
    await charge(a.id, 30n)
    expect(summary(ledger.pendingPayouts(100).slice(4))).toEqual([
      [W1, 20n],
      ['', 10n],
    ])
    // the sum of payouts is what was charged, and ids grow (oldest first)
    const all = ledger.pendingPayouts(100)
    expect(all.reduce((s, p) => s + p.amount, 0n)).toBe(680n)
    expect(all.map((p) => p.id)).toEqual([...all.map((p) => p.id)].sort())
    expect(ledger.pendingPayouts(2).map((p) => p.id)).toEqual(all.slice(0, 2).map((p) => p.id))
    expect(await account(a.id)).toMatchObject({ balance: 1_520n - 680n, totalSpent: 680n })
    await expectConsistent(a.id)

    // all of it is on disk
    const before = ledger.pendingPayouts(100)
    const walletsBefore = ledger.wallets(a.id)
    await reopen()
    expect(ledger.pendingPayouts(100)).toEqual(before)
    expect(ledger.wallets(a.id)).toEqual(walletsBefore)
  })

  it('a charge without a payout, or of zero, makes no payout', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 500n)
    const h1 = await ledger.reserve(a.id, 100n, 'r1')
    await ledger.settle(h1.id, 100n, { model: 'm', requestId: 'r1', tokensIn: 1, tokensOut: 1 })
    const h2 = await ledger.reserve(a.id, 100n, 'r2')
    await ledger.settle(h2.id, 0n, {
      model: 'm',
      requestId: 'r2',
      tokensIn: 0,
      tokensOut: 0,
      payout: { node: 'n', payee: NODE_A, receipt: '{}' },
    })
    expect(ledger.pendingPayouts(10)).toEqual([])
    expect(funds(W1)).toBe(500n)
    await expectConsistent(a.id)
  })
})

describe('settlement batches', () => {
  async function threePayouts() {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    await linkInOrder(a.id, W1)
    await deposit(W1, 100n)
    const t1 = await charge(a.id, 150n, NODE_A) // W1 100, '' 50
    const t2 = await charge(a.id, 70n, NODE_B) // '' 70
    const t3 = await charge(a.id, 5n, '') // '' 5, to the gateway's payout address
    return { a, txs: [t1, t2, t3] }
  }

  it('createBatch totals per payer and per payee, and takes the payouts out of pending', async () => {
    await threePayouts()
    const pending = ledger.pendingPayouts(100)
    expect(pending).toHaveLength(4)
    const batch = await ledger.createBatch(pending.map((p) => p.id))
    expect(batch.status).toBe('pending')
    expect(batch.batchId).toMatch(/^0x[0-9a-f]{64}$/)
    expect(batch.payoutIds).toEqual(pending.map((p) => p.id))
    const byKey = <T extends { amount: bigint }>(xs: T[], k: keyof T) =>
      Object.fromEntries(xs.map((x) => [String(x[k]), x.amount]))
    expect(byKey(batch.debits, 'payer')).toEqual({ [W1]: 100n, '': 125n })
    expect(byKey(batch.credits, 'payee')).toEqual({ [NODE_A]: 150n, [NODE_B]: 70n, '': 5n })
    expect(batch.debits.reduce((s, d) => s + d.amount, 0n)).toBe(225n)
    expect(ledger.pendingPayouts(100)).toEqual([])
    expect(ledger.batches('pending')).toEqual([batch])
    // a payout cannot be in two batches; an empty batch is refused
    await expect(ledger.createBatch([pending[0]!.id])).rejects.toBeInstanceOf(LedgerError)
    await expect(ledger.createBatch([])).rejects.toBeInstanceOf(LedgerError)
    await expect(ledger.createBatch(['999999999999'])).rejects.toBeInstanceOf(LedgerError)
    // the open batch survives a restart, its payouts still not pending
    await reopen()
    expect(ledger.batches('pending')).toEqual([batch])
    expect(ledger.pendingPayouts(100)).toEqual([])
  })

  it('settleBatch marks the usage rows with the settlement tx and drops the payouts for good', async () => {
    const { a, txs } = await threePayouts()
    const [p1, p2, p3, p4] = ledger.pendingPayouts(100)
    // batch 1: the first call's two payouts and the second's; the third call stays pending
    const batch = await ledger.createBatch([p1!.id, p2!.id, p3!.id])
    const settlement = hash(99)
    await ledger.settleBatch(batch.id, settlement)
    expect(ledger.pendingPayouts(100).map((p) => p.id)).toEqual([p4!.id])
    expect(ledger.batches('settled')).toEqual([{ ...batch, status: 'settled', txHash: settlement }])
    expect(ledger.batches('pending')).toEqual([])
    const marked = (rows: Transaction[]) =>
      Object.fromEntries(rows.filter((t) => t.type === 'usage').map((t) => [t.id, t.settlementTxHash]))
    expect(marked(await allTransactions(a.id))).toEqual({
      [txs[0]!.id]: settlement,
      [txs[1]!.id]: settlement,
      [txs[2]!.id]: undefined,
    })
    await expect(ledger.settleBatch(batch.id, hash(98))).rejects.toBeInstanceOf(LedgerError)
    await expect(ledger.failBatch(batch.id, 'late')).rejects.toBeInstanceOf(LedgerError)

    await reopen()
    expect(ledger.pendingPayouts(100).map((p) => p.id)).toEqual([p4!.id])
    expect(ledger.batches('settled')[0]?.txHash).toBe(settlement)
    expect(marked(await allTransactions(a.id))[txs[0]!.id]).toBe(settlement)
    // the rest settles in its own batch, with its own id
    const second = await ledger.createBatch([p4!.id])
    expect(second.batchId).not.toBe(batch.batchId)
    await ledger.settleBatch(second.id, hash(97))
    expect(marked(await allTransactions(a.id))).toEqual({
      [txs[0]!.id]: settlement,
      [txs[1]!.id]: settlement,
      [txs[2]!.id]: hash(97),
    })
    expect(ledger.pendingPayouts(100)).toEqual([])
    // settling changes no balance
    expect(await account(a.id)).toMatchObject({ balance: 1_100n - 225n })
    await expectConsistent(a.id)
  })

  it('failBatch puts the payouts back to pending, and the next batch gets another batchId', async () => {
    await threePayouts()
    const pending = ledger.pendingPayouts(100)
    const first = await ledger.createBatch(pending.map((p) => p.id))
    await ledger.failBatch(first.id, 'refused by the contract: CapExceeded')
    expect(ledger.pendingPayouts(100)).toEqual(pending)
    expect(ledger.batches('failed')).toEqual([{ ...first, status: 'failed', error: expect.stringContaining('Cap') }])
    await expect(ledger.settleBatch(first.id, hash(1))).rejects.toBeInstanceOf(LedgerError)
    await reopen()
    expect(ledger.pendingPayouts(100)).toEqual(pending)
    const second = await ledger.createBatch(pending.map((p) => p.id))
    expect(second.id).not.toBe(first.id)
    expect(second.batchId).not.toBe(first.batchId)
    expect(second.debits).toEqual(first.debits)
    expect(second.credits).toEqual(first.credits)
  })

  it('batch ids never repeat: not across a restart, not between two ledgers', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    for (let i = 0; i < 3; i++) await charge(a.id, 10n)
    const [p1, p2, p3] = ledger.pendingPayouts(10)
    const b1 = await ledger.createBatch([p1!.id])
    await ledger.failBatch(b1.id, 'x')
    await reopen()
    const b2 = await ledger.createBatch([p2!.id])
    await reopen()
    const b3 = await ledger.createBatch([p3!.id])
    const ids = [b1, b2, b3].map((b) => b.id)
    const batchIds = [b1, b2, b3].map((b) => b.batchId)
    expect(new Set(ids).size).toBe(3)
    expect(new Set(batchIds).size).toBe(3)

    // a second gateway (another data dir) making its first batch: same seq, another batchId
    const other = await tempDir('chain-ledger-other')
    dirs.push(other)
    const l2 = await openLedger(other.path)
    try {
      const b = await newAccount(l2)
      await l2.credit(b.id, 100n, { type: 'credit' })
      const hold = await l2.reserve(b.id, 10n, 'x')
      await l2.settle(hold.id, 10n, {
        model: 'm',
        requestId: 'x',
        tokensIn: 1,
        tokensOut: 1,
        payout: { node: 'n', payee: NODE_A, receipt: '{}' },
      })
      const c1 = await l2.createBatch(l2.pendingPayouts(1).map((p) => p.id))
      expect(c1.id).toBe(b1.id)
      expect(c1.batchId).not.toBe(b1.batchId)
    } finally {
      await l2.close()
    }
  })
})

describe('withdrawals', () => {
  it('chainWithdrawal debits the linked account once, never below zero, and lowers the wallet funds', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 500n)
    await charge(a.id, 400n) // balance 100, W1 funds 100
    const r = ref()
    const tx = await ledger.chainWithdrawal({ address: W1, amount: 500n, ref: r, txHash: hash(5) })
    expect(tx).toMatchObject({ type: 'withdrawal', amount: -100n, balanceAfter: 0n, txHash: hash(5), wallet: W1 })
    expect(await account(a.id)).toMatchObject({ balance: 0n })
    expect(funds(W1)).toBe(0n)
    expect((await ledger.chainWithdrawal({ address: W1, amount: 500n, ref: r, txHash: hash(5) }))?.id).toBe(tx?.id)
    await reopen()
    expect((await ledger.chainWithdrawal({ address: W1, amount: 500n, ref: r, txHash: hash(5) }))?.id).toBe(tx?.id)
    expect(await account(a.id)).toMatchObject({ balance: 0n })
    expect(await expectConsistent(a.id)).toHaveLength(3)
  })

  it('a partial withdrawal debits the amount and frees the hold that kept it', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    const hold = await ledger.reserve(a.id, 300n, 'withdraw')
    expect(await account(a.id)).toMatchObject({ balance: 1_000n, held: 300n })
    await ledger.chainWithdrawal({ address: W1, amount: 300n, ref: ref(), txHash: hash(6), holdId: hold.id })
    expect(await account(a.id)).toMatchObject({ balance: 700n, held: 0n })
    expect(funds(W1)).toBe(700n)
    // the hold is gone: it cannot be settled, and nothing is left for a restart to reconcile
    await expect(
      ledger.settle(hold.id, 1n, { model: 'm', requestId: 'x', tokensIn: 0, tokensOut: 0 }),
    ).rejects.toBeInstanceOf(UnknownHoldError)
    await reopen()
    expect(await ledger.reconcileHolds()).toBe(0)
    expect(await account(a.id)).toMatchObject({ balance: 700n, held: 0n })
    await expectConsistent(a.id)
  })

  for (const order of ['watcher first', 'route first'] as const) {
    it(`the same withdrawal seen by the watcher and the route (${order}) debits once and frees the hold`, async () => {
      const a = await newAccount()
      await ledger.linkWallet(a.id, W1)
      await deposit(W1, 1_000n)
      const hold = await ledger.reserve(a.id, 400n, 'withdraw')
      const r = ref()
      const seen = { address: W1, amount: 400n, ref: r, txHash: hash(7) }
      const byWatcher = () => ledger.chainWithdrawal(seen)
      const byRoute = () => ledger.chainWithdrawal({ ...seen, holdId: hold.id })
      const [x, y] =
        order === 'watcher first' ? [await byWatcher(), await byRoute()] : [await byRoute(), await byWatcher()]
      expect(x?.id).toBeDefined()
      expect(y?.id).toBe(x?.id)
      expect(await account(a.id)).toMatchObject({ balance: 600n, held: 0n })
      expect(funds(W1)).toBe(600n)
      // the freed 600 is all spendable
      await ledger.reserve(a.id, 600n, 'all')
      await reopen()
      expect(await account(a.id)).toMatchObject({ balance: 600n, held: 600n })
      const txs = await expectConsistent(a.id)
      expect(txs.filter((t) => t.type === 'withdrawal')).toHaveLength(1)
    })
  }

  it('a withdrawal of a wallet nobody linked moves nothing but still frees a given hold', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 100n, { type: 'credit' })
    const hold = await ledger.reserve(a.id, 50n, 'withdraw')
    expect(
      await ledger.chainWithdrawal({ address: W3, amount: 50n, ref: ref(), txHash: hash(8), holdId: hold.id }),
    ).toBeUndefined()
    expect(await account(a.id)).toMatchObject({ balance: 100n, held: 0n })
  })

  it('chainWithdrawCancelled credits the amount back once, also across a restart', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(9) })
    expect(await account(a.id)).toMatchObject({ balance: 0n })
    expect(funds(W1)).toBe(0n)
    const r = ref()
    const back = await ledger.chainWithdrawCancelled({ address: W1, amount: 1_000n, ref: r, txHash: hash(10) })
    expect(back).toMatchObject({ type: 'withdrawal', amount: 1_000n, balanceAfter: 1_000n, txHash: hash(10) })
    expect((await ledger.chainWithdrawCancelled({ address: W1, amount: 1_000n, ref: r, txHash: hash(10) }))?.id).toBe(
      back?.id,
    )
    await reopen()
    expect((await ledger.chainWithdrawCancelled({ address: W1, amount: 1_000n, ref: r, txHash: hash(10) }))?.id).toBe(
      back?.id,
    )
    expect(await account(a.id)).toMatchObject({ balance: 1_000n })
    expect(funds(W1)).toBe(1_000n)
    expect(await expectConsistent(a.id)).toHaveLength(3)
  })
})

describe('withdrawals and cancellations add up with usage not settled yet', () => {
  it('a cancel gives back no more than the withdrawal took (the rest pays for usage)', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    await charge(a.id, 800n) // paid on chain later, from W1: W1 backs only 200 more
    expect(funds(W1)).toBe(200n)
    // the payer asks the escrow directly for all of it, then cancels
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(11) })
    expect(await account(a.id)).toMatchObject({ balance: 0n })
    const back = await ledger.chainWithdrawCancelled({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(12) })
    expect(back?.amount).toBe(200n)
    // the escrow holds 1000 for W1, of which 800 go to the node: 200 back the account
    expect(await account(a.id)).toMatchObject({ balance: 200n })
    expect(funds(W1)).toBe(200n)
    await expectConsistent(a.id)
  })

  it("a cancel restores the wallet's funds only by what the withdrawal took from them", async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 5_000n, { type: 'credit' })
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    await charge(a.id, 800n) // W1 pays 800 on chain
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(13) })
    expect(funds(W1)).toBe(0n)
    await reopen()
    await ledger.chainWithdrawCancelled({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(14) })
    expect(await account(a.id)).toMatchObject({ balance: 5_200n })
    // W1's escrow balance after the 800 settle is 200: later usage must not count on more
    expect(funds(W1)).toBe(200n)
    await charge(a.id, 1_000n)
    expect(summary(ledger.pendingPayouts(100).slice(1))).toEqual([
      [W1, 200n],
      ['', 800n],
    ])
    await expectConsistent(a.id)
  })

  it('after a completed withdrawal, a later cancel gives back only what the later request took', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    await charge(a.id, 800n)
    // all of it requested (800 of it still owed to the node, settled from the thaw), then the
    // 200 left withdrawn on chain
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(20) })
    const withdrawn = ref()
    expect(await ledger.chainWithdrawn({ address: W1, amount: 200n, ref: withdrawn, txHash: hash(24) })).toBe(undefined)
    await deposit(W1, 500n)
    const second = await ledger.chainWithdrawal({ address: W1, amount: 300n, ref: ref(), txHash: hash(21) })
    expect(second?.amount).toBe(-300n)
    // the watcher re-reads the old Withdrawn after a crash: it must not forget the second request
    await reopen()
    await ledger.chainWithdrawn({ address: W1, amount: 200n, ref: withdrawn, txHash: hash(24) })
    const back = await ledger.chainWithdrawCancelled({ address: W1, amount: 300n, ref: ref(), txHash: hash(22) })
    expect(back?.amount).toBe(300n)
    expect(await account(a.id)).toMatchObject({ balance: 500n })
    expect(funds(W1)).toBe(500n)
    await expectConsistent(a.id)
  })

  it('two withdrawals and one cancel of both: all of it comes back, once', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    await ledger.chainWithdrawal({ address: W1, amount: 300n, ref: ref(), txHash: hash(15) })
    await ledger.chainWithdrawal({ address: W1, amount: 200n, ref: ref(), txHash: hash(16) })
    const r = ref()
    await ledger.chainWithdrawCancelled({ address: W1, amount: 500n, ref: r, txHash: hash(17) })
    await ledger.chainWithdrawCancelled({ address: W1, amount: 500n, ref: r, txHash: hash(17) })
    expect(await account(a.id)).toMatchObject({ balance: 1_000n })
    expect(funds(W1)).toBe(1_000n)
    // a second cycle works the same
    await ledger.chainWithdrawal({ address: W1, amount: 400n, ref: ref(), txHash: hash(18) })
    await ledger.chainWithdrawCancelled({ address: W1, amount: 400n, ref: ref(), txHash: hash(19) })
    expect(await account(a.id)).toMatchObject({ balance: 1_000n })
    expect(funds(W1)).toBe(1_000n)
    await expectConsistent(a.id)
  })

  it("an unlinked wallet's withdrawal waits with its deposits: linking credits what is left", async () => {
    const a = await newAccount()
    await deposit(W1, 1_000n)
    const w = ref()
    expect(await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: w, txHash: hash(20) })).toBeUndefined()
    expect(await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: w, txHash: hash(20) })).toBeUndefined()
    // kept in order across a restart: the withdrawal follows the deposit
    await reopen()
    const { credited } = await ledger.linkWallet(a.id, W1)
    expect(credited.map((t) => [t.type, t.amount])).toEqual([
      ['deposit', 1_000n],
      ['withdrawal', -1_000n],
    ])
    expect(await account(a.id)).toMatchObject({ balance: 0n })
    expect(funds(W1)).toBe(0n)
    // re-read by the watcher: nothing moves
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: w, txHash: hash(20) })
    expect(await account(a.id)).toMatchObject({ balance: 0n })
    await expectConsistent(a.id)
  })

  it("an unlinked wallet's withdrawal and its cancel: linking credits the deposits", async () => {
    const a = await newAccount()
    await deposit(W1, 1_000n)
    await ledger.chainWithdrawal({ address: W1, amount: 400n, ref: ref(), txHash: hash(21) })
    await ledger.chainWithdrawCancelled({ address: W1, amount: 400n, ref: ref(), txHash: hash(22) })
    await ledger.chainWithdrawal({ address: W1, amount: 100n, ref: ref(), txHash: hash(23) })
    await reopen()
    await ledger.linkWallet(a.id, W1)
    expect(await account(a.id)).toMatchObject({ balance: 900n })
    expect(funds(W1)).toBe(900n)
    expect((await expectConsistent(a.id)).map((t) => t.amount)).toEqual([-100n, 400n, -400n, 1_000n])
  })
})

describe('a withdrawal requested on chain directly while calls are in flight', () => {
  /** The call in flight: `held` reserved with a payout, to be charged `actual` (or released). */
  const inFlight = async (accountId: string, held: bigint) => {
    const requestId = `req-${++seq}`
    const hold = await ledger.reserve(accountId, held, requestId)
    return {
      hold,
      charge: (actual: bigint) =>
        ledger.settle(hold.id, actual, {
          model: 'm',
          requestId,
          tokensIn: 1,
          tokensOut: 2,
          payout: { node: '12D3KooWnode', payee: NODE_A, receipt: `{"r":"${requestId}"}` },
        }),
    }
  }
  const spendable = async (id: string): Promise<bigint> => {
    const a = await account(id)
    return a.balance - a.held
  }

  it('debits only what the call does not hold; the charge is paid from the deposit; withdrawn, the rest goes', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 6_699_863n)
    const call = await inFlight(a.id, 816n)
    // requestWithdraw(everything) from the wallet itself, seen by the watcher (no hold of the route)
    const tx = await ledger.chainWithdrawal({ address: W1, amount: 6_699_863n, ref: ref(), txHash: hash(30) })
    expect(tx?.amount).toBe(-6_699_047n)
    expect(await account(a.id)).toMatchObject({ balance: 816n, held: 816n })
    expect(await spendable(a.id)).toBe(0n)
    // the wallet's funds still back what the call holds: its charge is the wallet's, not the gateway's
    expect(funds(W1)).toBe(816n)
    await call.charge(800n)
    expect(summary(ledger.pendingPayouts(100))).toEqual([[W1, 800n]])
    expect(await account(a.id)).toMatchObject({ balance: 16n, held: 0n })
    await reopen()
    // settled from the thawing amount, the escrow pays out what is left: 6,699,863 − 800
    const done = await ledger.chainWithdrawn({ address: W1, amount: 6_699_063n, ref: ref(), txHash: hash(31) })
    expect(done).toMatchObject({ type: 'withdrawal', amount: -16n, balanceAfter: 0n, txHash: hash(31) })
    expect(await account(a.id)).toMatchObject({ balance: 0n, held: 0n })
    expect(funds(W1)).toBe(0n)
    expect(summary(ledger.pendingPayouts(100))).toEqual([[W1, 800n]])
    // the link is free again
    expect(await ledger.unlinkWallet(a.id, W1)).toBe(true)
    await expectConsistent(a.id)
  })

  it('the call ends without a charge: what it held leaves with the withdrawal', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    const call = await inFlight(a.id, 300n)
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(32) })
    expect(await account(a.id)).toMatchObject({ balance: 300n, held: 300n })
    await ledger.release(call.hold.id)
    await ledger.chainWithdrawn({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(33) })
    expect(await account(a.id)).toMatchObject({ balance: 0n, held: 0n })
    expect(funds(W1)).toBe(0n)
    expect(ledger.pendingPayouts(100)).toEqual([])
    await expectConsistent(a.id)
  })

  it('usage not settled before the withdrawal took its money is moved to the gateway, never below zero', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    await charge(a.id, 100n) // charged before the request, not settled yet
    const call = await inFlight(a.id, 300n)
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(34) })
    expect(await account(a.id)).toMatchObject({ balance: 300n, held: 300n })
    await call.charge(250n)
    expect(summary(ledger.pendingPayouts(100))).toEqual([
      [W1, 100n],
      [W1, 250n],
    ])
    // the gateway settled none of it within the thaw: the escrow paid out all 1000
    await ledger.chainWithdrawn({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(35) })
    expect(await account(a.id)).toMatchObject({ balance: 0n, held: 0n })
    expect(funds(W1)).toBe(0n)
    expect(summary(ledger.pendingPayouts(100))).toEqual([
      ['', 100n],
      ['', 250n],
    ])
    await expectConsistent(a.id)
  })

  it('usage settled from the thaw stays the wallet’s; only what was not settled in time moves to the gateway', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    const first = await inFlight(a.id, 100n)
    const second = await inFlight(a.id, 150n)
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(36) })
    expect(await account(a.id)).toMatchObject({ balance: 250n, held: 250n })
    await first.charge(100n)
    await second.charge(150n)
    // the first charge goes on chain (from the thawing amount), the second is not sent in time
    const [p1] = ledger.pendingPayouts(1)
    const batch = await ledger.createBatch([p1?.id as string])
    await ledger.chainWithdrawn({ address: W1, amount: 900n, ref: ref(), txHash: hash(37) })
    await ledger.settleBatch(batch.id, hash(38))
    expect(await account(a.id)).toMatchObject({ balance: 0n, held: 0n })
    expect(summary(ledger.pendingPayouts(100))).toEqual([['', 150n]])
    await expectConsistent(a.id)
  })

  it('less paid out than the ledger expects (another gateway of the wallet settled from it): a payout is split', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    const call = await inFlight(a.id, 300n)
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(39) })
    await call.charge(250n)
    // 100 left the thawing amount that this ledger did not settle: 900 paid out, and of the 250
    // this ledger charged to the wallet, the escrow holds only 100 more for it than it paid out
    await ledger.chainWithdrawn({ address: W1, amount: 900n, ref: ref(), txHash: hash(40) })
    expect(await account(a.id)).toMatchObject({ balance: 0n, held: 0n })
    expect(summary(ledger.pendingPayouts(100))).toEqual([
      [W1, 100n],
      ['', 150n],
    ])
    await reopen()
    expect(summary(ledger.pendingPayouts(100))).toEqual([
      [W1, 100n],
      ['', 150n],
    ])
    await expectConsistent(a.id)
  })

  it('a cancel during the thaw gives back what the request took; the charge stays the wallet’s', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    const call = await inFlight(a.id, 300n)
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(46) })
    await call.charge(100n)
    expect(await account(a.id)).toMatchObject({ balance: 200n, held: 0n })
    // settled from the thaw (900 left thawing), then cancelled: 900 available again
    await ledger.chainWithdrawCancelled({ address: W1, amount: 900n, ref: ref(), txHash: hash(47) })
    expect(await account(a.id)).toMatchObject({ balance: 900n })
    expect(funds(W1)).toBe(900n)
    expect(summary(ledger.pendingPayouts(100))).toEqual([[W1, 100n]])
    await expectConsistent(a.id)
  })

  it('admin credit covers what calls hold: the request takes all of the wallet', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 5_000n, { type: 'credit' })
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    const call = await inFlight(a.id, 800n)
    await ledger.chainWithdrawal({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(40) })
    expect(await account(a.id)).toMatchObject({ balance: 5_000n, held: 800n })
    expect(funds(W1)).toBe(0n)
    await call.charge(800n)
    expect(summary(ledger.pendingPayouts(100))).toEqual([['', 800n]])
    await ledger.chainWithdrawn({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(41) })
    expect(await account(a.id)).toMatchObject({ balance: 4_200n })
    await expectConsistent(a.id)
  })

  it('the watcher seeing a relayed request before the route: it takes the route’s hold, all of it is debited', async () => {
    const a = await newAccount()
    await ledger.linkWallet(a.id, W1)
    await deposit(W1, 1_000n)
    const hold = await ledger.reserve(a.id, 1_000n, `${withdrawalHoldPrefix(W1)}${Date.now()}`)
    const seen = { address: W1, amount: 1_000n, ref: ref(), txHash: hash(42) }
    await ledger.chainWithdrawal(seen)
    expect(await account(a.id)).toMatchObject({ balance: 0n, held: 0n })
    await ledger.chainWithdrawal({ ...seen, holdId: hold.id })
    expect(await account(a.id)).toMatchObject({ balance: 0n, held: 0n })
    await ledger.chainWithdrawn({ address: W1, amount: 1_000n, ref: ref(), txHash: hash(43) })
    expect(await account(a.id)).toMatchObject({ balance: 0n, held: 0n })
    expect(await expectConsistent(a.id)).toHaveLength(2)
  })

  it("an unlinked wallet's completed withdrawal waits too: linking squares it and frees the link", async () => {
    const a = await newAccount()
    await deposit(W1, 1_000n)
    await ledger.chainWithdrawal({ address: W1, amount: 600n, ref: ref(), txHash: hash(44) })
    const w = ref()
    expect(await ledger.chainWithdrawn({ address: W1, amount: 600n, ref: w, txHash: hash(45) })).toBeUndefined()
    await reopen()
    await ledger.linkWallet(a.id, W1)
    expect(await account(a.id)).toMatchObject({ balance: 400n })
    expect(funds(W1)).toBe(400n)
    // read again by the watcher: nothing moves
    await ledger.chainWithdrawn({ address: W1, amount: 600n, ref: w, txHash: hash(45) })
    expect(await account(a.id)).toMatchObject({ balance: 400n })
    await charge(a.id, 400n)
    expect(await ledger.unlinkWallet(a.id, W1)).toBe(true)
    await expectConsistent(a.id)
  })
})

describe('cursors', () => {
  it('are kept per name and persist across a restart', async () => {
    expect(ledger.cursor('escrow:1:0xa')).toBeUndefined()
    await ledger.setCursor('escrow:1:0xa', 10n)
    await ledger.setCursor('escrow:1:0xb', 20n)
    await ledger.setCursor('escrow:1:0xa', 12n)
    await reopen()
    expect(ledger.cursor('escrow:1:0xa')).toBe(12n)
    expect(ledger.cursor('escrow:1:0xb')).toBe(20n)
    expect(ledger.cursor('escrow:1:0xc')).toBeUndefined()
  })
})
