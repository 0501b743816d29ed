// The embedded ledger on level: one database in the gateway's data dir, mirrored in memory, with
// every change checked synchronously and written by group commit — fast under contention, exact.
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { Level } from 'level'
import { minAmount } from '../payments/money.ts'
import {
  type Account,
  type ApiKeyRecord,
  type BatchStatus,
  DuplicateEmailError,
  type Hold,
  InsufficientBalanceError,
  type Ledger,
  LedgerError,
  type Payout,
  type Role,
  type SettlementBatch,
  type Transaction,
  type TransactionPage,
  UnknownAccountError,
  UnknownHoldError,
  type UsageRecord,
  WalletInUseError,
  type WalletLink,
  WalletLinkedError,
  withdrawalHoldPrefix,
  type X402Payment,
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
//   w!<address>                 linked wallet (address lowercased)
//   pd!<address>!<ref>          deposit, withdrawal request, cancel or completed withdrawal of a wallet not linked yet
//   wt!<address>                what the wallet's withdrawal requests took since its last cancel or withdrawal
//   rs!<ref>                    a completed withdrawal applied (once per ref)
//   x!<payer>!<nonce>           x402 payment (lowercased)
//   xd!<payer>                  what an x402 payer owes for payments that failed to settle
//   p!<seq:12>                  payout awaiting (or in) an on-chain settlement batch
//   b!<seq:12>                  settlement batch
//   c!<name>                    chain watcher cursor
//   m!<name>                    ledger metadata (instance id, sequences)
const SEQ_WIDTH = 12
const seqKey = (n: number): string => String(n).padStart(SEQ_WIDTH, '0')

interface ParkedDeposit {
  address: string
  amount: bigint
  ref: string
  txHash: string
}

/** An event of a wallet not linked yet, applied in order (`n`) when it is. */
interface ParkedEvent extends ParkedDeposit {
  /** Absent: a deposit. withdrawal: requested; withdrawn: completed (`amount` paid out). */
  kind?: 'withdrawal' | 'cancel' | 'withdrawn'
  n?: number
}

/** What a wallet's withdrawal requests took from its account's balance and its funds. */
interface Taken {
  balance: bigint
  funds: bigint
}

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

/** JSON with bigints as decimal strings (read back by the *FromJson helpers). */
const bigJson = (v: unknown): string => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x))

function walletFromJson(s: string): WalletLink {
  const j = JSON.parse(s) as Json
  return { ...(j as unknown as WalletLink), funds: BigInt(j.funds as string) }
}

function payoutFromJson(s: string): Payout {
  const j = JSON.parse(s) as Json
  return { ...(j as unknown as Payout), amount: BigInt(j.amount as string) }
}

function batchFromJson(s: string): SettlementBatch {
  const j = JSON.parse(s) as SettlementBatch & {
    debits: Array<{ payer: string; amount: string }>
    credits: Array<{ payee: string; amount: string }>
  }
  return {
    ...j,
    debits: j.debits.map((d) => ({ payer: d.payer, amount: BigInt(d.amount) })),
    credits: j.credits.map((c) => ({ payee: c.payee, amount: BigInt(c.amount) })),
  }
}

function holdFromJson(s: string): Hold {
  const j = JSON.parse(s) as Json
  return { ...(j as unknown as Hold), amount: BigInt(j.amount as string) }
}

const atLeastZero = (n: bigint): bigint => (n > 0n ? n : 0n)

const normaliseEmail = (email: string): string => email.trim().toLowerCase()
const newId = (prefix: string, length = 32): string => `${prefix}_${randomUUID().replaceAll('-', '').slice(0, length)}`

type Mirrored = Account & { txSeq: number }

const X402_EMAIL_PREFIX = 'x402:'

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
  /** Open holds whose end takes back a failed x402 payment's credit: hold id → payment key. */
  private readonly reversalByHold = new Map<string, string>()
  /** ref → the transaction it credited. */
  private readonly refs = new Map<string, Transaction>()
  private calls = 0
  /** lowercased address → link. */
  private readonly walletByAddress = new Map<string, WalletLink>()
  /** lowercased address → deposits waiting for the wallet to be linked. */
  private readonly parked = new Map<string, ParkedEvent[]>()
  /** lowercased address → what its withdrawal requests took since its last cancel. */
  private readonly taken = new Map<string, Taken>()
  private readonly cursors = new Map<string, bigint>()
  /** payer!nonce (lowercased) → x402 payment. */
  private readonly x402ById = new Map<string, X402Payment & { txKey?: string }>()
  /** payer (lowercased) → what it owes for payments that failed to settle. */
  private readonly debts = new Map<string, bigint>()
  /** Refs of completed withdrawals applied (each once). */
  private readonly seen = new Set<string>()
  private readonly payoutById = new Map<string, Payout & { txKey: string }>()
  private readonly batchById = new Map<string, SettlementBatch>()
  private instance = ''
  private payoutSeq = 0
  private batchSeq = 0

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
    for await (const value of this.db.values({ gt: 'w!', lt: 'w"' })) {
      const link = walletFromJson(value)
      this.walletByAddress.set(link.address.toLowerCase(), link)
    }
    for await (const value of this.db.values({ gt: 'pd!', lt: 'pd"' })) {
      const j = JSON.parse(value) as Json
      const event: ParkedEvent = {
        address: j.address as string,
        amount: BigInt(j.amount as string),
        ref: j.ref as string,
        txHash: j.txHash as string,
        ...(j.kind === 'withdrawal' || j.kind === 'cancel' || j.kind === 'withdrawn' ? { kind: j.kind } : {}),
        n: typeof j.n === 'number' ? j.n : 0,
      }
      const key = event.address.toLowerCase()
      this.parked.set(key, [...(this.parked.get(key) ?? []), event])
    }
    // Stored by ref: back in the order they happened.
    for (const events of this.parked.values()) events.sort((a, b) => (a.n ?? 0) - (b.n ?? 0))
    for await (const [key, value] of this.db.iterator({ gt: 'wt!', lt: 'wt"' })) {
      const j = JSON.parse(value) as Json
      this.taken.set(key.slice(3), { balance: BigInt(j.balance as string), funds: BigInt(j.funds as string) })
    }
    for await (const key of this.db.keys({ gt: 'rs!', lt: 'rs"' })) this.seen.add(key.slice(3))
    for await (const [key, value] of this.db.iterator({ gt: 'x!', lt: 'x"' })) {
      const j = JSON.parse(value) as Json
      this.x402ById.set(key.slice(2), {
        ...(j as unknown as X402Payment),
        amount: BigInt(j.amount as string),
        ...(j.credited != null ? { credited: BigInt(j.credited as string) } : {}),
      })
    }
    for await (const [key, value] of this.db.iterator({ gt: 'xd!', lt: 'xd"' }))
      this.debts.set(key.slice(3), BigInt(value))
    for await (const [key, value] of this.db.iterator({ gt: 'c!', lt: 'c"' })) {
      this.cursors.set(key.slice(2), BigInt(value))
    }
    for await (const value of this.db.values({ gt: 'b!', lt: 'b"' })) {
      const batch = batchFromJson(value)
      this.batchById.set(batch.id, batch)
    }
    for await (const value of this.db.values({ gt: 'p!', lt: 'p"' })) {
      const payout = payoutFromJson(value) as Payout & { txKey: string }
      // Settled payouts stay on disk as the record of what paid whom; only open ones are mirrored.
      if (payout.batch != null && this.batchById.get(payout.batch)?.status === 'settled') continue
      this.payoutById.set(payout.id, payout)
    }
    const meta = async (name: string): Promise<string | undefined> => {
      try {
        return await this.db.get(`m!${name}`)
      } catch {
        return undefined
      }
    }
    // Failed payments whose credit waits for their request's hold to end; without a hold any more
    // (a crash between the two), taken back now.
    const orphans: Batch = []
    for (const [key, payment] of this.x402ById) {
      if (payment.reversal !== 'pending') continue
      const hold = this.holdOf(payment)
      if (hold != null) this.reversalByHold.set(hold.id, key)
      else orphans.push(...this.reverseX402(key, { ...this.mirrored(payment.accountId) }))
    }
    if (orphans.length > 0) await this.db.batch(orphans)
    this.payoutSeq = Number((await meta('payoutSeq')) ?? 0)
    this.batchSeq = Number((await meta('batchSeq')) ?? 0)
    this.instance = (await meta('instance')) ?? ''
    if (this.instance === '') {
      // Names this ledger in its batch ids: a gateway that starts over with a new ledger can never
      // reuse an id the escrow already recorded for it.
      this.instance = randomBytes(16).toString('hex')
      await this.db.put('m!instance', this.instance)
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
    const { account, ops } = this.addAccount(email, input.role, input.passwordHash)
    await this.commit(ops)
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
    const ops: Batch = [this.putAccount(account), op, { type: 'del', key: `h!${hold.id}` }]
    if (usage.payout != null && charge > 0n) ops.push(...this.payoutsFor(account.id, tx, op.key, charge, usage))
    ops.push(...this.afterHold(hold.id, account))
    await this.commit(ops)
    return tx
  }

  /**
   * Splits a charge over who pays it on chain: the account's linked wallets in link order, each up
   * to the funds its deposits left, then the gateway's own account for the rest (admin credit).
   */
  private payoutsFor(accountId: string, tx: Transaction, txKey: string, charge: bigint, usage: UsageRecord): Batch {
    const payout = usage.payout as NonNullable<UsageRecord['payout']>
    const ops: Batch = []
    let left = charge
    const add = (payer: string, amount: bigint): void => {
      this.payoutSeq++
      const row: Payout & { txKey: string } = {
        id: seqKey(this.payoutSeq),
        accountId,
        txId: tx.id,
        txKey,
        payer,
        payee: payout.payee,
        amount,
        node: payout.node,
        requestId: usage.requestId,
        receipt: payout.receipt,
        createdAt: tx.createdAt,
      }
      this.payoutById.set(row.id, row)
      ops.push({ type: 'put', key: `p!${row.id}`, value: bigJson(row) })
    }
    for (const link of this.wallets(accountId)) {
      if (left === 0n) break
      if (link.funds <= 0n) continue
      const take = minAmount(link.funds, left)
      ops.push(this.putWallet({ ...link, funds: link.funds - take }))
      add(link.address, take)
      left -= take
    }
    if (left > 0n) add('', left)
    ops.push({ type: 'put', key: 'm!payoutSeq', value: String(this.payoutSeq) })
    return ops
  }

  private putWallet(link: WalletLink): Batch[number] {
    const key = link.address.toLowerCase()
    this.walletByAddress.set(key, link)
    return { type: 'put', key: `w!${key}`, value: bigJson(link) }
  }

  async release(holdId: string): Promise<void> {
    this.assertWritable()
    const hold = this.holdById.get(holdId)
    if (hold == null) return // already settled or released
    const account = { ...this.mirrored(hold.accountId) }
    account.held -= hold.amount
    this.holdById.delete(hold.id)
    await this.commit([
      this.putAccount(account),
      { type: 'del', key: `h!${hold.id}` },
      ...this.afterHold(hold.id, account),
    ])
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

  moneyTotals(): { balance: bigint; held: bigint; spent: bigint; spentX402: bigint } {
    const totals = { balance: 0n, held: 0n, spent: 0n, spentX402: 0n }
    for (const a of this.accountById.values()) {
      totals.balance += a.balance - a.held
      totals.held += a.held
      totals.spent += a.totalSpent
      // x402 payers' pseudo-accounts (their 'email' is no address a person could register).
      if (a.email.startsWith(X402_EMAIL_PREFIX)) totals.spentX402 += a.totalSpent
    }
    return totals
  }

  // ------------------------------------------------------------------------------------- chain

  async linkWallet(accountId: string, address: string): Promise<{ link: WalletLink; credited: Transaction[] }> {
    this.assertWritable()
    this.mirrored(accountId)
    const key = address.toLowerCase()
    const existing = this.walletByAddress.get(key)
    if (existing != null) {
      if (existing.accountId !== accountId) throw new WalletLinkedError('this wallet is linked to another account')
      return { link: existing, credited: [] }
    }
    const link: WalletLink = { address, accountId, linkedAt: Date.now(), funds: 0n }
    const ops: Batch = [this.putWallet(link)]
    // Deposits it made before it was linked are the account's now, less the withdrawals it asked
    // for meanwhile: applied in the order they happened.
    const credited: Transaction[] = []
    for (const event of this.parked.get(key) ?? []) {
      const current = this.walletByAddress.get(key) as WalletLink
      const { ops: more, tx } =
        event.kind === 'withdrawal'
          ? this.withdrawalOps(current, event, { ...this.mirrored(accountId) })
          : event.kind === 'cancel'
            ? this.cancelOps(current, event)
            : event.kind === 'withdrawn'
              ? this.withdrawnOps(current, event)
              : this.depositOps(current, event)
      ops.push(...more, { type: 'del', key: `pd!${key}!${event.ref}` })
      if (tx != null) credited.push(tx)
    }
    this.parked.delete(key)
    await this.commit(ops)
    return { link: this.walletByAddress.get(key) as WalletLink, credited }
  }

  async unlinkWallet(accountId: string, address: string): Promise<boolean> {
    this.assertWritable()
    const key = address.toLowerCase()
    const link = this.walletByAddress.get(key)
    if (link == null || link.accountId !== accountId) return false
    if (link.funds > 0n || this.taken.has(key)) {
      throw new WalletInUseError('this wallet still backs part of the balance, or a withdrawal of it is under way')
    }
    this.walletByAddress.delete(key)
    await this.commit([{ type: 'del', key: `w!${key}` }])
    return true
  }

  wallets(accountId: string): WalletLink[] {
    return [...this.walletByAddress.values()]
      .filter((w) => w.accountId === accountId)
      .sort((a, b) => a.linkedAt - b.linkedAt || a.address.localeCompare(b.address))
  }

  walletOwner(address: string): WalletLink | undefined {
    return this.walletByAddress.get(address.toLowerCase())
  }

  /** The writes that credit a deposit to a linked wallet's account (and the mirror updated). */
  private depositOps(link: WalletLink, deposit: ParkedDeposit): { ops: Batch; tx: Transaction } {
    const account = { ...this.mirrored(link.accountId) }
    account.balance += deposit.amount
    const { op, tx } = this.txRow(account, {
      type: 'deposit',
      amount: deposit.amount,
      txHash: deposit.txHash,
      wallet: link.address,
    })
    this.refs.set(deposit.ref, tx)
    const ops: Batch = [
      this.putAccount(account),
      op,
      { type: 'put', key: `r!${deposit.ref}`, value: txToJson(tx) },
      this.putWallet({ ...link, funds: link.funds + deposit.amount }),
    ]
    return { ops, tx }
  }

  async chainDeposit(input: {
    address: string
    amount: bigint
    ref: string
    txHash: string
  }): Promise<Transaction | undefined> {
    this.assertWritable()
    if (input.amount <= 0n) throw new LedgerError('a deposit must be positive')
    const done = this.refs.get(input.ref)
    if (done != null) return done
    const key = input.address.toLowerCase()
    const link = this.walletByAddress.get(key)
    if (link == null) {
      const ops = this.park(key, input)
      if (ops.length > 0) await this.commit(ops)
      return undefined
    }
    const { ops, tx } = this.depositOps(link, input)
    await this.commit(ops)
    return tx
  }

  /** Keeps an event of a wallet not linked yet (once per ref), for when it is. */
  private park(key: string, input: ParkedEvent): Batch {
    const parked = this.parked.get(key) ?? []
    if (parked.some((d) => d.ref === input.ref)) return []
    const event: ParkedEvent = {
      address: input.address,
      amount: input.amount,
      ref: input.ref,
      txHash: input.txHash,
      ...(input.kind != null ? { kind: input.kind } : {}),
      n: parked.reduce((n, d) => Math.max(n, (d.n ?? 0) + 1), 0),
    }
    this.parked.set(key, [...parked, event])
    return [{ type: 'put', key: `pd!${key}!${input.ref}`, value: bigJson(event) }]
  }

  private putTaken(key: string, taken: Taken): Batch[number] {
    this.taken.set(key, taken)
    return { type: 'put', key: `wt!${key}`, value: bigJson(taken) }
  }

  async chainWithdrawal(input: {
    address: string
    amount: bigint
    ref: string
    txHash: string
    holdId?: string
  }): Promise<Transaction | undefined> {
    this.assertWritable()
    const ops: Batch = []
    const done = this.refs.get(input.ref)
    const key = input.address.toLowerCase()
    const link = this.walletByAddress.get(key)
    // The hold that kept this amount from being spent: given by the route that relayed the
    // request, or, when the watcher sees the request first, that route's hold still open.
    const hold =
      input.holdId != null
        ? this.holdById.get(input.holdId)
        : done == null && link != null
          ? this.withdrawalHold(link, input.amount)
          : undefined
    const freeHold = (account: Mirrored): void => {
      if (hold == null || hold.accountId !== account.id) return
      account.held -= hold.amount
      this.holdById.delete(hold.id)
      ops.push({ type: 'del', key: `h!${hold.id}` })
    }
    if (done != null || link == null || input.amount <= 0n) {
      // Counted already (the watcher saw it first), or of a wallet not linked (yet: then it waits
      // with the wallet's deposits): only the hold is left to free.
      if (done == null && link == null && input.amount > 0n) {
        ops.push(...this.park(key, { ...input, kind: 'withdrawal' }))
      }
      if (hold != null) {
        const account = { ...this.mirrored(hold.accountId) }
        freeHold(account)
        ops.push(this.putAccount(account))
      }
      if (ops.length > 0) await this.commit(ops)
      return done
    }
    const account = { ...this.mirrored(link.accountId) }
    freeHold(account)
    const { ops: more, tx } = this.withdrawalOps(link, input, account)
    ops.push(...more)
    await this.commit(ops)
    return tx
  }

  /**
   * The open hold of the withdraw route for this very request (same wallet and amount), if any:
   * the oldest such one (its requestId begins with withdrawalHoldPrefix(address)).
   */
  private withdrawalHold(link: WalletLink, amount: bigint): Hold | undefined {
    const prefix = withdrawalHoldPrefix(link.address)
    for (const hold of this.holdById.values()) {
      if (hold.accountId === link.accountId && hold.amount === amount && hold.requestId.startsWith(prefix)) {
        return hold
      }
    }
    return undefined
  }

  /**
   * The writes that debit a withdrawal request from `account` (the link's, maybe a hold freed).
   *
   * On chain the requested amount thaws, and until it is withdrawn the gateway can still settle
   * from it — available balance first, then the thawing amount; `withdraw()` then pays out what is
   * left of it. So the request debits only what of it is the account's to spend: at most the
   * wallet's funds (the rest of the amount is usage already charged to this wallet, paid from it
   * when settled) and at most the balance less what calls in flight hold. What those calls hold
   * stays in the balance and in the wallet's funds, so their charges are paid from this wallet's
   * deposit during the thaw; whatever of it they leave unspent is debited when the withdrawal
   * completes (withdrawnOps), by what the escrow actually paid out.
   */
  private withdrawalOps(
    link: WalletLink,
    input: { amount: bigint; ref: string; txHash: string },
    account: Mirrored,
  ): { ops: Batch; tx: Transaction } {
    const spendable = account.balance - account.held
    const debit = atLeastZero(minAmount(minAmount(input.amount, link.funds), spendable))
    account.balance -= debit
    const { op, tx } = this.txRow(account, {
      type: 'withdrawal',
      amount: -debit,
      txHash: input.txHash,
      wallet: link.address,
      ...(debit < input.amount
        ? {
            memo: `withdrawal of ${input.amount} requested: ${input.amount - debit} of it pays usage charged or in flight; what that leaves is debited when withdrawn`,
          }
        : {}),
    })
    this.refs.set(input.ref, tx)
    const key = link.address.toLowerCase()
    const taken = this.taken.get(key) ?? { balance: 0n, funds: 0n }
    const ops: Batch = [
      this.putAccount(account),
      op,
      { type: 'put', key: `r!${input.ref}`, value: txToJson(tx) },
      this.putWallet({ ...link, funds: link.funds - debit }),
      // What a cancel may give back, and what the completed withdrawal is reconciled against.
      this.putTaken(key, { balance: taken.balance + debit, funds: taken.funds + debit }),
    ]
    return { ops, tx }
  }

  async chainWithdrawCancelled(input: {
    address: string
    amount: bigint
    ref: string
    txHash: string
  }): Promise<Transaction | undefined> {
    this.assertWritable()
    const done = this.refs.get(input.ref)
    const key = input.address.toLowerCase()
    const link = this.walletByAddress.get(key)
    if (done == null && link == null && input.amount > 0n) {
      const ops = this.park(key, { ...input, kind: 'cancel' })
      if (ops.length > 0) await this.commit(ops)
    }
    if (done != null || link == null || input.amount <= 0n) return done
    const { ops, tx } = this.cancelOps(link, input)
    await this.commit(ops)
    return tx
  }

  /**
   * The writes that give a cancelled withdrawal back: what the wallet's withdrawal requests took,
   * at most the amount. Of the thawing amount, a part the gateway settled for usage (or had not
   * debited, the balance being short) was never the account's to get back.
   */
  private cancelOps(
    link: WalletLink,
    input: { amount: bigint; ref: string; txHash: string },
  ): { ops: Batch; tx: Transaction } {
    const key = link.address.toLowerCase()
    const taken = this.taken.get(key) ?? { balance: 0n, funds: 0n }
    const credit = minAmount(input.amount, taken.balance)
    const account = { ...this.mirrored(link.accountId) }
    account.balance += credit
    const { op, tx } = this.txRow(account, {
      type: 'withdrawal',
      amount: credit,
      txHash: input.txHash,
      wallet: link.address,
      memo: 'withdrawal cancelled',
    })
    this.refs.set(input.ref, tx)
    // A cancel returns all that was thawing: the next withdrawal starts from nothing taken.
    this.taken.delete(key)
    const ops: Batch = [
      this.putAccount(account),
      op,
      { type: 'put', key: `r!${input.ref}`, value: txToJson(tx) },
      this.putWallet({ ...link, funds: link.funds + minAmount(input.amount, taken.funds) }),
      { type: 'del', key: `wt!${key}` },
    ]
    return { ops, tx }
  }

  async chainWithdrawn(input: {
    address: string
    amount: bigint
    ref: string
    txHash: string
  }): Promise<Transaction | undefined> {
    this.assertWritable()
    // Once per ref: replayed after a crash, it must not clear what a later request took.
    if (this.seen.has(input.ref)) return undefined
    const key = input.address.toLowerCase()
    const link = this.walletByAddress.get(key)
    if (link == null) {
      // Of a wallet not linked (yet): it waits, after the request it completes.
      const ops = this.park(key, { ...input, kind: 'withdrawn' })
      if (ops.length > 0) await this.commit(ops)
      return undefined
    }
    const { ops, tx } = this.withdrawnOps(link, input)
    await this.commit(ops)
    return tx
  }

  /**
   * The writes that reconcile a completed withdrawal with what the escrow paid out (`amount`: what
   * was left of the thawing amount). The wallet's funds follow the escrow: what its requests took
   * from them since the last cancel comes back, the payout leaves. Of what leaves, the part the
   * requests had not debited (kept for calls in flight and not charged) is debited now, never
   * below what calls in flight hold. A part beyond the funds is usage charged to this wallet that
   * was not settled before the withdrawal took its money: the gateway's own escrow account pays
   * those payouts instead (the balance was charged for them already).
   */
  private withdrawnOps(
    link: WalletLink,
    input: { amount: bigint; ref: string; txHash: string },
  ): { ops: Batch; tx: Transaction | undefined } {
    const key = link.address.toLowerCase()
    const taken = this.taken.get(key) ?? { balance: 0n, funds: 0n }
    const account = { ...this.mirrored(link.accountId) }
    const funds = link.funds + taken.funds - input.amount
    const shortfall = funds < 0n ? -funds : 0n
    let change = taken.balance - input.amount + shortfall
    const floor = -atLeastZero(account.balance - account.held)
    if (change < floor) change = floor
    this.seen.add(input.ref)
    // Whatever was thawing has left: a later cancel can only give back what a later request takes.
    this.taken.delete(key)
    const ops: Batch = [
      { type: 'del', key: `wt!${key}` },
      { type: 'put', key: `rs!${input.ref}`, value: '1' },
      this.putWallet({ ...link, funds: atLeastZero(funds) }),
    ]
    let tx: Transaction | undefined
    if (change !== 0n) {
      account.balance += change
      const row = this.txRow(account, {
        type: 'withdrawal',
        amount: change,
        txHash: input.txHash,
        wallet: link.address,
        memo:
          change < 0n
            ? `withdrawn: ${input.amount} paid out, of which ${-change} was kept for calls in flight and not charged`
            : `withdrawn: ${input.amount} paid out, ${change} less than its request debited`,
      })
      tx = row.tx
      ops.push(this.putAccount(account), row.op)
    }
    if (shortfall > 0n) ops.push(...this.payoutsToGateway(key, shortfall))
    return { ops, tx }
  }

  /**
   * Moves up to `amount` of the wallet's payouts not in a batch yet (newest first) to the gateway's
   * own escrow account: the wallet's escrow balance can no longer pay them.
   */
  private payoutsToGateway(wallet: string, amount: bigint): Batch {
    const ops: Batch = []
    let left = amount
    for (const p of [...this.payoutById.values()].reverse()) {
      if (left === 0n) break
      if (p.batch != null || p.payer.toLowerCase() !== wallet) continue
      const take = minAmount(p.amount, left)
      left -= take
      if (take === p.amount) {
        const next = { ...p, payer: '' }
        this.payoutById.set(p.id, next)
        ops.push({ type: 'put', key: `p!${p.id}`, value: bigJson(next) })
        continue
      }
      const kept = { ...p, amount: p.amount - take }
      this.payoutById.set(p.id, kept)
      ops.push({ type: 'put', key: `p!${p.id}`, value: bigJson(kept) })
      this.payoutSeq++
      const moved = { ...p, id: seqKey(this.payoutSeq), payer: '', amount: take }
      this.payoutById.set(moved.id, moved)
      ops.push({ type: 'put', key: `p!${moved.id}`, value: bigJson(moved) })
    }
    if (ops.length > 0) ops.push({ type: 'put', key: 'm!payoutSeq', value: String(this.payoutSeq) })
    return ops
  }

  // -------------------------------------------------------------------------------------- x402

  private x402Email = (payer: string): string => `${X402_EMAIL_PREFIX}${payer.toLowerCase()}`

  /** The payer's x402 account, created in the mirror (and its writes returned) if new. */
  private ensureX402Account(payer: string): { account: Mirrored; ops: Batch } {
    const email = this.x402Email(payer)
    const id = this.accountByEmail.get(email)
    if (id != null) return { account: this.mirrored(id), ops: [] }
    return this.addAccount(email, 'user', '')
  }

  /** A new empty account in the mirror, and the writes that store it (the caller commits them). */
  private addAccount(email: string, role: Role, passwordHash: string): { account: Mirrored; ops: Batch } {
    const account: Mirrored = {
      id: newId('usr'),
      email,
      role,
      passwordHash,
      createdAt: Date.now(),
      balance: 0n,
      held: 0n,
      totalSpent: 0n,
      totalCalls: 0,
      txSeq: 0,
    }
    this.accountByEmail.set(email, account.id)
    return { account, ops: [this.putAccount(account), { type: 'put', key: `e!${email}`, value: account.id }] }
  }

  async x402Account(payer: string): Promise<Account> {
    this.assertWritable()
    const { account, ops } = this.ensureX402Account(payer)
    if (ops.length > 0) await this.commit(ops)
    return this.publicAccount(account)
  }

  private x402Key = (payer: string, nonce: string): string => `${payer.toLowerCase()}!${nonce.toLowerCase()}`

  async recordX402Payment(
    input: Omit<X402Payment, 'status' | 'createdAt' | 'accountId'>,
    debtPaid: bigint,
  ): Promise<boolean> {
    this.assertWritable()
    const key = this.x402Key(input.payer, input.nonce)
    if (this.x402ById.has(key)) return false
    const owed = this.x402Debt(input.payer)
    if (debtPaid < 0n || debtPaid > owed || debtPaid > input.amount) throw new LedgerError('bad debt payment')
    const { account: existing, ops } = this.ensureX402Account(input.payer)
    const account = { ...existing }
    const payment: X402Payment & { txKey?: string } = {
      ...input,
      accountId: account.id,
      status: 'pending',
      createdAt: Date.now(),
      credited: input.amount - debtPaid,
    }
    const credit = input.amount - debtPaid
    if (credit > 0n) {
      account.balance += credit
      const { op, tx } = this.txRow(account, {
        type: 'x402',
        amount: credit,
        wallet: input.payer,
        requestId: input.requestId,
        memo: debtPaid > 0n ? `x402 payment (of which ${debtPaid} paid what was owed)` : 'x402 payment',
      })
      payment.txKey = op.key
      ops.push(this.putAccount(account), op)
      void tx
    }
    if (debtPaid > 0n) ops.push(this.putDebt(input.payer, owed - debtPaid))
    this.x402ById.set(key, payment)
    ops.push({ type: 'put', key: `x!${key}`, value: bigJson(payment) })
    await this.commit(ops)
    return true
  }

  private putDebt(payer: string, amount: bigint): Batch[number] {
    const key = payer.toLowerCase()
    if (amount === 0n) {
      this.debts.delete(key)
      return { type: 'del', key: `xd!${key}` }
    }
    this.debts.set(key, amount)
    return { type: 'put', key: `xd!${key}`, value: amount.toString() }
  }

  private pendingX402(payer: string, nonce: string): X402Payment & { txKey?: string } {
    const payment = this.x402ById.get(this.x402Key(payer, nonce))
    if (payment == null) throw new LedgerError(`no x402 payment ${nonce} of ${payer}`)
    return payment
  }

  async x402Settled(payer: string, nonce: string, txHash: string): Promise<void> {
    this.assertWritable()
    const payment = this.pendingX402(payer, nonce)
    if (payment.status !== 'pending') return
    const next = { ...payment, status: 'settled' as const, txHash }
    this.x402ById.set(this.x402Key(payer, nonce), next)
    const ops: Batch = [{ type: 'put', key: `x!${this.x402Key(payer, nonce)}`, value: bigJson(next) }]
    if (payment.txKey != null) {
      await this.flushing
      const row = txFromJson(await this.db.get(payment.txKey))
      ops.push({ type: 'put', key: payment.txKey, value: txToJson({ ...row, txHash }) })
    }
    await this.commit(ops)
  }

  async x402Failed(payer: string, nonce: string, error: string): Promise<void> {
    this.assertWritable()
    const key = this.x402Key(payer, nonce)
    const payment = this.pendingX402(payer, nonce)
    if (payment.status !== 'pending') return
    const failed = { ...payment, status: 'failed' as const, error: error.slice(0, 300) }
    // While its request still holds money, what the payment credited cannot be told from what the
    // request will spend: its credit is taken back when that hold ends (charged or released).
    const hold = this.holdOf(payment)
    if (hold != null) {
      const next = { ...failed, reversal: 'pending' as const }
      this.x402ById.set(key, next)
      this.reversalByHold.set(hold.id, key)
      await this.commit([{ type: 'put', key: `x!${key}`, value: bigJson(next) }])
      return
    }
    this.x402ById.set(key, failed)
    await this.commit(this.reverseX402(key, { ...this.mirrored(payment.accountId) }))
  }

  /** The open hold of the request a payment paid for, if that request is still running. */
  private holdOf(payment: X402Payment): Hold | undefined {
    for (const hold of this.holdById.values()) {
      if (hold.accountId === payment.accountId && hold.requestId === payment.requestId) return hold
    }
    return undefined
  }

  /** A failed x402 payment waiting for this hold to end: its credit is taken back now. */
  private afterHold(holdId: string, account: Mirrored): Batch {
    const key = this.reversalByHold.get(holdId)
    if (key == null) return []
    this.reversalByHold.delete(holdId)
    return this.reverseX402(key, account)
  }

  /**
   * Takes a failed payment's credit back off its payer's balance, as far as what is not held allows
   * (`account`, a copy, is updated); what could not be taken back — spent on the request it paid for
   * — and what the payment was to pay off are owed.
   */
  private reverseX402(key: string, account: Mirrored): Batch {
    const payment = this.x402ById.get(key) as X402Payment
    const credited = payment.credited ?? payment.amount
    const free = account.balance - account.held
    const back = free <= 0n ? 0n : minAmount(credited, free)
    const ops: Batch = []
    if (back > 0n) {
      account.balance -= back
      const { op } = this.txRow(account, {
        type: 'x402',
        amount: -back,
        wallet: payment.payer,
        requestId: payment.requestId,
        memo: 'x402 payment failed to settle: its credit taken back',
      })
      ops.push(this.putAccount(account), op)
    }
    const next = { ...payment, reversal: 'done' as const }
    this.x402ById.set(key, next)
    ops.push({ type: 'put', key: `x!${key}`, value: bigJson(next) })
    const owed = payment.amount - back
    if (owed > 0n) ops.push(this.putDebt(payment.payer, this.x402Debt(payment.payer) + owed))
    return ops
  }

  x402Credit(payer: string): bigint {
    const id = this.accountByEmail.get(this.x402Email(payer))
    if (id == null) return 0n
    const account = this.mirrored(id)
    const free = account.balance - account.held
    return free > 0n ? free : 0n
  }

  x402Payments(status?: X402Payment['status']): X402Payment[] {
    return [...this.x402ById.values()]
      .filter((p) => status == null || p.status === status)
      .map(({ txKey: _k, ...p }: X402Payment & { txKey?: string }) => p)
  }

  hasX402Payment(payer: string, nonce: string): boolean {
    return this.x402ById.has(this.x402Key(payer, nonce))
  }

  x402Debt(payer: string): bigint {
    return this.debts.get(payer.toLowerCase()) ?? 0n
  }

  countX402Payments(): number {
    let n = 0
    for (const p of this.x402ById.values()) if (p.status !== 'failed') n++
    return n
  }

  cursor(name: string): bigint | undefined {
    return this.cursors.get(name)
  }

  async setCursor(name: string, block: bigint): Promise<void> {
    this.assertWritable()
    this.cursors.set(name, block)
    await this.commit([{ type: 'put', key: `c!${name}`, value: block.toString() }])
  }

  private publicPayout(p: Payout & { txKey: string }): Payout {
    const { txKey: _key, ...rest } = p
    return rest
  }

  pendingPayouts(limit: number): Payout[] {
    const out: Payout[] = []
    // Map order is insertion order: ids grow, so oldest first.
    for (const p of this.payoutById.values()) {
      if (p.batch != null) continue
      out.push(this.publicPayout(p))
      if (out.length >= limit) break
    }
    return out
  }

  async createBatch(payoutIds: string[]): Promise<SettlementBatch> {
    this.assertWritable()
    if (payoutIds.length === 0) throw new LedgerError('a batch needs payouts')
    const payouts = payoutIds.map((id) => {
      const p = this.payoutById.get(id)
      if (p == null || p.batch != null) throw new LedgerError(`payout ${id} is not pending`)
      return p
    })
    this.batchSeq++
    const id = seqKey(this.batchSeq)
    const sum = (key: 'payer' | 'payee'): Map<string, bigint> => {
      const totals = new Map<string, bigint>()
      for (const p of payouts) totals.set(p[key], (totals.get(p[key]) ?? 0n) + p.amount)
      return totals
    }
    const batch: SettlementBatch = {
      id,
      batchId: `0x${createHash('sha256').update(`cluster-batch:${this.instance}:${id}`).digest('hex')}`,
      payoutIds: [...payoutIds],
      debits: [...sum('payer')].map(([payer, amount]) => ({ payer, amount })),
      credits: [...sum('payee')].map(([payee, amount]) => ({ payee, amount })),
      status: 'pending',
      createdAt: Date.now(),
    }
    const ops: Batch = [
      { type: 'put', key: `b!${id}`, value: bigJson(batch) },
      { type: 'put', key: 'm!batchSeq', value: String(this.batchSeq) },
    ]
    for (const p of payouts) {
      const next = { ...p, batch: id }
      this.payoutById.set(p.id, next)
      ops.push({ type: 'put', key: `p!${p.id}`, value: bigJson(next) })
    }
    this.batchById.set(id, batch)
    await this.commit(ops)
    return batch
  }

  private openBatch(id: string): SettlementBatch {
    const batch = this.batchById.get(id)
    if (batch == null) throw new LedgerError(`no batch ${id}`)
    if (batch.status !== 'pending') throw new LedgerError(`batch ${id} is ${batch.status}`)
    return batch
  }

  async settleBatch(id: string, txHash: string): Promise<void> {
    this.assertWritable()
    const batch = this.openBatch(id)
    const settled: SettlementBatch = { ...batch, status: 'settled', txHash }
    this.batchById.set(id, settled)
    // Usage rows are not mirrored: read them (once their writes are done) to add the settlement.
    await this.flushing
    const ops: Batch = [{ type: 'put', key: `b!${id}`, value: bigJson(settled) }]
    const txKeys = new Set(batch.payoutIds.map((p) => this.payoutById.get(p)?.txKey).filter((k) => k != null))
    for (const key of txKeys) {
      const row = txFromJson(await this.db.get(key))
      ops.push({ type: 'put', key, value: txToJson({ ...row, settlementTxHash: txHash }) })
    }
    for (const pid of batch.payoutIds) this.payoutById.delete(pid)
    await this.commit(ops)
  }

  async failBatch(id: string, error: string): Promise<void> {
    this.assertWritable()
    const batch = this.openBatch(id)
    const failed: SettlementBatch = { ...batch, status: 'failed', error: error.slice(0, 500) }
    this.batchById.set(id, failed)
    const ops: Batch = [{ type: 'put', key: `b!${id}`, value: bigJson(failed) }]
    for (const pid of batch.payoutIds) {
      const p = this.payoutById.get(pid)
      if (p == null) continue
      const { batch: _b, ...pending } = p
      this.payoutById.set(pid, pending)
      ops.push({ type: 'put', key: `p!${pid}`, value: bigJson(pending) })
    }
    await this.commit(ops)
  }

  batches(status?: BatchStatus): SettlementBatch[] {
    return [...this.batchById.values()].filter((b) => status == null || b.status === status)
  }
}
