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

/**
 * How the requestId of the hold that keeps a relayed withdrawal's amount from being spent begins
 * (any suffix after it): the ledger recognises that hold when the watcher sees the request first.
 */
export const withdrawalHoldPrefix = (address: string): string => `withdraw:${address.toLowerCase()}:`

export interface Hold {
  id: string
  accountId: string
  amount: bigint
  requestId: string
  createdAt: number
}

/** credit: by an admin; deposit: on chain; usage: a call; withdrawal: on chain (negative, or positive when cancelled). */
export type TransactionType = 'credit' | 'deposit' | 'usage' | 'withdrawal' | 'x402'

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
  /** Deposits and withdrawals: the chain transaction. */
  txHash?: string
  /** Deposits and withdrawals: the wallet. */
  wallet?: string
  /** Usage: the on-chain settlement that paid it to the node, once settled. */
  settlementTxHash?: string
}

export interface UsageRecord {
  model: string
  requestId: string
  tokensIn: number
  tokensOut: number
  /** Who earns the charge on chain, backed by the node's signed receipt. */
  payout?: { node: string; payee: string; receipt: string }
}

/** A wallet linked to an account: its deposits credit the account, its escrow balance pays for usage. */
export interface WalletLink {
  /** EIP-55 checksummed. */
  address: string
  accountId: string
  linkedAt: number
  /**
   * Of this wallet's deposits, what usage and withdrawals have not taken yet: the part of the
   * account's balance that this wallet's escrow balance backs.
   */
  funds: bigint
}

/**
 * One share of a charged call awaiting on-chain settlement: `amount` moves from `payer` (a linked
 * wallet; '' = the gateway's own escrow account, for balance an admin credited) to `payee` (the
 * node's payout address; '' = the gateway's payout address, for a node that gave none).
 */
export interface Payout {
  id: string
  accountId: string
  txId: string
  payer: string
  payee: string
  amount: bigint
  node: string
  requestId: string
  /** The node's signed receipt (JSON). */
  receipt: string
  createdAt: number
  /** The batch it is in, while one is open or after it settled. */
  batch?: string
}

/**
 * A request paid with x402: credited to the payer's x402 account when verified, then settled on
 * chain by the facilitator. A settlement that fails takes its credit back (once its request has
 * ended), and the payer owes what could not be taken back — what the request spent, and any debt the
 * payment was to pay off — a debt its next payment must cover. One that times out stays pending until
 * reconciled by its nonce. Credit left by a request that failed after its payment settled pays for
 * the payer's next request.
 */
export interface X402Payment {
  /** The EIP-3009 authorization nonce (unique per payer and token). */
  nonce: string
  payer: string
  accountId: string
  amount: bigint
  requestId: string
  network: string
  /** Unix seconds after which the authorization can no longer be settled. */
  validBefore: number
  status: 'pending' | 'settled' | 'failed'
  txHash?: string
  error?: string
  createdAt: number
  /** Of `amount`, what was added to the payer's balance (the rest paid off what it owed). */
  credited?: bigint
  /** A failed payment's credit is taken back once the hold of the request it paid for has ended. */
  reversal?: 'pending' | 'done'
}

export type BatchStatus = 'pending' | 'settled' | 'failed'

/** One on-chain settlement: its id is unique per ledger, so a retry after a crash can never pay twice. */
export interface SettlementBatch {
  id: string
  /** bytes32 hex, the id the escrow contract records. */
  batchId: string
  payoutIds: string[]
  debits: Array<{ payer: string; amount: bigint }>
  credits: Array<{ payee: string; amount: bigint }>
  status: BatchStatus
  createdAt: number
  txHash?: string
  error?: string
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

export class WalletLinkedError extends LedgerError {
  override name = 'WalletLinkedError'
}

export class WalletInUseError extends LedgerError {
  override name = 'WalletInUseError'
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
  /**
   * Money across all accounts, in the token's smallest unit: spendable balances, amounts held by
   * calls in flight, and what usage has charged (x402 payers' share apart).
   */
  moneyTotals(): { balance: bigint; held: bigint; spent: bigint; spentX402: bigint }

  // ---- chain ----
  /** Links `address` to the account (idempotent); credits deposits it made before. */
  linkWallet(accountId: string, address: string): Promise<{ link: WalletLink; credited: Transaction[] }>
  /**
   * Unlinks a wallet of the account. Refused (WalletInUseError) while its deposits back part of the
   * balance or a withdrawal of it is under way: the ledger could not follow it any more.
   */
  unlinkWallet(accountId: string, address: string): Promise<boolean>
  wallets(accountId: string): WalletLink[]
  walletOwner(address: string): WalletLink | undefined
  /** An on-chain deposit, once per ref: credits the wallet's account, or waits until it is linked. */
  chainDeposit(input: {
    address: string
    amount: bigint
    ref: string
    txHash: string
  }): Promise<Transaction | undefined>
  /**
   * An on-chain withdrawal request, once per ref: debits the wallet's account by what of the amount
   * is the account's to spend (at most the wallet's funds and the balance less what calls in flight
   * hold: their charges are still paid from the thawing amount), and frees `holdId` (the hold that
   * kept the amount from being spent meanwhile), if given — or, without it, the withdraw route's
   * hold for this wallet and amount (see withdrawalHoldPrefix).
   */
  chainWithdrawal(input: {
    address: string
    amount: bigint
    ref: string
    txHash: string
    holdId?: string
  }): Promise<Transaction | undefined>
  /** An on-chain withdrawal cancelled, once per ref: the amount returns to the account. */
  chainWithdrawCancelled(input: {
    address: string
    amount: bigint
    ref: string
    txHash: string
  }): Promise<Transaction | undefined>
  /**
   * An on-chain withdrawal completed, once per ref: `amount` (what was left of the thawing amount)
   * was paid out. Reconciles the account and the wallet's funds with it: what its requests had not
   * debited (kept for calls in flight, not charged) is debited now; usage charged to the wallet that
   * the escrow can no longer pay moves to the gateway's own account. Nothing of the wallet thaws now.
   */
  chainWithdrawn(input: {
    address: string
    amount: bigint
    ref: string
    txHash: string
  }): Promise<Transaction | undefined>
  // ---- x402 ----
  /** The account of an x402 payer (created on first use). */
  x402Account(payer: string): Promise<Account>
  /**
   * Records a verified payment (pending) and credits `amount - debtPaid` to the payer's account,
   * `debtPaid` going to what it owed. Refuses (returns false) a nonce seen before.
   */
  recordX402Payment(
    payment: Omit<X402Payment, 'status' | 'createdAt' | 'accountId'>,
    debtPaid: bigint,
  ): Promise<boolean>
  x402Settled(payer: string, nonce: string, txHash: string): Promise<void>
  /**
   * The payment will never settle: its credit is taken back off the payer's balance (when the hold of
   * its request has ended, charged or released), and the payer owes what could not be taken back.
   */
  x402Failed(payer: string, nonce: string, error: string): Promise<void>
  /** What an x402 payer's account holds and is not holding for a call: pays its next requests. */
  x402Credit(payer: string): bigint
  x402Payments(status?: X402Payment['status']): X402Payment[]
  /** Whether a payment with this payer and nonce was ever recorded (constant time). */
  hasX402Payment(payer: string, nonce: string): boolean
  /** What a payer owes for payments that failed to settle. */
  x402Debt(payer: string): bigint
  /** Payments settled (or pending) across all payers. */
  countX402Payments(): number
  /** A chain watcher's position (last block fully processed). */
  cursor(name: string): bigint | undefined
  setCursor(name: string, block: bigint): Promise<void>

  /** Payouts not in any open or settled batch, oldest first. */
  pendingPayouts(limit: number): Payout[]
  /** Puts payouts in a new batch (status pending) with a fresh id; totals per payer and payee. */
  createBatch(payoutIds: string[]): Promise<SettlementBatch>
  /** Records the batch as settled by `txHash` and marks its usage rows. */
  settleBatch(id: string, txHash: string): Promise<void>
  /** Records the batch as failed (never sent, or reverted); its payouts become pending again. */
  failBatch(id: string, error: string): Promise<void>
  batches(status?: BatchStatus): SettlementBatch[]
}
