// x402 credit (left by a call that failed after its payment settled) pays the payer's next call: two
// calls at once on credit for one must not both count on it, and a payment that only proved who pays
// is not taken again. The gate and the ledger are real; the facilitator answers at once.
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, expect, it } from 'vitest'
import { Billing } from '../../gateway/billing.ts'
import { Meter } from '../../gateway/meter.ts'
import { Pricing } from '../../gateway/pricing.ts'
import { PaymentRequiredError, X402Gate } from '../../gateway/x402.ts'
import { LevelLedger } from '../../src/ledger/level-ledger.ts'

const PAYER = '0x1111111111111111111111111111111111111111'
const PAY_TO = '0x2222222222222222222222222222222222222222'
const ASSET = '0x3333333333333333333333333333333333333333'
const PRICE = 3_000n
const PATH = '/v1/chat/completions'

/** A v2 payment header for PRICE (the facilitator here checks nothing). */
function paymentHeader(): string {
  const payload = {
    x402Version: 2,
    resource: { url: `http://x${PATH}`, description: 'd', mimeType: 'application/json' },
    accepted: {
      scheme: 'exact',
      network: 'eip155:31337',
      asset: ASSET,
      amount: PRICE.toString(),
      payTo: PAY_TO,
      maxTimeoutSeconds: 60,
      extra: { name: 'USD Coin', version: '2' },
    },
    payload: {
      signature: `0x${'ab'.repeat(65)}`,
      authorization: {
        from: PAYER,
        to: PAY_TO,
        value: PRICE.toString(),
        validAfter: '0',
        validBefore: String(Math.floor(Date.now() / 1000) + 600),
        nonce: `0x${randomBytes(32).toString('hex')}`,
      },
    },
  }
  return Buffer.from(JSON.stringify(payload)).toString('base64')
}

const ctx = (header: string) =>
  ({
    req: {
      url: `http://localhost${PATH}`,
      header: (n: string) => (n === 'payment-signature' ? header : n === 'host' ? 'localhost' : undefined),
    },
  }) as never

let dir: string
let ledger: LevelLedger
let gate: X402Gate
let settles = 0
let billing: Billing

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'x402-credit-'))
  ledger = new LevelLedger(dir)
  await ledger.open()
  settles = 0
  gate = new X402Gate({
    settings: { network: 'eip155:31337', asset: ASSET, assetDomain: { name: 'USD Coin', version: '2' }, payTo: PAY_TO },
    facilitator: {
      verify: async () => ({ isValid: true }),
      settle: async () => {
        settles++
        return { success: true, transaction: `0x${'cd'.repeat(32)}` }
      },
    } as never,
    ledger,
    prices: new Map([[PATH, PRICE]]),
    rpcUrl: 'http://127.0.0.1:1',
  })
  billing = new Billing(ledger, new Pricing({}), { gatewayPeerId: '', payeeOf: () => '' })
})

afterEach(async () => {
  await ledger.close()
  await rm(dir, { recursive: true, force: true })
})

/** A paid call as the routes make it: verify, a candidate answers, use (holding the price), charge. */
async function paidCall(header: string, id: string) {
  const payment = await gate.verify(ctx(header), PATH)
  let meter: Meter | undefined
  const used = await gate.use(payment, id, (account) => {
    meter = new Meter(billing, account.id, 'm', id, payment.amount - payment.debtPaid)
    return meter.reserveFlat()
  })
  await meter?.finishProvider({ promptTokens: 1, completionTokens: 1 })
  return { covered: payment.covered === true, settlement: await used.settlement }
}

it('credit for one call, two calls at once: one is paid from it, the other pays — neither is left unheld', async () => {
  const account = await ledger.x402Account(PAYER)
  await ledger.credit(account.id, PRICE, { type: 'credit', memo: 'left by a call that failed' })
  const [a, b] = await Promise.all([paidCall(paymentHeader(), 'req-a'), paidCall(paymentHeader(), 'req-b')])
  // Both were verified as covered; only one could be: the other's payment was settled instead.
  expect([a.settlement.status, b.settlement.status].sort()).toEqual(['covered', 'settled'])
  expect(settles).toBe(1)
  expect(await ledger.getAccount(account.id)).toMatchObject({ balance: 0n, held: 0n, totalCalls: 2 })
  expect(ledger.x402Credit(PAYER)).toBe(0n)
})

it('a payment that only proved who pays (credit paid) is refused if sent again', async () => {
  const account = await ledger.x402Account(PAYER)
  await ledger.credit(account.id, 2n * PRICE, { type: 'credit', memo: 'left by calls that failed' })
  const header = paymentHeader()
  expect((await paidCall(header, 'req-1')).settlement.status).toBe('covered')
  await expect(gate.verify(ctx(header), PATH)).rejects.toBeInstanceOf(PaymentRequiredError)
  expect(ledger.x402Credit(PAYER)).toBe(PRICE)
})
