// The embedded ledger on level: one database in the gateway's data dir. Each account's changes are
// serialised in-process (read, compute, one atomic batch), so concurrent calls cannot overspend.
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

export class LevelLedger implements Ledger {
  private readonly db: Level<string, string>
  private readonly locks = new Map<string, Promise<unknown>>()
  private accounts = 0
  private calls = 0

  constructor(path: string) {
    this.db = new Level<string, string>(path, { valueEncoding: 'utf8' })
  }

  async open(): Promise<void> {
    await this.db.open()
    for await (const value of this.db.values({ gt: 'a!', lt: 'a"' })) {
      this.accounts++
      this.calls += accountFromJson(value).totalCalls
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.locks.values()])
    await this.db.close()
  }

  /** Runs `fn` after every earlier operation on the same key has finished. */
  private async locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(key) ?? Promise.resolve()
    const run = previous.then(fn, fn)
    const tail = run.catch(() => undefined)
    this.locks.set(key, tail)
    try {
      return await run
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key)
    }
  }

  private async read(key: string): Promise<string | undefined> {
    return (await this.db.get(key)) ?? undefined
  }

  private async loadAccount(id: string): Promise<Account & { txSeq: number }> {
    const raw = await this.read(`a!${id}`)
    if (raw == null) throw new UnknownAccountError(`no account ${id}`)
    return accountFromJson(raw)
  }

  private publicAccount(a: Account & { txSeq: number }): Account {
    const { txSeq: _seq, ...rest } = a
    return rest
  }

  async createAccount(input: { email: string; role: Role; passwordHash: string }): Promise<Account> {
    const email = normaliseEmail(input.email)
    return this.locked(`email:${email}`, async () => {
      if ((await this.read(`e!${email}`)) != null) throw new DuplicateEmailError(`${email} is already registered`)
      const account = {
        id: `usr_${randomUUID().replaceAll('-', '')}`,
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
      await this.db.batch([
        { type: 'put', key: `a!${account.id}`, value: accountToJson(account) },
        { type: 'put', key: `e!${email}`, value: account.id },
      ])
      this.accounts++
      return this.publicAccount(account)
    })
  }

  async getAccount(id: string): Promise<Account | undefined> {
    const raw = await this.read(`a!${id}`)
    return raw == null ? undefined : this.publicAccount(accountFromJson(raw))
  }

  async findAccountByEmail(email: string): Promise<Account | undefined> {
    const id = await this.read(`e!${normaliseEmail(email)}`)
    return id == null ? undefined : this.getAccount(id)
  }

  countAccounts(): number {
    return this.accounts
  }

  async addKey(
    accountId: string,
    key: { lookup: string; prefix: string; name: string; sealed?: string },
  ): Promise<ApiKeyRecord> {
    await this.loadAccount(accountId)
    const record: ApiKeyRecord = {
      id: `key_${randomUUID().replaceAll('-', '').slice(0, 16)}`,
      accountId,
      prefix: key.prefix,
      name: key.name,
      createdAt: Date.now(),
      ...(key.sealed ? { sealed: key.sealed } : {}),
    }
    await this.db.batch([
      { type: 'put', key: `k!${key.lookup}`, value: JSON.stringify(record) },
      { type: 'put', key: `ka!${accountId}!${record.id}`, value: key.lookup },
    ])
    return record
  }

  async findKey(lookup: string): Promise<{ key: ApiKeyRecord; account: Account } | undefined> {
    const raw = await this.read(`k!${lookup}`)
    if (raw == null) return undefined
    const key = JSON.parse(raw) as ApiKeyRecord
    if (key.revokedAt != null) return undefined
    const account = await this.getAccount(key.accountId)
    return account == null ? undefined : { key, account }
  }

  async listKeys(accountId: string): Promise<ApiKeyRecord[]> {
    const out: ApiKeyRecord[] = []
    for await (const lookup of this.db.values({ gt: `ka!${accountId}!`, lt: `ka!${accountId}"` })) {
      const raw = await this.read(`k!${lookup}`)
      if (raw != null) out.push(JSON.parse(raw) as ApiKeyRecord)
    }
    return out.sort((a, b) => a.createdAt - b.createdAt)
  }

  async revokeKey(accountId: string, keyId: string): Promise<boolean> {
    const lookup = await this.read(`ka!${accountId}!${keyId}`)
    if (lookup == null) return false
    const raw = await this.read(`k!${lookup}`)
    if (raw == null) return false
    const key = JSON.parse(raw) as ApiKeyRecord
    if (key.revokedAt != null) return false
    const { sealed: _sealed, ...rest } = key
    await this.db.put(`k!${lookup}`, JSON.stringify({ ...rest, revokedAt: Date.now() }))
    return true
  }

  private txRow(
    account: Account & { txSeq: number },
    fields: Omit<Transaction, 'id' | 'accountId' | 'balanceAfter' | 'createdAt'>,
  ): { key: string; tx: Transaction } {
    account.txSeq++
    const tx: Transaction = {
      id: `tx_${randomUUID().replaceAll('-', '')}`,
      accountId: account.id,
      balanceAfter: account.balance,
      createdAt: Date.now(),
      ...fields,
    }
    return { key: `t!${account.id}!${String(account.txSeq).padStart(SEQ_WIDTH, '0')}`, tx }
  }

  async credit(
    accountId: string,
    amount: bigint,
    meta: { type: 'credit' | 'deposit'; memo?: string; ref?: string },
  ): Promise<Transaction> {
    if (amount <= 0n) throw new LedgerError('a credit must be positive')
    // A ref (a deposit's id) credits once across all accounts: its lock is taken first, always.
    if (meta.ref != null) return this.locked(`ref:${meta.ref}`, () => this.creditLocked(accountId, amount, meta))
    return this.creditLocked(accountId, amount, meta)
  }

  private creditLocked(
    accountId: string,
    amount: bigint,
    meta: { type: 'credit' | 'deposit'; memo?: string; ref?: string },
  ): Promise<Transaction> {
    return this.locked(accountId, async () => {
      if (meta.ref != null) {
        const done = await this.read(`r!${meta.ref}`)
        if (done != null) return txFromJson(done)
      }
      const account = await this.loadAccount(accountId)
      account.balance += amount
      const { key, tx } = this.txRow(account, {
        type: meta.type,
        amount,
        ...(meta.memo ? { memo: meta.memo } : {}),
      })
      const batch: Batch = [
        { type: 'put', key: `a!${account.id}`, value: accountToJson(account) },
        { type: 'put', key, value: txToJson(tx) },
      ]
      if (meta.ref != null) batch.push({ type: 'put', key: `r!${meta.ref}`, value: txToJson(tx) })
      await this.db.batch(batch)
      return tx
    })
  }

  async reserve(accountId: string, amount: bigint, requestId: string): Promise<Hold> {
    if (amount < 0n) throw new LedgerError('a hold cannot be negative')
    return this.locked(accountId, async () => {
      const account = await this.loadAccount(accountId)
      const available = account.balance - account.held
      if (amount > available) throw new InsufficientBalanceError(available, amount)
      account.held += amount
      const hold: Hold = {
        id: `hold_${randomUUID().replaceAll('-', '')}`,
        accountId,
        amount,
        requestId,
        createdAt: Date.now(),
      }
      await this.db.batch([
        { type: 'put', key: `a!${account.id}`, value: accountToJson(account) },
        { type: 'put', key: `h!${hold.id}`, value: JSON.stringify({ ...hold, amount: amount.toString() }) },
      ])
      return hold
    })
  }

  private async loadHold(holdId: string): Promise<Hold> {
    const raw = await this.read(`h!${holdId}`)
    if (raw == null) throw new UnknownHoldError(`no open hold ${holdId}`)
    return holdFromJson(raw)
  }

  async settle(holdId: string, actual: bigint, usage: UsageRecord): Promise<Transaction> {
    if (actual < 0n) throw new LedgerError('a charge cannot be negative')
    const first = await this.loadHold(holdId)
    return this.locked(first.accountId, async () => {
      const hold = await this.loadHold(holdId) // settled or released meanwhile → throws
      const account = await this.loadAccount(hold.accountId)
      // Never more than was reserved: the reservation is what the balance was checked against.
      const charge = actual < hold.amount ? actual : hold.amount
      account.held -= hold.amount
      account.balance -= charge
      account.totalSpent += charge
      account.totalCalls++
      const { key, tx } = this.txRow(account, {
        type: 'usage',
        amount: -charge,
        model: usage.model,
        tokensIn: usage.tokensIn,
        tokensOut: usage.tokensOut,
        requestId: usage.requestId,
      })
      await this.db.batch([
        { type: 'put', key: `a!${account.id}`, value: accountToJson(account) },
        { type: 'put', key, value: txToJson(tx) },
        { type: 'del', key: `h!${hold.id}` },
      ])
      this.calls++
      return tx
    })
  }

  async release(holdId: string): Promise<void> {
    const before = await this.read(`h!${holdId}`)
    if (before == null) return // already settled or released
    const first = holdFromJson(before)
    await this.locked(first.accountId, async () => {
      const raw = await this.read(`h!${holdId}`)
      if (raw == null) return
      const hold = holdFromJson(raw)
      const account = await this.loadAccount(hold.accountId)
      account.held -= hold.amount
      await this.db.batch([
        { type: 'put', key: `a!${account.id}`, value: accountToJson(account) },
        { type: 'del', key: `h!${hold.id}` },
      ])
    })
  }

  async reconcileHolds(): Promise<number> {
    const ids: string[] = []
    for await (const raw of this.db.values({ gt: 'h!', lt: 'h"' })) ids.push(holdFromJson(raw).id)
    for (const id of ids) await this.release(id)
    return ids.length
  }

  async transactions(accountId: string, page: { limit: number; cursor?: string }): Promise<TransactionPage> {
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
