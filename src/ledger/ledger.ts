// The ledger's contract: accounts, API keys, balances, holds and transactions. Every money
// movement is one atomic write with one transaction row; holds reserve without moving money.

export type Role = 'admin' | 'user'

export interface Account {
  id: string
  email: string
  role: Role
  /** scrypt hash of the password (see src/ledger/secrets.ts), or '' when password login is off. */
  passwordHash: string
  createdAt: number
  /** Settled balance, smallest units. Equals the sum of the account's transaction amounts. */
  balance: bigint
  /** Sum of open holds; spendable = balance − held. */
  held: bigint
  totalSpent: bigint
  totalCalls: number
}

export interface ApiKeyRecord {
  id: string
  accountId: string
  /** The first characters of the key, shown in listings. */
  prefix: string
  name: string
  createdAt: number
  revokedAt?: number
  /** The key sealed under the gateway secret: only the login key, which login returns. */
  sealed?: string
}

export interface Hold {
  id: string
  accountId: string
  amount: bigint
  requestId: string
  createdAt: number
}

export type TransactionType = 'credit' | 'deposit' | 'usage'

export interface Transaction {
  id: string
  accountId: string
  type: TransactionType
  /** Signed: credits and deposits positive, usage negative. */
  amount: bigint
  balanceAfter: bigint
  createdAt: number
  memo?: string
  model?: string
  tokensIn?: number
  tokensOut?: number
  requestId?: string
}

export interface UsageRecord {
  model: string
  requestId: string
  tokensIn: number
  tokensOut: number
}

export interface TransactionPage {
  transactions: Transaction[]
  nextCursor: string | null
}

export class LedgerError extends Error {
  override name = 'LedgerError'
}

export class InsufficientBalanceError extends LedgerError {
  override name = 'InsufficientBalanceError'
  constructor(
    readonly available: bigint,
    readonly required: bigint,
  ) {
    super('insufficient balance')
  }
}

export class DuplicateEmailError extends LedgerError {
  override name = 'DuplicateEmailError'
}

export class UnknownAccountError extends LedgerError {
  override name = 'UnknownAccountError'
}

export class UnknownHoldError extends LedgerError {
  override name = 'UnknownHoldError'
}

export interface Ledger {
  open(): Promise<void>
  close(): Promise<void>

  createAccount(input: { email: string; role: Role; passwordHash: string }): Promise<Account>
  getAccount(id: string): Promise<Account | undefined>
  findAccountByEmail(email: string): Promise<Account | undefined>
  countAccounts(): number

  addKey(
    accountId: string,
    key: { lookup: string; prefix: string; name: string; sealed?: string },
  ): Promise<ApiKeyRecord>
  /** The live (not revoked) key with this lookup hash, and its account. */
  findKey(lookup: string): Promise<{ key: ApiKeyRecord; account: Account } | undefined>
  listKeys(accountId: string): Promise<ApiKeyRecord[]>
  revokeKey(accountId: string, keyId: string): Promise<boolean>

  /** Adds money. With `ref`, the same ref credits once only (the first transaction is returned). */
  credit(
    accountId: string,
    amount: bigint,
    meta: { type: 'credit' | 'deposit'; memo?: string; ref?: string },
  ): Promise<Transaction>
  /** Reserves `amount` of the spendable balance, or throws InsufficientBalanceError. */
  reserve(accountId: string, amount: bigint, requestId: string): Promise<Hold>
  /** Charges min(actual, hold) and frees the hold: one usage transaction. */
  settle(holdId: string, actual: bigint, usage: UsageRecord): Promise<Transaction>
  /** Frees a hold without charging. */
  release(holdId: string): Promise<void>
  /** Frees holds left open by a crash; returns how many. */
  reconcileHolds(): Promise<number>

  transactions(accountId: string, page: { limit: number; cursor?: string }): Promise<TransactionPage>
  /** Calls served across all accounts. */
  totalCalls(): number
}
