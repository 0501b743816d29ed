// Wallet linking, SIWE style (EIP-4361): the gateway issues a message with a fresh nonce for one
// account and address; the wallet signs it (EIP-191, or ERC-1271 for contract wallets); the exact
// message and its signature link the address. A nonce works once and expires.
import { randomBytes } from 'node:crypto'
import { type Address, getAddress, type Hex } from 'viem'
import { createSiweMessage } from 'viem/siwe'
import type { EscrowClient } from './escrow.ts'

const NONCE_TTL_MS = 10 * 60_000
const MAX_OPEN = 10_000

interface Challenge {
  accountId: string
  address: Address
  message: string
  expiresAt: number
}

export type LinkCheck = { ok: true; address: Address } | { ok: false; reason: string }

export class WalletChallenges {
  private readonly open = new Map<string, Challenge>()

  constructor(
    private readonly client: EscrowClient,
    private readonly now: () => number = Date.now,
  ) {}

  /** A message for `address` to sign, proving it to `accountId`'s session on `origin`. */
  issue(accountId: string, address: string, origin: URL): { message: string; nonce: string; expiresAt: number } {
    this.sweep()
    if (this.open.size >= MAX_OPEN) this.open.delete(this.open.keys().next().value as string)
    const nonce = randomBytes(16).toString('hex')
    const issuedAt = new Date(this.now())
    const expiresAt = this.now() + NONCE_TTL_MS
    const checksummed = getAddress(address)
    const message = createSiweMessage({
      domain: origin.host,
      address: checksummed,
      statement: `Link this wallet to your Cluster account (${accountId}). Its deposits to the escrow credit the account.`,
      uri: origin.origin,
      version: '1',
      chainId: this.client.chain.id,
      nonce,
      issuedAt,
      expirationTime: new Date(expiresAt),
    })
    this.open.set(nonce, { accountId, address: checksummed, message, expiresAt })
    return { message, nonce, expiresAt }
  }

  /** Checks a signed challenge; the nonce is spent whatever the outcome. */
  async verify(accountId: string, message: string, signature: Hex): Promise<LinkCheck> {
    const nonce = /\nNonce: ([0-9a-f]{32})\n/.exec(message)?.[1]
    const challenge = nonce != null ? this.open.get(nonce) : undefined
    if (nonce == null || challenge == null) return { ok: false, reason: 'unknown or used nonce: ask for a new message' }
    this.open.delete(nonce)
    if (challenge.expiresAt < this.now()) return { ok: false, reason: 'the message expired: ask for a new one' }
    if (challenge.accountId !== accountId) return { ok: false, reason: 'the message was issued to another account' }
    if (challenge.message !== message) return { ok: false, reason: 'the message is not the one issued' }
    let valid = false
    try {
      valid = await this.client.publicClient.verifyMessage({ address: challenge.address, message, signature })
    } catch {
      valid = false
    }
    if (!valid) return { ok: false, reason: `the signature is not ${challenge.address}'s over the message` }
    return { ok: true, address: challenge.address }
  }

  private sweep(): void {
    const now = this.now()
    for (const [nonce, c] of this.open) if (c.expiresAt < now) this.open.delete(nonce)
  }
}
