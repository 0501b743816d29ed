// The on-chain side of an account: linking wallets (SIWE), gasless deposits and withdrawals relayed
// by the gateway, and what the chain says about them. Deposits made directly on chain are credited
// by the deposit watcher; everything here is in the docs' {error, code} shape.
import { Hono } from 'hono'
import { type Address, getAddress, type Hex, isAddress, parseEventLogs, parseSignature } from 'viem'
import { z } from 'zod'
import { CallRefusedError, type EscrowClient } from '../src/chain/escrow.ts'
import type { Settler } from '../src/chain/settler.ts'
import type { WalletChallenges } from '../src/chain/wallet-link.ts'
import type { DepositWatcher } from '../src/chain/watcher.ts'
import {
  InsufficientBalanceError,
  type Ledger,
  WalletInUseError,
  WalletLinkedError,
  withdrawalHoldPrefix,
} from '../src/ledger/ledger.ts'
import { formatUsd } from '../src/payments/money.ts'
import { type AuthVars, body, requireAuth } from './api-routes.ts'
import { ApiError, conflict, insufficientBalance, invalidRequest, notFound } from './errors.ts'
import { publicOrigin } from './origin.ts'

export interface ChainDeps {
  ledger: Ledger
  client: EscrowClient
  challenges: WalletChallenges
  watcher: DepositWatcher
  settler: Settler
  thawPeriod: bigint
  confirmations: number
  /** The gateway's public URL (gateway.publicUrl): the wallet-link message's domain and URI. */
  publicUrl?: URL | undefined
}

const EvmAddress = z
  .string()
  .refine((s) => isAddress(s, { strict: false }), 'must be an EVM address (0x + 40 hex digits)')
const Signature = z.string().regex(/^0x[0-9a-fA-F]{130,}$/, 'must be a 0x-hex signature')
/** An amount in USDC's smallest unit (6 decimals), as signed: a decimal integer string. */
const Units = z.string().regex(/^[1-9]\d{0,30}$/, 'must be a positive integer in USDC smallest units (6 decimals)')
const Seconds = z.union([z.number().int().min(0), z.string().regex(/^\d{1,20}$/)]).transform((v) => BigInt(v))
const Bytes32 = z.string().regex(/^0x[0-9a-fA-F]{64}$/, 'must be 32 bytes of 0x-hex')

/** A chain call refused → 400 naming the contract's reason; the chain unreachable → 502. */
function chainError(err: unknown, what: string): ApiError {
  if (err instanceof CallRefusedError) {
    return new ApiError(400, `The escrow refused the ${what}: ${err.reason}.`, 'invalid_request_error', 'chain_refused')
  }
  return new ApiError(
    502,
    `The chain could not be reached for the ${what}; retry.`,
    'server_error',
    'chain_unavailable',
  )
}

export function chainRoutes(deps: ChainDeps): Hono<AuthVars> {
  const api = new Hono<AuthVars>()
  const { ledger, client } = deps

  /** What a wallet needs to sign deposits, authorizations and withdrawals for this gateway. */
  api.get('/chain', async (c) => {
    const token = await client.usdcName().catch(() => undefined)
    return c.json({
      chainId: client.chain.id,
      escrow: client.escrow,
      usdc: client.usdc,
      usdcDomain: token ?? null,
      gateway: client.address,
      thawPeriod: Number(deps.thawPeriod),
      confirmations: deps.confirmations,
    })
  })

  api.post('/user/wallet/challenge', async (c) => {
    const { account } = requireAuth(c)
    const input = await body(c, z.object({ address: EvmAddress }))
    const owner = ledger.walletOwner(input.address)
    if (owner != null && owner.accountId !== account.id) throw conflict('This wallet is linked to another account.')
    return c.json(deps.challenges.issue(account.id, input.address, publicOrigin(c, deps.publicUrl)))
  })

  api.post('/user/wallet', async (c) => {
    const { account } = requireAuth(c)
    const input = await body(c, z.object({ message: z.string().min(1).max(4096), signature: Signature }))
    const check = await deps.challenges.verify(account.id, input.message, input.signature as Hex)
    if (!check.ok)
      throw new ApiError(401, `Wallet not linked: ${check.reason}.`, 'authentication_error', 'bad_signature')
    try {
      const { link, credited } = await ledger.linkWallet(account.id, check.address)
      return c.json(
        {
          address: link.address,
          linkedAt: new Date(link.linkedAt).toISOString(),
          credited: credited.map((t) => ({ amount: formatUsd(t.amount), txHash: t.txHash })),
        },
        201,
      )
    } catch (err) {
      if (err instanceof WalletLinkedError) throw conflict('This wallet is linked to another account.')
      throw err
    }
  })

  api.get('/user/wallet', async (c) => {
    const { account } = requireAuth(c)
    const links = ledger.wallets(account.id)
    const wallets = await Promise.all(
      links.map(async (w) => {
        const address = w.address as Address
        const onChain = await Promise.all([
          client.account(address),
          client.capacity(address),
          client.publicClient.readContract({
            address: client.escrow,
            abi: client.abi,
            functionName: 'nonces',
            args: [address],
          }),
        ]).catch(() => undefined)
        return {
          address,
          linkedAt: new Date(w.linkedAt).toISOString(),
          funds: formatUsd(w.funds),
          ...(onChain
            ? {
                escrow: {
                  available: onChain[0].available.toString(),
                  thawing: onChain[0].thawing.toString(),
                  thawEndsAt: Number(onChain[0].thawEndsAt),
                },
                gatewayCap: onChain[1].cap.toString(),
                nonce: onChain[2].toString(),
              }
            : {}),
        }
      }),
    )
    return c.json({ wallets })
  })

  api.delete('/user/wallet/:address', async (c) => {
    const { account } = requireAuth(c)
    const address = c.req.param('address')
    if (!isAddress(address, { strict: false })) throw invalidRequest('Not an EVM address.', 'address')
    try {
      if (!(await ledger.unlinkWallet(account.id, address)))
        throw notFound('This wallet is not linked to your account.')
    } catch (err) {
      if (err instanceof WalletInUseError) {
        throw conflict('This wallet still backs part of your balance: withdraw its funds first.')
      }
      throw err
    }
    return c.json({ address: getAddress(address), removed: true })
  })

  const linkedWallet = (accountId: string, address: string): Address => {
    const link = ledger.walletOwner(address)
    if (link == null || link.accountId !== accountId) {
      throw invalidRequest('Link this wallet to your account first (POST /api/user/wallet).', 'address')
    }
    return link.address as Address
  }

  /** Relays the payer's EIP-712 AuthorizeGateway signature: lets this gateway settle its usage. */
  api.post('/user/wallet/authorize', async (c) => {
    const { account } = requireAuth(c)
    const input = await body(
      c,
      z.object({
        address: EvmAddress,
        cap: z.union([Units, z.literal('unlimited')]),
        deadline: Seconds,
        signature: Signature,
      }),
    )
    const payer = linkedWallet(account.id, input.address)
    const cap = input.cap === 'unlimited' ? 2n ** 256n - 1n : BigInt(input.cap)
    try {
      const { hash } = await client.send({
        functionName: 'authorizeGatewayWithSig',
        args: [payer, client.address, cap, input.deadline, input.signature],
      })
      return c.json({ address: payer, gateway: client.address, cap: cap.toString(), txHash: hash })
    } catch (err) {
      throw chainError(err, 'authorization')
    }
  })

  /**
   * Gasless deposit: relays `from`'s EIP-3009 ReceiveWithAuthorization (to the escrow, nonce =
   * depositNonce(beneficiary, salt)) crediting one of the caller's wallets.
   */
  api.post('/user/deposit', async (c) => {
    const { account } = requireAuth(c)
    const input = await body(
      c,
      z.object({
        from: EvmAddress,
        beneficiary: EvmAddress.optional(),
        value: Units,
        validAfter: Seconds,
        validBefore: Seconds,
        salt: Bytes32,
        signature: Signature,
      }),
    )
    const beneficiary = linkedWallet(account.id, input.beneficiary ?? input.from)
    let sig: ReturnType<typeof parseSignature>
    try {
      sig = parseSignature(input.signature as Hex)
    } catch {
      throw invalidRequest("Invalid 'signature': not an ECDSA signature.", 'signature')
    }
    const v = sig.v ?? BigInt(27 + (sig.yParity ?? 0))
    let hash: Hex
    try {
      ;({ hash } = await client.send({
        functionName: 'depositWithAuthorization',
        args: [
          getAddress(input.from),
          beneficiary,
          BigInt(input.value),
          input.validAfter,
          input.validBefore,
          input.salt,
          Number(v),
          sig.r,
          sig.s,
        ],
      }))
    } catch (err) {
      throw chainError(err, 'deposit')
    }
    // Credited by the watcher (once confirmed); with no confirmations to wait for, right away.
    const polled = await deps.watcher.poll().then(
      () => true,
      () => false,
    )
    const credited = polled && deps.confirmations === 0
    const me = await ledger.getAccount(account.id)
    return c.json({
      txHash: hash,
      beneficiary,
      amount: formatUsd(BigInt(input.value)),
      status: credited ? 'credited' : 'confirming',
      balance: me ? formatUsd(me.balance - me.held) : undefined,
    })
  })

  /**
   * Starts the thaw of `amount` from a linked wallet's escrow balance, on the payer's EIP-712
   * RequestWithdraw signature. The ledger holds the amount (it cannot be spent meanwhile) and
   * debits it once the request is on chain; usage made before is still settled from the thawing
   * amount. The wallet withdraws on chain itself when the thaw ends.
   */
  api.post('/user/withdraw', async (c) => {
    const { account } = requireAuth(c)
    const input = await body(
      c,
      z.object({ address: EvmAddress, amount: Units, deadline: Seconds, signature: Signature }),
    )
    const payer = linkedWallet(account.id, input.address)
    const amount = BigInt(input.amount)
    const link = ledger.walletOwner(payer)
    if (link == null || amount > link.funds) {
      throw invalidRequest(
        `Invalid 'amount': this wallet's unspent deposits are ${formatUsd(link?.funds ?? 0n)} USDC.`,
        'amount',
      )
    }
    let hold: Awaited<ReturnType<Ledger['reserve']>>
    try {
      hold = await ledger.reserve(account.id, amount, `${withdrawalHoldPrefix(payer)}${Date.now()}`)
    } catch (err) {
      if (err instanceof InsufficientBalanceError) {
        throw insufficientBalance(formatUsd(err.available < 0n ? 0n : err.available), formatUsd(amount))
      }
      throw err
    }
    // Usage already served is paid first, so the thawing amount is what is really unspent.
    await deps.settler.run().catch(() => undefined)
    let hash: Hex
    try {
      ;({ hash } = await client.send({
        functionName: 'requestWithdrawWithSig',
        args: [payer, amount, input.deadline, input.signature],
      }))
    } catch (err) {
      await ledger.release(hold.id)
      throw chainError(err, 'withdrawal')
    }
    const receipt = await client.publicClient.getTransactionReceipt({ hash })
    const [log] = parseEventLogs({ abi: client.abi, logs: receipt.logs, eventName: 'WithdrawRequested' })
    const onChain = await client.account(payer)
    await ledger.chainWithdrawal({
      address: payer,
      amount,
      ref: await deps.watcher.ref(hash, log?.logIndex ?? 0),
      txHash: hash,
      holdId: hold.id,
    })
    return c.json({
      txHash: hash,
      address: payer,
      amount: formatUsd(amount),
      thawing: onChain.thawing.toString(),
      thawEndsAt: Number(onChain.thawEndsAt),
    })
  })

  return api
}
