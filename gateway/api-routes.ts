// The documented /api surface: auth (register, login, me), API keys, admin credit and accounts,
// pricing, the user's stats and transactions, and public stats. Errors in the docs' shape.
import { getConnInfo } from '@hono/node-server/conninfo'
import { type Context, Hono } from 'hono'
import { z } from 'zod'
import { DuplicateEmailError } from '../src/ledger/ledger.ts'
import { KdfBusyError, kdfAdmitsHash } from '../src/ledger/secrets.ts'
import { formatUsd, MoneyFormatError, parseUsd } from '../src/payments/money.ts'
import type { Accounts, Authenticated } from './accounts.ts'
import {
  ApiError,
  conflict,
  forbidden,
  invalidRequest,
  notFound,
  parseFields,
  rateLimited,
  unauthorized,
} from './errors.ts'
import type { Pricing } from './pricing.ts'
import { type LoginFailures, RegistrationLimits, type Take } from './rate-limit.ts'
import type { VerifiedPayment } from './x402.ts'

export interface ApiDeps {
  accounts: Accounts
  pricing: Pricing
  /** Failed logins per email and client address, per address, and per email. */
  loginFailures: LoginFailures
  /** Sign-ups per client address and in all. @default RegistrationLimits' defaults */
  registrations?: RegistrationLimits
  /** A key was revoked: whatever holds it open (admin sockets) lets go at once. */
  onKeyRevoked?: (keyId: string) => void
  /** Model ids served now, for pricing and stats. */
  servedModels: () => string[]
  /** Models callable through this gateway's providers (priced too). */
  providerModels?: () => string[]
  /** Model ids in the registry (served or not). */
  registryModels?: () => string[]
  /** How many of the account's own models are deployed now. */
  modelsDeployedBy?: (accountId: string) => number
  nodeCount: () => number
}

/** Who pays for a request: an API key's account, or (no key, paid endpoint) a verified x402 payment. */
export type AuthVars = { Variables: { auth?: Authenticated; x402?: VerifiedPayment; requestId?: string } }

const Email = z.string().max(254).pipe(z.email('must be a valid email address'))
const Password = z.string().min(8, 'must be at least 8 characters').max(1024, 'must be at most 1024 characters')
const Amount = z.string().max(32)

export async function body<S extends z.ZodType>(c: Context, schema: S): Promise<z.output<S>> {
  const type = c.req.header('content-type') ?? ''
  if (!type.toLowerCase().includes('application/json')) {
    throw invalidRequest('Send the body as JSON with Content-Type: application/json.')
  }
  let json: unknown
  try {
    json = await c.req.json()
  } catch {
    throw invalidRequest('The request body is not valid JSON.')
  }
  return parseFields(schema, json)
}

export function requireAuth(c: Context<AuthVars>): Authenticated {
  const auth = c.get('auth')
  if (auth == null) throw unauthorized()
  return auth
}

export function clientAddress(c: Context): string {
  try {
    return getConnInfo(c).remote.address ?? 'unknown'
  } catch {
    return 'unknown'
  }
}

const accountBody = (account: { id: string; email: string; balance: bigint; held: bigint }, apiKey?: string) => ({
  userId: account.id,
  email: account.email,
  ...(apiKey ? { apiKey } : {}),
  balance: formatUsd(account.balance - account.held),
})

/** A 429 from a bucket of its own, with that bucket's X-RateLimit-* headers. */
function limitedBy(take: Take, what: string): ApiError {
  const err = rateLimited(take.retryAfter)
  err.message = `Too many ${what}. Retry after ${take.retryAfter} s.`
  err.headers['X-RateLimit-Limit'] = String(take.limit)
  err.headers['X-RateLimit-Remaining'] = String(take.remaining)
  err.headers['X-RateLimit-Reset'] = String(take.reset)
  return err
}

/** Password hashing is at its bound: a 503 at once (with Retry-After), not a place in a queue. */
function kdfBusy(): ApiError {
  const err = new ApiError(
    503,
    'The gateway is busy checking passwords. Retry after 1 s.',
    'service_unavailable_error',
    'busy',
  )
  err.headers['Retry-After'] = '1'
  return err
}

export function apiRoutes(deps: ApiDeps): Hono<AuthVars> {
  const api = new Hono<AuthVars>()
  const { accounts, pricing } = deps
  const registrations = deps.registrations ?? new RegistrationLimits()

  api.post('/auth/register', async (c) => {
    const { email, password } = await body(c, z.object({ email: Email, password: Password }))
    // Sign-ups wait for the password hash only in a short queue (behind logins); beyond it they
    // are refused, so a flood neither piles up 32 MiB hashes nor delays logins. Checked first: a
    // sign-up refused as busy does not spend one of the address's sign-ups.
    if (!kdfAdmitsHash()) throw kdfBusy()
    const take = registrations.take(clientAddress(c))
    if (!take.allowed) throw limitedBy(take, 'sign-ups')
    try {
      // register() asks for the hash synchronously, before its first await: the check above holds.
      const { account, apiKey } = await accounts.register(email, password)
      return c.json(accountBody(account, apiKey), 201)
    } catch (err) {
      if (err instanceof DuplicateEmailError) throw conflict('An account with this email already exists.')
      throw err
    }
  })

  api.post('/auth/login', async (c) => {
    const { email, password } = await body(c, z.object({ email: z.string().max(254), password: z.string().max(1024) }))
    // Each attempt counts as a failure until its password is right, so attempts sent together cannot
    // all pass an allowance with one left; past an allowance, refused before the password is checked.
    const attempt = deps.loginFailures.attempt(email, clientAddress(c))
    if ('retryAfter' in attempt) throw rateLimited(attempt.retryAfter)
    const result = await accounts.login(email, password).catch((err: unknown) => {
      // Not a wrong password (the hashing is busy, the ledger failed): not a failure to count.
      attempt.refund()
      if (err instanceof KdfBusyError) throw kdfBusy()
      throw err
    })
    if (result == null) throw new ApiError(401, 'Wrong email or password.', 'authentication_error', 'unauthorized')
    attempt.refund()
    return c.json(accountBody(result.account, result.apiKey))
  })

  api.get('/auth/me', (c) => {
    const { account } = requireAuth(c)
    return c.json({
      ...accountBody(account),
      role: account.role,
      createdAt: new Date(account.createdAt).toISOString(),
    })
  })

  api.get('/keys', async (c) => {
    const { account } = requireAuth(c)
    const keys = await accounts.ledger.listKeys(account.id)
    return c.json({
      keys: keys.map((k) => ({
        id: k.id,
        name: k.name,
        prefix: k.prefix,
        createdAt: new Date(k.createdAt).toISOString(),
        revokedAt: k.revokedAt != null ? new Date(k.revokedAt).toISOString() : null,
      })),
    })
  })

  api.post('/keys', async (c) => {
    const { account } = requireAuth(c)
    const hasBody = (c.req.header('content-length') ?? '0') !== '0'
    const { name } = hasBody
      ? await body(c, z.object({ name: z.string().min(1).max(64).optional() }))
      : { name: undefined }
    const { key, apiKey } = await accounts.createKey(account.id, name ?? 'api')
    return c.json(
      { id: key.id, name: key.name, prefix: key.prefix, apiKey, createdAt: new Date(key.createdAt).toISOString() },
      201,
    )
  })

  api.delete('/keys/:id', async (c) => {
    const { account } = requireAuth(c)
    const ok = await accounts.ledger.revokeKey(account.id, c.req.param('id'))
    if (!ok) throw notFound('No such key.')
    deps.onKeyRevoked?.(c.req.param('id'))
    return c.json({ id: c.req.param('id'), revoked: true })
  })

  const requireAdmin = (c: Context<AuthVars>): Authenticated => {
    const auth = requireAuth(c)
    if (auth.account.role !== 'admin') throw forbidden('This needs an admin API key.')
    return auth
  }

  api.post('/admin/credit', async (c) => {
    requireAdmin(c)
    const input = await body(
      c,
      z.object({ email: z.string().max(254), amount: Amount, memo: z.string().max(256).optional() }),
    )
    let amount: bigint
    try {
      amount = parseUsd(input.amount)
    } catch (err) {
      if (err instanceof MoneyFormatError) throw invalidRequest(`'amount' is invalid: ${err.message}.`, 'amount')
      throw err
    }
    if (amount <= 0n) throw invalidRequest("'amount' must be more than 0.", 'amount')
    const account = await accounts.ledger.findAccountByEmail(input.email)
    if (account == null) throw notFound(`No account with the email ${input.email.slice(0, 254)}.`)
    const tx = await accounts.ledger.credit(account.id, amount, { type: 'credit', memo: input.memo ?? 'admin credit' })
    return c.json({
      transactionId: tx.id,
      email: account.email,
      amount: formatUsd(tx.amount),
      balance: formatUsd(tx.balanceAfter - account.held),
    })
  })

  api.post('/admin/accounts', async (c) => {
    requireAdmin(c)
    const input = await body(
      c,
      z.object({ email: Email, password: Password.optional(), admin: z.boolean().optional() }),
    )
    try {
      const { account, apiKey } = await accounts.register(
        input.email,
        input.password ?? null,
        input.admin ? 'admin' : 'user',
      )
      return c.json({ ...accountBody(account, apiKey), role: account.role }, 201)
    } catch (err) {
      if (err instanceof DuplicateEmailError) throw conflict('An account with this email already exists.')
      throw err
    }
  })

  api.get('/pricing', (c) => c.json(pricing.describe([...deps.servedModels(), ...(deps.providerModels?.() ?? [])])))

  api.get('/user/stats', (c) => {
    const { account } = requireAuth(c)
    return c.json({
      balance: formatUsd(account.balance - account.held),
      totalCalls: account.totalCalls,
      modelsDeployed: deps.modelsDeployedBy?.(account.id) ?? 0,
      totalSpent: formatUsd(account.totalSpent),
    })
  })

  api.get('/user/transactions', async (c) => {
    const { account } = requireAuth(c)
    const q = parseFields(
      z.object({
        limit: z.coerce.number().int().min(1).max(100).default(20),
        cursor: z
          .string()
          .regex(/^\d{1,12}$/, 'must be a cursor from a previous page')
          .optional(),
      }),
      c.req.query(),
    )
    const page = await accounts.ledger.transactions(account.id, {
      limit: q.limit,
      ...(q.cursor ? { cursor: q.cursor } : {}),
    })
    return c.json({
      transactions: page.transactions.map((t) => ({
        id: t.id,
        type: t.type,
        amount: formatUsd(t.amount),
        balanceAfter: formatUsd(t.balanceAfter),
        createdAt: new Date(t.createdAt).toISOString(),
        ...(t.memo ? { memo: t.memo } : {}),
        ...(t.type === 'usage'
          ? { model: t.model, tokensIn: t.tokensIn, tokensOut: t.tokensOut, requestId: t.requestId }
          : {}),
        ...(t.txHash ? { txHash: t.txHash } : {}),
        ...(t.wallet ? { wallet: t.wallet } : {}),
        ...(t.settlementTxHash ? { settlementTxHash: t.settlementTxHash } : {}),
      })),
      nextCursor: page.nextCursor,
    })
  })

  api.get('/stats', (c) =>
    c.json({
      totalModels: new Set([...deps.servedModels(), ...(deps.registryModels?.() ?? [])]).size,
      nodes: deps.nodeCount(),
      inferences: accounts.ledger.totalCalls(),
      users: accounts.ledger.countAccounts(),
      x402Payments: accounts.ledger.countX402Payments(),
    }),
  )

  return api
}
