// The embedded ledger on level: one database in the gateway's data dir, mirrored in memory, with
// every change checked synchronously and written by group commit — fast under contention, exact.
import { randomUUID } from 'node:crypto'
import { Level } from 'level'
import {
  type Account,
  type ApiKeyRecord,
  DuplicateEmailError,
  type Hold,
  InsufficientBalanceError,
  type Ledger,
  LedgerError,
  type Role,
  type Transaction,
  type TransactionPage,
  UnknownAccountError,
  UnknownHoldError,
  type UsageRecord,
} from './ledger.ts'

type Json = Record<string, unknown>
type Batch = Array<{ type: 'put'; key: string; value: string } | { type: 'del'; key: string }>

// Key layout (one keyspace, prefixes keep the kinds apart and ordered):
//   a!<accountId>               account
//   e!<email>                   accountId
//   k!<lookup>                  api key record
//   ka!<accountId>!<keyId>      lookup (the account's keys)
//   h!<holdId>                  open hold
//   t!<accountId>!<seq:12>      transaction (seq grows per account; newest first = reverse)
//   r!<ref>                     transaction id that a ref credited
const SEQ_WIDTH = 12

function accountToJson(a: Account & { txSeq: number }): string {
  return JSON.stringify({
    ...a,
    balance: a.balance.toString(),
    held: a.held.toString(),
    totalSpent: a.totalSpent.toString(),
  })
}

function accountFromJson(s: string): Account & { txSeq: number } {
  const j = JSON.parse(s) as Json
  return {
    ...(j as unknown as Account & { txSeq: number }),
    balance: BigInt(j.balance as string),
    held: BigInt(j.held as string),
    totalSpent: BigInt(j.totalSpent as string),
  }
}

function txToJson(t: Transaction): string {
  return JSON.stringify({ ...t, amount: t.amount.toString(), balanceAfter: t.balanceAfter.toString() })
}

function txFromJson(s: string): Transaction {
  const j = JSON.parse(s) as Json
  return {
    ...(j as unknown as Transaction),
    amount: BigInt(j.amount as string),
    balanceAfter: BigInt(j.balanceAfter as string),
  }
}

function holdFromJson(s: string): Hold {
  const j = JSON.parse(s) as Json
  return { ...(j as unknown as Hold), amount: BigInt(j.amount as string) }
}

const normaliseEmail = (email: string): string => email.trim().toLowerCase()
const newId = (prefix: string, length = 32): string => `${prefix}_${randomUUID().replaceAll('-', '').slice(0, length)}`

type Mirrored = Account & { txSeq: number }

export class LevelLedger implements Ledger {
  private readonly db: Level<string, string>
  // The database has one owner (level locks its directory), so its state is mirrored in memory.
  // Every change is checked and applied to the mirror synchronously — JavaScript runs one at a
  // time, so two calls can never both spend the same balance — and its writes join the next
  // group commit: one batch, written in order, after which the change's promise resolves.
  private readonly accountById = new Map<string, Mirrored>()
  private readonly accountByEmail = new Map<string, string>()
  private readonly keyByLookup = new Map<string, ApiKeyRecord>()
  private readonly lookupsByAccount = new Map<string, string[]>()
  private readonly holdById = new Map<string, Hold>()
  /** ref → the transaction it credited. */
  private readonly refs = new Map<string, Transaction>()
  private calls = 0

  private pending: Batch = []
  private waiters: Array<{ resolve: () => void; reject: (err: unknown) => void }> = []
  private flushing: Promise<void> | undefined
  /** Set when a write failed: the mirror may be ahead of the disk, so nothing more is accepted. */
  private failure: unknown

  constructor(path: string) {
    this.db = new Level<string, string>(path, { valueEncoding: 'utf8' })
  }

  async open(): Promise<void> {
    await this.db.open()
    for await (const value of this.db.values({ gt: 'a!', lt: 'a"' })) {
      const account = accountFromJson(value)
      this.accountById.set(account.id, account)
      this.accountByEmail.set(account.email, account.id)
      this.calls += account.totalCalls
    }
    for await (const [key, value] of this.db.iterator({ gt: 'k!', lt: 'k"' })) {
      const record = JSON.parse(value) as ApiKeyRecord
      const lookup = key.slice(2)
      this.keyByLookup.set(lookup, record)
      this.lookupsByAccount.set(record.accountId, [...(this.lookupsByAccount.get(record.accountId) ?? []), lookup])
    }
    for await (const value of this.db.values({ gt: 'h!', lt: 'h"' })) {
      const hold = holdFromJson(value)
      this.holdById.set(hold.id, hold)
    }
    for await (const [key, value] of this.db.iterator({ gt: 'r!', lt: 'r"' })) {
      this.refs.set(key.slice(2), txFromJson(value))
    }
  }

  async close(): Promise<void> {
    await this.flushing
    await this.db.close()
  }

  /** Queues `ops` for the next group commit and resolves once they are written. */
  private commit(ops: Batch): Promise<void> {
    this.pending.push(...ops)
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }))
    this.flushing ??= this.flush()
    return done
  }

  private async flush(): Promise<void> {
    while (this.pending.length > 0) {
      const ops = this.pending
      const waiters = this.waiters
      this.pending = []
      this.waiters = []
      try {
        if (this.failure != null) throw this.failure
        await this.db.batch(ops)
        for (const w of waiters) w.resolve()
      } catch (err) {
        this.failure ??= err
        for (const w of waiters)
          w.reject(new LedgerError('the ledger could not write; restart the gateway', { cause: err }))
      }
    }
    this.flushing = undefined
  }

  private assertWritable(): void {
    if (this.failure != null) throw new LedgerError('the ledger failed to write earlier; restart the gateway')
  }

  private mirrored(id: string): Mirrored {
    const account = this.accountById.get(id)
    if (account == null) throw new UnknownAccountError(`no account ${id}`)
    return account
  }

  private publicAccount(a: Mirrored): Account {
    const { txSeq: _seq, ...rest } = a
    return rest
  }

  /** Replaces the account in the mirror and returns the write that persists it. */
  private putAccount(next: Mirrored): Batch[number] {
    this.accountById.set(next.id, next)
    return { type: 'put', key: `a!${next.id}`, value: accountToJson(next) }
  }

  async createAccount(input: { email: string; role: Role; passwordHash: string }): Promise<Account> {
    this.assertWritable()
    const email = normaliseEmail(input.email)
    if (this.accountByEmail.has(email)) throw new DuplicateEmailError(`${email} is already registered`)
    const account: Mirrored = {
      id: newId('usr'),
      email,
      role: input.role,
      passwordHash: input.passwordHash,
      createdAt: Date.now(),
      balance: 0n,
      held: 0n,
      totalSpent: 0n,
      totalCalls: 0,
      txSeq: 0,
    }
    this.accountByEmail.set(email, account.id)
    await this.commit([this.putAccount(account), { type: 'put', key: `e!${email}`, value: account.id }])
    return this.publicAccount(account)
  }

  async getAccount(id: string): Promise<Account | undefined> {
    const account = this.accountById.get(id)
    return account == null ? undefined : this.publicAccount(account)
  }

  async findAccountByEmail(email: string): Promise<Account | undefined> {
    const id = this.accountByEmail.get(normaliseEmail(email))
    return id == null ? undefined : this.getAccount(id)
  }

  countAccounts(): number {
    return this.accountById.size
  }

  async addKey(
    accountId: string,
    key: { lookup: string; prefix: string; name: string; sealed?: string },
  ): Promise<ApiKeyRecord> {
    this.assertWritable()
    this.mirrored(accountId)
    const record: ApiKeyRecord = {
      id: newId('key', 16),
      accountId,
      prefix: key.prefix,
      name: key.name,
      createdAt: Date.now(),
      ...(key.sealed ? { sealed: key.sealed } : {}),
    }
    this.keyByLookup.set(key.lookup, record)
    this.lookupsByAccount.set(accountId, [...(this.lookupsByAccount.get(accountId) ?? []), key.lookup])
    await this.commit([
      { type: 'put', key: `k!${key.lookup}`, value: JSON.stringify(record) },
      { type: 'put', key: `ka!${accountId}!${record.id}`, value: key.lookup },
    ])
    return record
  }

  async findKey(lookup: string): Promise<{ key: ApiKeyRecord; account: Account } | undefined> {
    const key = this.keyByLookup.get(lookup)
    if (key == null || key.revokedAt != null) return undefined
    const account = await this.getAccount(key.accountId)
    return account == null ? undefined : { key, account }
  }

  async listKeys(accountId: string): Promise<ApiKeyRecord[]> {
    const out = (this.lookupsByAccount.get(accountId) ?? [])
      .map((lookup) => this.keyByLookup.get(lookup))
      .filter((k): k is ApiKeyRecord => k != null)
    return out.sort((a, b) => a.createdAt - b.createdAt)
  }

  async revokeKey(accountId: string, keyId: string): Promise<boolean> {
    this.assertWritable()
    const lookup = (this.lookupsByAccount.get(accountId) ?? []).find((l) => this.keyByLookup.get(l)?.id === keyId)
    const key = lookup != null ? this.keyByLookup.get(lookup) : undefined
    if (lookup == null || key == null || key.revokedAt != null) return false
    const { sealed: _sealed, ...rest } = key
    const revoked: ApiKeyRecord = { ...rest, revokedAt: Date.now() }
    this.keyByLookup.set(lookup, revoked)
    await this.commit([{ type: 'put', key: `k!${lookup}`, value: JSON.stringify(revoked) }])
    return true
  }

  private txRow(
    account: Mirrored,
    fields: Omit<Transaction, 'id' | 'accountId' | 'balanceAfter' | 'createdAt'>,
  ): { op: Batch[number]; tx: Transaction } {
    account.txSeq++
    const tx: Transaction = {
      id: newId('tx'),
      accountId: account.id,
      balanceAfter: account.balance,
      createdAt: Date.now(),
      ...fields,
    }
    const key = `t!${account.id}!${String(account.txSeq).padStart(SEQ_WIDTH, '0')}`
    return { op: { type: 'put', key, value: txToJson(tx) }, tx }
  }

  async credit(
    accountId: string,
    amount: bigint,
    meta: { type: 'credit' | 'deposit'; memo?: string; ref?: string },
  ): Promise<Transaction> {
    this.assertWritable()
    if (amount <= 0n) throw new LedgerError('a credit must be positive')
    if (meta.ref != null) {
      // A ref (a deposit's id) credits once, whichever account asks.
      const done = this.refs.get(meta.ref)
      if (done != null) return done
    }
    const account = { ...this.mirrored(accountId) }
    account.balance += amount
    const { op, tx } = this.txRow(account, { type: meta.type, amount, ...(meta.memo ? { memo: meta.memo } : {}) })
    const ops: Batch = [this.putAccount(account), op]
    if (meta.ref != null) {
      this.refs.set(meta.ref, tx)
      ops.push({ type: 'put', key: `r!${meta.ref}`, value: txToJson(tx) })
    }
    await this.commit(ops)
    return tx
  }

  async reserve(accountId: string, amount: bigint, requestId: string): Promise<Hold> {
    this.assertWritable()
    if (amount < 0n) throw new LedgerError('a hold cannot be negative')
    const account = { ...this.mirrored(accountId) }
    const available = account.balance - account.held
    if (amount > available) throw new InsufficientBalanceError(available, amount)
    account.held += amount
    const hold: Hold = { id: newId('hold'), accountId, amount, requestId, createdAt: Date.now() }
    this.holdById.set(hold.id, hold)
    // Not awaited: the check above is what admits the call, and a hold moves no money. Its record
    // (for start-up reconciliation) joins the next group commit, ahead of the settle that ends it;
    // a failed write stops the ledger for every later change.
    this.commit([
      this.putAccount(account),
      { type: 'put', key: `h!${hold.id}`, value: JSON.stringify({ ...hold, amount: amount.toString() }) },
    ]).catch(() => undefined)
    return hold
  }

  async settle(holdId: string, actual: bigint, usage: UsageRecord): Promise<Transaction> {
    this.assertWritable()
    if (actual < 0n) throw new LedgerError('a charge cannot be negative')
    const hold = this.holdById.get(holdId)
    if (hold == null) throw new UnknownHoldError(`no open hold ${holdId}`)
    // Never more than was reserved: the reservation is what the balance was checked against.
    const charge = actual < hold.amount ? actual : hold.amount
    const account = { ...this.mirrored(hold.accountId) }
    account.held -= hold.amount
    account.balance -= charge
    account.totalSpent += charge
    account.totalCalls++
    const { op, tx } = this.txRow(account, {
      type: 'usage',
      amount: -charge,
      model: usage.model,
      tokensIn: usage.tokensIn,
      tokensOut: usage.tokensOut,
      requestId: usage.requestId,
    })
    this.holdById.delete(hold.id)
    this.calls++
    await this.commit([this.putAccount(account), op, { type: 'del', key: `h!${hold.id}` }])
    return tx
  }

  async release(holdId: string): Promise<void> {
    this.assertWritable()
    const hold = this.holdById.get(holdId)
    if (hold == null) return // already settled or released
    const account = { ...this.mirrored(hold.accountId) }
    account.held -= hold.amount
    this.holdById.delete(hold.id)
    await this.commit([this.putAccount(account), { type: 'del', key: `h!${hold.id}` }])
  }

  async reconcileHolds(): Promise<number> {
    const ids = [...this.holdById.keys()]
    await Promise.all(ids.map((id) => this.release(id)))
    return ids.length
  }

  async transactions(accountId: string, page: { limit: number; cursor?: string }): Promise<TransactionPage> {
    // Only what is written is listed: wait for changes already accepted.
    await this.flushing
    const limit = Math.max(1, Math.min(Math.floor(page.limit), 100))
    const lt = page.cursor != null ? `t!${accountId}!${page.cursor}` : `t!${accountId}"`
    const out: Transaction[] = []
    let lastKey: string | undefined
    for await (const [key, value] of this.db.iterator({ gt: `t!${accountId}!`, lt, reverse: true, limit: limit + 1 })) {
      if (out.length === limit) {
        return { transactions: out, nextCursor: (lastKey as string).slice(`t!${accountId}!`.length) }
      }
      out.push(txFromJson(value))
      lastKey = key
    }
    return { transactions: out, nextCursor: null }
  }

  totalCalls(): number {
    return this.calls
  }
}
