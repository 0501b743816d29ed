// The ledger is the money core of a paid API: it must never lose or double-count a unit and never
// let a balance go below zero, whatever the concurrency, and it must come back intact after a
// restart or a crash. Everything here runs on a real LevelLedger in a temp dir.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  type Account,
  DuplicateEmailError,
  type Hold,
  InsufficientBalanceError,
  LedgerError,
  type Transaction,
  UnknownAccountError,
  UnknownHoldError,
} from '../../src/ledger/ledger.ts'
import { LevelLedger } from '../../src/ledger/level-ledger.ts'
import { rng } from '../helpers/fixtures.ts'

const macrotasks = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r))
}

/** Math.min does not take bigints. */
const minBig = (a: bigint, b: bigint): bigint => (a < b ? a : b)

const usage = (requestId = 'req') => ({ model: 'm', requestId, tokensIn: 10, tokensOut: 20 })

let dir: string
let ledger: LevelLedger
let seq = 0

async function openLedger(): Promise<LevelLedger> {
  const l = new LevelLedger(dir)
  await l.open()
  return l
}

async function newAccount(l: LevelLedger = ledger): Promise<Account> {
  return l.createAccount({ email: `user${++seq}@example.com`, role: 'user', passwordHash: '' })
}

async function account(id: string, l: LevelLedger = ledger): Promise<Account> {
  const a = await l.getAccount(id)
  if (a == null) throw new Error(`account ${id} vanished`)
  return a
}

/** Every transaction of an account, newest first, by following the cursors. */
async function allTransactions(accountId: string, limit = 7, l: LevelLedger = ledger): Promise<Transaction[]> {
  const out: Transaction[] = []
  let cursor: string | undefined
  for (let pages = 0; pages < 10_000; pages++) {
    const page = await l.transactions(accountId, { limit, ...(cursor != null ? { cursor } : {}) })
    out.push(...page.transactions)
    if (page.nextCursor == null) return out
    cursor = page.nextCursor
  }
  throw new Error('pagination never ended')
}

/** The account's invariants: money in rows = balance, the newest row agrees, the chain adds up. */
async function expectConsistent(accountId: string, l: LevelLedger = ledger): Promise<Transaction[]> {
  const a = await account(accountId, l)
  const txs = await allTransactions(accountId, 7, l)
  expect(new Set(txs.map((t) => t.id)).size).toBe(txs.length)
  expect(txs.reduce((sum, t) => sum + t.amount, 0n)).toBe(a.balance)
  if (txs.length > 0) expect(txs[0]?.balanceAfter).toBe(a.balance)
  // oldest → newest: each balanceAfter is the previous one plus its amount, never negative
  let running = 0n
  for (const t of [...txs].reverse()) {
    running += t.amount
    expect(t.balanceAfter).toBe(running)
    expect(t.balanceAfter >= 0n).toBe(true)
  }
  const usageRows = txs.filter((t) => t.type === 'usage')
  expect(usageRows.reduce((s, t) => s - t.amount, 0n)).toBe(a.totalSpent)
  expect(usageRows.length).toBe(a.totalCalls)
  expect(a.balance >= 0n).toBe(true)
  expect(a.held >= 0n && a.held <= a.balance).toBe(true)
  return txs
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cluster-ledger-'))
  ledger = await openLedger()
})

afterEach(async () => {
  await ledger.close().catch(() => undefined)
  await rm(dir, { recursive: true, force: true })
})

describe('accounts', () => {
  it('creates an account with a normalised email and zeroed money', async () => {
    const a = await ledger.createAccount({ email: '  Alice@Example.COM ', role: 'admin', passwordHash: 'h' })
    expect(a).toMatchObject({ email: 'alice@example.com', role: 'admin', passwordHash: 'h' })
    expect(a).toMatchObject({ balance: 0n, held: 0n, totalSpent: 0n, totalCalls: 0 })
    expect(a).not.toHaveProperty('txSeq')
    expect(await ledger.getAccount(a.id)).toEqual(a)
    expect((await ledger.findAccountByEmail('ALICE@example.com  '))?.id).toBe(a.id)
    expect(await ledger.findAccountByEmail('bob@example.com')).toBeUndefined()
    expect(await ledger.getAccount('usr_nope')).toBeUndefined()
    expect(ledger.countAccounts()).toBe(1)
  })

  it('a duplicate email (in any case/spacing) is DuplicateEmailError', async () => {
    await ledger.createAccount({ email: 'a@b.c', role: 'user', passwordHash: '' })
    await expect(ledger.createAccount({ email: ' A@B.C', role: 'user', passwordHash: '' })).rejects.toBeInstanceOf(
      DuplicateEmailError,
    )
    expect(ledger.countAccounts()).toBe(1)
  })

  it('20 concurrent creates of the same email: exactly one succeeds', async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) =>
        ledger.createAccount({
          email: i % 2 ? 'Race@Example.com' : ' race@example.COM ',
          role: 'user',
          passwordHash: '',
        }),
      ),
    )
    const ok = results.filter((r) => r.status === 'fulfilled')
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
    expect(ok).toHaveLength(1)
    expect(failed).toHaveLength(19)
    for (const f of failed) expect(f.reason).toBeInstanceOf(DuplicateEmailError)
    expect(ledger.countAccounts()).toBe(1)
    expect((await ledger.findAccountByEmail('race@example.com'))?.id).toBe(
      (ok[0] as PromiseFulfilledResult<Account>).value.id,
    )
  })
})

describe('API keys', () => {
  it('addKey / findKey / listKeys / revokeKey', async () => {
    const a = await newAccount()
    const b = await newAccount()
    expect(ledger.countAccounts()).toBe(2)
    const k1 = await ledger.addKey(a.id, { lookup: 'L1', prefix: 'sk-cluster-aaaaaa', name: 'login', sealed: 'S.E.A' })
    const k2 = await ledger.addKey(a.id, { lookup: 'L2', prefix: 'sk-cluster-bbbbbb', name: 'ci' })
    const kb = await ledger.addKey(b.id, { lookup: 'LB', prefix: 'sk-cluster-cccccc', name: 'b' })
    expect(k1).toMatchObject({ accountId: a.id, prefix: 'sk-cluster-aaaaaa', name: 'login', sealed: 'S.E.A' })
    expect(k2).not.toHaveProperty('sealed')

    const found = await ledger.findKey('L1')
    expect(found?.key.id).toBe(k1.id)
    expect(found?.account.id).toBe(a.id)
    expect((await ledger.findKey('LB'))?.account.id).toBe(b.id)
    expect(await ledger.findKey('nope')).toBeUndefined()

    expect((await ledger.listKeys(a.id)).map((k) => k.id).sort()).toEqual([k1.id, k2.id].sort())
    expect((await ledger.listKeys(b.id)).map((k) => k.id)).toEqual([kb.id])

    // revoking someone else's key, or an unknown key, does nothing
    expect(await ledger.revokeKey(b.id, k1.id)).toBe(false)
    expect(await ledger.revokeKey(a.id, 'key_nope')).toBe(false)
    expect((await ledger.findKey('L1'))?.key.id).toBe(k1.id)

    expect(await ledger.revokeKey(a.id, k1.id)).toBe(true)
    expect(await ledger.revokeKey(a.id, k1.id)).toBe(false) // already revoked
    expect(await ledger.findKey('L1')).toBeUndefined()
    expect((await ledger.findKey('L2'))?.key.id).toBe(k2.id) // the other key still works

    const listed = await ledger.listKeys(a.id)
    const revoked = listed.find((k) => k.id === k1.id)
    expect(revoked).toBeDefined()
    expect(revoked?.prefix).toBe('sk-cluster-aaaaaa')
    expect(typeof revoked?.revokedAt).toBe('number')
    expect(revoked).not.toHaveProperty('sealed') // the sealed login key is gone with the revoke
    expect(listed.find((k) => k.id === k2.id)?.revokedAt).toBeUndefined()
  })

  it('addKey to an unknown account is UnknownAccountError', async () => {
    await expect(ledger.addKey('usr_nope', { lookup: 'L', prefix: 'p', name: 'n' })).rejects.toBeInstanceOf(
      UnknownAccountError,
    )
    expect(await ledger.findKey('L')).toBeUndefined()
  })
})

describe('credit', () => {
  it('adds money with one transaction row', async () => {
    const a = await newAccount()
    const tx = await ledger.credit(a.id, 2_500_000n, { type: 'deposit', memo: 'hello' })
    expect(tx).toMatchObject({
      accountId: a.id,
      type: 'deposit',
      amount: 2_500_000n,
      balanceAfter: 2_500_000n,
      memo: 'hello',
    })
    await ledger.credit(a.id, 1n, { type: 'credit' })
    expect((await account(a.id)).balance).toBe(2_500_001n)
    expect(await expectConsistent(a.id)).toHaveLength(2)
  })

  it('refuses zero and negative amounts, and unknown accounts, moving nothing', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 10n, { type: 'credit' })
    await expect(ledger.credit(a.id, 0n, { type: 'credit' })).rejects.toBeInstanceOf(LedgerError)
    await expect(ledger.credit(a.id, -5n, { type: 'credit' })).rejects.toBeInstanceOf(LedgerError)
    await expect(ledger.credit('usr_nope', 5n, { type: 'credit' })).rejects.toBeInstanceOf(UnknownAccountError)
    expect((await account(a.id)).balance).toBe(10n)
    expect(await expectConsistent(a.id)).toHaveLength(1)
  })

  it('the same ref credits once, sequentially, and returns the first transaction', async () => {
    const a = await newAccount()
    const first = await ledger.credit(a.id, 700n, { type: 'deposit', ref: 'chain:0xabc' })
    const second = await ledger.credit(a.id, 700n, { type: 'deposit', ref: 'chain:0xabc' })
    expect(second.id).toBe(first.id)
    expect(second.amount).toBe(700n)
    expect((await account(a.id)).balance).toBe(700n)
    expect(await expectConsistent(a.id)).toHaveLength(1)
  })

  it('the same ref credits once under 25 concurrent credits', async () => {
    const a = await newAccount()
    const txs = await Promise.all(
      Array.from({ length: 25 }, () => ledger.credit(a.id, 1_000n, { type: 'deposit', ref: 'chain:0xdef' })),
    )
    expect(new Set(txs.map((t) => t.id)).size).toBe(1)
    expect((await account(a.id)).balance).toBe(1_000n)
    expect(await expectConsistent(a.id)).toHaveLength(1)
    // a different ref is a different credit
    await ledger.credit(a.id, 1_000n, { type: 'deposit', ref: 'chain:0xfff' })
    expect((await account(a.id)).balance).toBe(2_000n)
  })

  // BUG: refs are global ("the same ref credits once only") but the check runs under the per-account
  // lock, so the same ref credited to two accounts at once is credited to both.
  it('the same ref credited concurrently to two accounts is credited once in total', async () => {
    const a = await newAccount()
    const b = await newAccount()
    await Promise.allSettled([
      ledger.credit(a.id, 5_000_000n, { type: 'deposit', ref: 'chain:0x123' }),
      ledger.credit(b.id, 5_000_000n, { type: 'deposit', ref: 'chain:0x123' }),
    ])
    const total = (await account(a.id)).balance + (await account(b.id)).balance
    expect(total).toBe(5_000_000n)
  })
})

describe('reserve / settle / release', () => {
  it('reserve holds spendable money without moving the balance or writing a row', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    const hold = await ledger.reserve(a.id, 300n, 'r1')
    expect(hold).toMatchObject({ accountId: a.id, amount: 300n, requestId: 'r1' })
    expect(await account(a.id)).toMatchObject({ balance: 1_000n, held: 300n })
    expect(await allTransactions(a.id)).toHaveLength(1)
    // a zero hold is allowed, a negative one is not
    await ledger.release((await ledger.reserve(a.id, 0n, 'r0')).id)
    await expect(ledger.reserve(a.id, -1n, 'neg')).rejects.toBeInstanceOf(LedgerError)
    await expect(ledger.reserve('usr_nope', 1n, 'x')).rejects.toBeInstanceOf(UnknownAccountError)
    expect(await account(a.id)).toMatchObject({ balance: 1_000n, held: 300n })
  })

  it('InsufficientBalanceError carries available (balance − held) and required', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 100n, { type: 'credit' })
    await ledger.reserve(a.id, 30n, 'r1')
    const err = await ledger.reserve(a.id, 80n, 'r2').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(InsufficientBalanceError)
    expect(err).toMatchObject({ available: 70n, required: 80n })
    // exactly the available amount is fine
    await ledger.reserve(a.id, 70n, 'r3')
    expect(await account(a.id)).toMatchObject({ balance: 100n, held: 100n })
    expect(await ledger.reserve(a.id, 1n, 'r4').catch((e: unknown) => e)).toMatchObject({ available: 0n, required: 1n })
    const empty = await newAccount()
    expect(await ledger.reserve(empty.id, 5n, 'r5').catch((e: unknown) => e)).toMatchObject({
      available: 0n,
      required: 5n,
    })
  })

  it('settle charges the actual cost when below the hold and frees the rest', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    const hold = await ledger.reserve(a.id, 400n, 'req-1')
    const tx = await ledger.settle(hold.id, 123n, { model: 'llama', requestId: 'req-1', tokensIn: 5, tokensOut: 7 })
    expect(tx).toMatchObject({
      type: 'usage',
      amount: -123n,
      balanceAfter: 877n,
      model: 'llama',
      requestId: 'req-1',
      tokensIn: 5,
      tokensOut: 7,
    })
    expect(await account(a.id)).toMatchObject({ balance: 877n, held: 0n, totalSpent: 123n, totalCalls: 1 })
    expect(ledger.totalCalls()).toBe(1)
    await expectConsistent(a.id)
  })

  it('settle never charges more than the hold', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    const hold = await ledger.reserve(a.id, 400n, 'r')
    const tx = await ledger.settle(hold.id, 9_999n, usage())
    expect(tx.amount).toBe(-400n)
    expect(await account(a.id)).toMatchObject({ balance: 600n, held: 0n, totalSpent: 400n })
    // and a zero actual is a free call, still counted
    const h2 = await ledger.reserve(a.id, 100n, 'r2')
    expect((await ledger.settle(h2.id, 0n, usage())).amount).toBe(0n)
    expect(await account(a.id)).toMatchObject({ balance: 600n, held: 0n, totalCalls: 2 })
    await expect(ledger.settle((await ledger.reserve(a.id, 1n, 'r3')).id, -1n, usage())).rejects.toBeInstanceOf(
      LedgerError,
    )
    await expectConsistent(a.id)
  })

  it('settle of an unknown or already-settled hold throws UnknownHoldError and charges nothing', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    await expect(ledger.settle('hold_nope', 10n, usage())).rejects.toBeInstanceOf(UnknownHoldError)
    const hold = await ledger.reserve(a.id, 100n, 'r')
    await ledger.settle(hold.id, 60n, usage())
    await expect(ledger.settle(hold.id, 60n, usage())).rejects.toBeInstanceOf(UnknownHoldError)
    expect(await account(a.id)).toMatchObject({ balance: 940n, held: 0n, totalSpent: 60n, totalCalls: 1 })
    expect(await expectConsistent(a.id)).toHaveLength(2)
  })

  it('settle of a released hold throws UnknownHoldError and charges nothing', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    const hold = await ledger.reserve(a.id, 100n, 'r')
    await ledger.release(hold.id)
    await expect(ledger.settle(hold.id, 50n, usage())).rejects.toBeInstanceOf(UnknownHoldError)
    expect(await account(a.id)).toMatchObject({ balance: 1_000n, held: 0n, totalCalls: 0 })
  })

  it('10 concurrent settles of one hold: exactly one charges', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    const hold = await ledger.reserve(a.id, 100n, 'r')
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => ledger.settle(hold.id, 80n, usage())))
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1)
    for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(UnknownHoldError)
    expect(await account(a.id)).toMatchObject({ balance: 920n, held: 0n, totalSpent: 80n, totalCalls: 1 })
    await expectConsistent(a.id)
  })

  it('release frees the hold without charging; releasing concurrently twice is harmless', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    const h1 = await ledger.reserve(a.id, 100n, 'r1')
    const h2 = await ledger.reserve(a.id, 200n, 'r2')
    await ledger.release(h1.id)
    expect(await account(a.id)).toMatchObject({ balance: 1_000n, held: 200n })
    await Promise.all([ledger.release(h2.id), ledger.release(h2.id)])
    expect(await account(a.id)).toMatchObject({ balance: 1_000n, held: 0n, totalCalls: 0 })
    expect(await allTransactions(a.id)).toHaveLength(1) // releases write no rows
  })

  // BUG: release() first reads the hold OUTSIDE the lock and throws UnknownHoldError when it is gone,
  // so a second release after the first has finished rejects (concurrently it resolves — the inner
  // `if (raw == null) return` shows idempotence was intended). Money is unaffected either way.
  it('releasing the same hold twice in a row is harmless (resolves, changes nothing)', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    const h = await ledger.reserve(a.id, 100n, 'r1')
    await ledger.release(h.id)
    const second = await ledger.release(h.id).then(
      () => 'resolved',
      (e: unknown) => e,
    )
    expect(await account(a.id)).toMatchObject({ balance: 1_000n, held: 0n })
    expect(second).toBe('resolved')
  })

  it('release after settle does not refund or double-free', async () => {
    const a = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    const h = await ledger.reserve(a.id, 100n, 'r1')
    const other = await ledger.reserve(a.id, 50n, 'r2')
    await ledger.settle(h.id, 70n, usage())
    await ledger.release(h.id).catch((e: unknown) => expect(e).toBeInstanceOf(UnknownHoldError))
    // the other open hold is untouched: held did not go down a second time
    expect(await account(a.id)).toMatchObject({ balance: 930n, held: 50n, totalSpent: 70n })
    await ledger.release(other.id)
    expect(await account(a.id)).toMatchObject({ balance: 930n, held: 0n })
  })
})

describe('concurrency', () => {
  it('50 units of balance, 200 concurrent reserves: exactly 50 succeed; settling all empties the account', async () => {
    const price = 12_345n
    const a = await newAccount()
    await ledger.credit(a.id, 50n * price, { type: 'deposit' })

    let done = false
    let samples = 0
    const violations: string[] = []
    const sampler = (async () => {
      // At least a few samples even when every change completes within one tick.
      while (!done || samples < 10) {
        const s = await account(a.id)
        samples++
        if (s.balance < 0n || s.held < 0n || s.held > s.balance || s.totalSpent + s.balance !== 50n * price) {
          violations.push(`balance ${s.balance} held ${s.held} spent ${s.totalSpent}`)
        }
        await macrotasks(1)
      }
    })()

    try {
      const results = await Promise.allSettled(
        Array.from({ length: 200 }, (_, i) => ledger.reserve(a.id, price, `req-${i}`)),
      )
      const holds = results
        .filter((r): r is PromiseFulfilledResult<Hold> => r.status === 'fulfilled')
        .map((r) => r.value)
      const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
      expect(holds).toHaveLength(50)
      expect(refused).toHaveLength(150)
      for (const r of refused) {
        expect(r.reason).toBeInstanceOf(InsufficientBalanceError)
        expect(r.reason).toMatchObject({ required: price })
        expect((r.reason as InsufficientBalanceError).available < price).toBe(true)
      }
      expect(await account(a.id)).toMatchObject({ balance: 50n * price, held: 50n * price })

      // settle them all at once; half report more than was held (capped at the hold)
      const txs = await Promise.all(
        holds.map((h, i) => ledger.settle(h.id, i % 2 ? price : price * 3n, usage(h.requestId))),
      )
      for (const t of txs) expect(t.amount).toBe(-price)
    } finally {
      done = true
      await sampler
    }

    expect(violations).toEqual([])
    // Every change is applied to the ledger's state in one synchronous step, so the sampler can
    // only ever see whole states: what it checks is that none of them broke the invariants above.
    expect(await account(a.id)).toMatchObject({ balance: 0n, held: 0n, totalSpent: 50n * price, totalCalls: 50 })
    expect(ledger.totalCalls()).toBe(50)
    const txs = await expectConsistent(a.id)
    expect(txs).toHaveLength(51)
    await expect(ledger.reserve(a.id, 1n, 'after')).rejects.toBeInstanceOf(InsufficientBalanceError)
  })

  it('a seeded random mix of credits, reserves, settles and releases keeps every account exact', async () => {
    const next = rng(20240611)
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)] as T
    const accounts = [await newAccount(), await newAccount()]
    const ids = accounts.map((a) => a.id)
    const refAmount = new Map<string, bigint>() // each ref always carries the same amount
    const refsUsed = new Map<string, string>() // ref → account it was first scheduled for

    type Op =
      | { kind: 'credit'; account: string; amount: bigint; ref?: string; delay: number }
      | { kind: 'reserve'; account: string; amount: bigint; delay: number }
      | { kind: 'settle'; target: number; actual: bigint; delay: number }
      | { kind: 'release'; target: number; delay: number }
    const ops: Op[] = []
    const reserveIdx: number[] = []
    for (let i = 0; i < 600; i++) {
      const delay = Math.floor(next() * 6)
      const r = next()
      const acct = pick(ids)
      if (r < 0.22) {
        let ref: string | undefined
        if (next() < 0.4) {
          ref = `ref-${Math.floor(next() * 15)}`
          // a ref belongs to one account (cross-account refs are covered by their own test)
          const owner = refsUsed.get(ref) ?? acct
          refsUsed.set(ref, owner)
          if (!refAmount.has(ref)) refAmount.set(ref, BigInt(1 + Math.floor(next() * 5_000)))
          ops.push({ kind: 'credit', account: owner, amount: refAmount.get(ref) as bigint, ref, delay })
        } else {
          ops.push({ kind: 'credit', account: acct, amount: BigInt(1 + Math.floor(next() * 5_000)), delay })
        }
      } else if (r < 0.6 || reserveIdx.length === 0) {
        reserveIdx.push(ops.length)
        ops.push({ kind: 'reserve', account: acct, amount: BigInt(Math.floor(next() * 3_000)), delay })
      } else if (r < 0.85) {
        ops.push({ kind: 'settle', target: pick(reserveIdx), actual: BigInt(Math.floor(next() * 4_000)), delay })
      } else {
        ops.push({ kind: 'release', target: pick(reserveIdx), delay })
      }
    }

    const unexpected: unknown[] = []
    const expectedErrors = (e: unknown): undefined => {
      if (!(e instanceof InsufficientBalanceError || e instanceof UnknownHoldError)) unexpected.push(e)
      return undefined
    }
    // one deferred per reserve, so a settle/release scheduled on it can wait for it whenever it runs
    const holdOf = new Map<number, { promise: Promise<Hold | undefined>; resolve: (h: Hold | undefined) => void }>()
    for (const i of reserveIdx) {
      let resolve!: (h: Hold | undefined) => void
      const promise = new Promise<Hold | undefined>((r) => {
        resolve = r
      })
      holdOf.set(i, { promise, resolve })
    }
    const holdFor = (i: number): Promise<Hold | undefined> => holdOf.get(i)?.promise ?? Promise.resolve(undefined)
    const settledTx = new Map<string, Transaction[]>() // hold id → successful settles
    const released = new Set<string>()
    const creditedPlain = new Map<string, bigint>(ids.map((id) => [id, 0n]))

    let done = false
    const violations: string[] = []
    const sampler = (async () => {
      while (!done) {
        for (const id of ids) {
          const s = await account(id)
          if (s.balance < 0n || s.held < 0n || s.held > s.balance) violations.push(`${id}: ${s.balance}/${s.held}`)
        }
        await macrotasks(1)
      }
    })()

    const runs = ops.map(async (op, i) => {
      await macrotasks(op.delay)
      switch (op.kind) {
        case 'credit': {
          const tx = await ledger.credit(op.account, op.amount, {
            type: op.ref ? 'deposit' : 'credit',
            ...(op.ref ? { ref: op.ref } : {}),
          })
          expect(tx.amount).toBe(op.amount)
          if (op.ref == null) creditedPlain.set(op.account, (creditedPlain.get(op.account) ?? 0n) + op.amount)
          return
        }
        case 'reserve': {
          const hold = await ledger.reserve(op.account, op.amount, `req-${i}`).catch(expectedErrors)
          holdOf.get(i)?.resolve(hold)
          return
        }
        case 'settle': {
          const hold = await holdFor(op.target)
          if (hold == null) return
          const tx = await ledger.settle(hold.id, op.actual, usage(`req-${op.target}`)).catch(expectedErrors)
          if (tx == null) return
          expect(tx.amount).toBe(-minBig(op.actual, hold.amount))
          expect(tx.accountId).toBe(hold.accountId)
          settledTx.set(hold.id, [...(settledTx.get(hold.id) ?? []), tx])
          return
        }
        case 'release': {
          const hold = await holdFor(op.target)
          if (hold == null) return
          const ok = await ledger.release(hold.id).then(() => true, expectedErrors)
          if (ok) released.add(hold.id)
          return
        }
      }
    })
    try {
      await Promise.all(runs)
    } finally {
      done = true
      await sampler
    }

    expect(unexpected).toEqual([])
    expect(violations).toEqual([])

    const holds = (await Promise.all(reserveIdx.map(holdFor))).filter((h): h is Hold => h != null)
    expect(holds.length).toBeGreaterThan(20) // the schedule really did reserve
    expect(holds.length).toBeLessThan(reserveIdx.length) // and some were refused for want of balance
    for (const [, txs] of settledTx) expect(txs).toHaveLength(1) // never settled twice
    expect(settledTx.size).toBeGreaterThan(10)

    let openCount = 0
    for (const id of ids) {
      const open = holds.filter((h) => h.accountId === id && !settledTx.has(h.id) && !released.has(h.id))
      openCount += open.length
      const charges = holds
        .filter((h) => h.accountId === id)
        .flatMap((h) => settledTx.get(h.id) ?? [])
        .reduce((s, t) => s - t.amount, 0n)
      let credits = creditedPlain.get(id) ?? 0n
      for (const [ref, owner] of refsUsed) if (owner === id) credits += refAmount.get(ref) ?? 0n
      const a = await account(id)
      expect(a.held).toBe(open.reduce((s, h) => s + h.amount, 0n))
      expect(a.balance).toBe(credits - charges)
      expect(a.totalSpent).toBe(charges)
      await expectConsistent(id)
    }

    // close out whatever is still open, then every account is at rest and still exact
    expect(await ledger.reconcileHolds()).toBe(openCount)
    let calls = 0
    for (const id of ids) {
      const a = await account(id)
      expect(a.held).toBe(0n)
      calls += a.totalCalls
      await expectConsistent(id)
    }
    expect(ledger.totalCalls()).toBe(calls)
    expect(calls).toBe(settledTx.size)
  })
})

describe('transactions()', () => {
  it('pages newest first with no gaps or repeats, and nextCursor null at the end', async () => {
    const a = await newAccount()
    const other = await newAccount()
    for (let i = 1; i <= 23; i++) await ledger.credit(a.id, BigInt(i), { type: 'credit', memo: `#${i}` })
    await ledger.credit(other.id, 999n, { type: 'credit' })

    const pages: Transaction[][] = []
    let cursor: string | undefined
    for (;;) {
      const page = await ledger.transactions(a.id, { limit: 5, ...(cursor != null ? { cursor } : {}) })
      pages.push(page.transactions)
      if (page.nextCursor == null) break
      expect(page.transactions).toHaveLength(5)
      cursor = page.nextCursor
    }
    expect(pages.map((p) => p.length)).toEqual([5, 5, 5, 5, 3])
    const amounts = pages.flat().map((t) => t.amount)
    expect(amounts).toEqual(Array.from({ length: 23 }, (_, i) => BigInt(23 - i)))
    expect(pages.flat().every((t) => t.accountId === a.id)).toBe(true)
  })

  it('an exact multiple of the limit ends with nextCursor null, not an empty page', async () => {
    const a = await newAccount()
    for (let i = 1; i <= 10; i++) await ledger.credit(a.id, BigInt(i), { type: 'credit' })
    const p1 = await ledger.transactions(a.id, { limit: 5 })
    expect(p1.nextCursor).not.toBeNull()
    const p2 = await ledger.transactions(a.id, { limit: 5, cursor: p1.nextCursor as string })
    expect(p2.transactions.map((t) => t.amount)).toEqual([5n, 4n, 3n, 2n, 1n])
    expect(p2.nextCursor).toBeNull()
    expect(await ledger.transactions(a.id, { limit: 10 })).toMatchObject({ nextCursor: null })
  })

  it('an account with no transactions is one empty page', async () => {
    const a = await newAccount()
    expect(await ledger.transactions(a.id, { limit: 10 })).toEqual({ transactions: [], nextCursor: null })
    expect(await ledger.transactions('usr_nope', { limit: 10 })).toEqual({ transactions: [], nextCursor: null })
  })

  it('clamps the limit to 1..100', async () => {
    const a = await newAccount()
    for (let i = 1; i <= 130; i++) await ledger.credit(a.id, BigInt(i), { type: 'credit' })
    const big = await ledger.transactions(a.id, { limit: 1_000 })
    expect(big.transactions).toHaveLength(100)
    expect(big.transactions[0]?.amount).toBe(130n)
    expect(big.nextCursor).not.toBeNull()
    const rest = await ledger.transactions(a.id, { limit: 1_000, cursor: big.nextCursor as string })
    expect(rest.transactions.map((t) => t.amount)).toEqual(Array.from({ length: 30 }, (_, i) => BigInt(30 - i)))
    expect(rest.nextCursor).toBeNull()
    for (const limit of [0, -5]) {
      const one = await ledger.transactions(a.id, { limit })
      expect(one.transactions.map((t) => t.amount)).toEqual([130n])
      expect(one.nextCursor).not.toBeNull()
    }
    expect((await ledger.transactions(a.id, { limit: 1 })).transactions).toHaveLength(1)
    expect((await ledger.transactions(a.id, { limit: 100 })).transactions).toHaveLength(100)
  })

  it('a cursor never reaches into another account', async () => {
    const a = await newAccount()
    const b = await newAccount()
    for (let i = 1; i <= 3; i++) await ledger.credit(a.id, BigInt(i), { type: 'credit' })
    for (let i = 1; i <= 3; i++) await ledger.credit(b.id, 100n + BigInt(i), { type: 'credit' })
    for (const cursor of ['zzzzzzzzzzzzzzzz', '\uffff', '"', '999999999999', '']) {
      const page = await ledger.transactions(a.id, { limit: 100, cursor })
      expect(
        page.transactions.every((t) => t.accountId === a.id),
        JSON.stringify(cursor),
      ).toBe(true)
    }
  })
})

describe('persistence', () => {
  it('close and reopen: accounts, balances, keys, transactions and counters come back', async () => {
    const a = await ledger.createAccount({ email: 'p@x.io', role: 'admin', passwordHash: 'hash' })
    const b = await newAccount()
    await ledger.credit(a.id, 10_000n, { type: 'deposit', ref: 'dep-1' })
    await ledger.credit(b.id, 500n, { type: 'credit' })
    const key = await ledger.addKey(a.id, { lookup: 'LK', prefix: 'sk-cluster-zzzzzz', name: 'k', sealed: 'x.y.z' })
    const gone = await ledger.addKey(a.id, { lookup: 'LG', prefix: 'sk-cluster-gggggg', name: 'g' })
    await ledger.revokeKey(a.id, gone.id)
    for (let i = 0; i < 3; i++) await ledger.settle((await ledger.reserve(a.id, 1_000n, `r${i}`)).id, 250n, usage())
    await ledger.settle((await ledger.reserve(b.id, 100n, 'rb')).id, 100n, usage())
    const beforeA = await account(a.id)
    const beforeB = await account(b.id)
    const txsBefore = await allTransactions(a.id)
    expect(ledger.totalCalls()).toBe(4)
    await ledger.close()

    ledger = await openLedger()
    expect(ledger.countAccounts()).toBe(2)
    expect(ledger.totalCalls()).toBe(4)
    expect(await account(a.id)).toEqual(beforeA)
    expect(await account(b.id)).toEqual(beforeB)
    expect(beforeA).toMatchObject({ balance: 9_250n, held: 0n, totalSpent: 750n, totalCalls: 3 })
    expect((await ledger.findAccountByEmail('P@X.IO'))?.id).toBe(a.id)
    expect(await allTransactions(a.id)).toEqual(txsBefore)
    expect((await ledger.findKey('LK'))?.key).toEqual(key)
    expect(await ledger.findKey('LG')).toBeUndefined()
    expect((await ledger.listKeys(a.id)).map((k) => k.id).sort()).toEqual([key.id, gone.id].sort())
    // the ref is still remembered, the email is still taken, and new rows continue the sequence
    await ledger.credit(a.id, 10_000n, { type: 'deposit', ref: 'dep-1' })
    await expect(ledger.createAccount({ email: 'p@x.io', role: 'user', passwordHash: '' })).rejects.toBeInstanceOf(
      DuplicateEmailError,
    )
    const tx = await ledger.credit(a.id, 1n, { type: 'credit' })
    expect((await ledger.transactions(a.id, { limit: 1 })).transactions[0]?.id).toBe(tx.id)
    expect(await expectConsistent(a.id)).toHaveLength(txsBefore.length + 1)
    await newAccount()
    expect(ledger.countAccounts()).toBe(3)
  })

  it('reconcileHolds after a crash frees the orphaned holds without touching the balance', async () => {
    const a = await newAccount()
    const b = await newAccount()
    await ledger.credit(a.id, 1_000n, { type: 'credit' })
    await ledger.credit(b.id, 1_000n, { type: 'credit' })
    await ledger.settle((await ledger.reserve(a.id, 100n, 'done')).id, 40n, usage())
    await ledger.reserve(a.id, 200n, 'r1')
    await ledger.reserve(a.id, 300n, 'r2')
    await ledger.reserve(b.id, 999n, 'r3')
    const txA = await allTransactions(a.id)
    const txB = await allTransactions(b.id)
    await ledger.close() // "crash": the three holds are never settled

    ledger = await openLedger()
    expect(await account(a.id)).toMatchObject({ balance: 960n, held: 500n })
    expect(await account(b.id)).toMatchObject({ balance: 1_000n, held: 999n })
    expect(await ledger.reconcileHolds()).toBe(3)
    expect(await account(a.id)).toMatchObject({ balance: 960n, held: 0n, totalSpent: 40n, totalCalls: 1 })
    expect(await account(b.id)).toMatchObject({ balance: 1_000n, held: 0n, totalCalls: 0 })
    expect(await allTransactions(a.id)).toEqual(txA)
    expect(await allTransactions(b.id)).toEqual(txB)
    expect(await ledger.reconcileHolds()).toBe(0)
    // the freed money is spendable again
    await ledger.reserve(b.id, 1_000n, 'again')
  })
})

describe('x402: a payment that fails to settle', () => {
  const PRICE = 3_000n
  let n = 0
  const pay = async (payer: string, amount: bigint, debtPaid: bigint, requestId: string) => {
    const nonce = `0x${(++n).toString(16).padStart(64, '0')}`
    const base = { payer, amount, requestId, network: 'eip155:31337', validBefore: 4_000_000_000 }
    expect(await ledger.recordX402Payment({ nonce, ...base }, debtPaid)).toBe(true)
    return nonce
  }
  const payerAccount = async (payer: string): Promise<Account> => account((await ledger.x402Account(payer)).id)

  it('not served (its hold released): the credit is taken back when the hold ends; nothing is owed', async () => {
    const payer = '0x00000000000000000000000000000000000000a1'
    const nonce = await pay(payer, PRICE, 0n, 'req-1')
    const hold = await ledger.reserve((await payerAccount(payer)).id, PRICE, 'req-1')
    // The settlement fails while the request still holds the money: nothing can be told yet.
    await ledger.x402Failed(payer, nonce, 'insufficient_funds')
    expect((await payerAccount(payer)).balance).toBe(PRICE)
    await ledger.release(hold.id)
    expect(await payerAccount(payer)).toMatchObject({ balance: 0n, held: 0n })
    expect(ledger.x402Debt(payer)).toBe(0n)
    expect(ledger.x402Credit(payer)).toBe(0n)
    await expectConsistent((await payerAccount(payer)).id)
  })

  it('served (its hold charged): the payer owes it, and no credit is left over', async () => {
    const payer = '0x00000000000000000000000000000000000000a2'
    const nonce = await pay(payer, PRICE, 0n, 'req-2')
    const hold = await ledger.reserve((await payerAccount(payer)).id, PRICE, 'req-2')
    await ledger.x402Failed(payer, nonce, 'insufficient_funds')
    await ledger.settle(hold.id, PRICE, usage('req-2'))
    expect((await payerAccount(payer)).balance).toBe(0n)
    expect(ledger.x402Debt(payer)).toBe(PRICE)
    expect(ledger.x402Credit(payer)).toBe(0n)
    // Failed after the request ended (a reconciliation): the same.
    const later = await pay(payer, 2n * PRICE, PRICE, 'req-3')
    const h3 = await ledger.reserve((await payerAccount(payer)).id, PRICE, 'req-3')
    await ledger.settle(h3.id, PRICE, usage('req-3'))
    expect(ledger.x402Debt(payer)).toBe(0n)
    await ledger.x402Failed(payer, later, 'not settled before the authorization expired')
    // It was to pay the earlier debt and this request: both owed again.
    expect(ledger.x402Debt(payer)).toBe(2n * PRICE)
    expect(ledger.x402Credit(payer)).toBe(0n)
    await expectConsistent((await payerAccount(payer)).id)
  })

  it('a payment that paid off a debt and then failed unserved: the debt is back, nothing more', async () => {
    const payer = '0x00000000000000000000000000000000000000a3'
    const first = await pay(payer, PRICE, 0n, 'req-4')
    const h4 = await ledger.reserve((await payerAccount(payer)).id, PRICE, 'req-4')
    await ledger.settle(h4.id, PRICE, usage('req-4'))
    await ledger.x402Failed(payer, first, 'insufficient_funds')
    expect(ledger.x402Debt(payer)).toBe(PRICE)
    const second = await pay(payer, 2n * PRICE, PRICE, 'req-5')
    const h5 = await ledger.reserve((await payerAccount(payer)).id, PRICE, 'req-5')
    await ledger.x402Failed(payer, second, 'insufficient_funds')
    await ledger.release(h5.id)
    expect(ledger.x402Debt(payer)).toBe(PRICE)
    expect((await payerAccount(payer)).balance).toBe(0n)
  })

  it('credit left by a request that failed after its payment settled is the payer’s to spend', async () => {
    const payer = '0x00000000000000000000000000000000000000a4'
    const nonce = await pay(payer, PRICE, 0n, 'req-6')
    const hold = await ledger.reserve((await payerAccount(payer)).id, PRICE, 'req-6')
    await ledger.x402Settled(payer, nonce, '0xabc')
    await ledger.release(hold.id)
    expect(ledger.x402Credit(payer)).toBe(PRICE)
    const h = await ledger.reserve((await payerAccount(payer)).id, PRICE, 'req-7')
    expect(ledger.x402Credit(payer)).toBe(0n)
    await ledger.settle(h.id, PRICE, usage('req-7'))
    expect(ledger.x402Credit(payer)).toBe(0n)
    expect(ledger.x402Credit('0x00000000000000000000000000000000000000ff')).toBe(0n)
  })

  it('a crash between the failure and the end of its hold: taken back on the next start', async () => {
    const payer = '0x00000000000000000000000000000000000000a5'
    const nonce = await pay(payer, PRICE, 0n, 'req-8')
    await ledger.reserve((await payerAccount(payer)).id, PRICE, 'req-8')
    await ledger.x402Failed(payer, nonce, 'insufficient_funds')
    await ledger.close()
    ledger = await openLedger()
    // Start-up frees every hold (the requests died with the process): the credit goes with it.
    await ledger.reconcileHolds()
    expect(await payerAccount(payer)).toMatchObject({ balance: 0n, held: 0n })
    expect(ledger.x402Debt(payer)).toBe(0n)
  })
})
