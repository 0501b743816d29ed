// x402 on a real chain with the official clients: @x402/fetch's wrapFetchWithPayment and x402Client with
// @x402/evm's ExactEvmScheme (v2) and ExactEvmSchemeV1 (v1) sign; a tiny node:http server built on
// src/payments/x402.ts answers 402, verifies and settles with the embedded facilitator (or a remote one
// over HTTP), and the payer's and payee's USDC balances must move by exactly the price, once.
// Chain A is the devchain (31337, no v1 network name: v1 goes by the CAIP-2 id); chain B is an anvil with
// Base Sepolia's chain id (84532, 'base-sepolia' in v1) so that the official v1 client can sign for it.
import { randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { decodePaymentRequiredHeader, encodePaymentSignatureHeader } from '@x402/core/http'
import type { PaymentRequired, PaymentRequiredV1 } from '@x402/core/types'
import { authorizationTypes } from '@x402/evm'
import { ExactEvmScheme } from '@x402/evm/exact/client'
import { ExactEvmSchemeV1 } from '@x402/evm/exact/v1/client'
import { decodePaymentResponseHeader, wrapFetchWithPayment, x402Client, x402HTTPClient } from '@x402/fetch'
import {
  type Address,
  createPublicClient,
  createTestClient,
  createWalletClient,
  defineChain,
  type Hex,
  http,
  type PublicClient,
  toHex,
} from 'viem'
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from 'viem/accounts'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Anvil, startAnvil } from '../../src/chain/anvil.ts'
import { multicall3DeployedBytecode, testUsdcAbi, testUsdcBytecode } from '../../src/chain/artifacts.ts'
import {
  type DevChain,
  devChainViem,
  fundWallet,
  MULTICALL3_ADDRESS,
  startDevChain,
  testAccounts,
} from '../../src/chain/devchain.ts'
import {
  authorizationOf,
  authorizationUsed,
  type DecodedPayment,
  decodePayment,
  embeddedFacilitator,
  type Facilitator,
  type Network,
  type PaymentPayload,
  type PaymentPayloadV1,
  type PaymentRequirements,
  paymentRequired,
  paymentResponseHeader,
  paymentResponseHeaderName,
  remoteFacilitator,
  requirementsFor,
  X402_REASONS,
  type X402Requirements,
  type X402Resource,
  type X402Settings,
} from '../../src/payments/x402.ts'

const PRICE = 3000n // $0.003, the docs' chat price
const DOMAIN = { name: 'USD Coin', version: '2' }
const RESOURCE: X402Resource = {
  url: 'http://127.0.0.1/v1/chat/completions',
  description: 'Chat completion',
  mimeType: 'application/json',
}
const accounts = testAccounts()
const FACILITATOR_KEY = accounts[4]!.privateKey
const PAY_TO = accounts[5]!.address
const OTHER = accounts[6]!.address

/** A decoded payment, going through the header encoding as a client sends it. */
function decoded(payload: PaymentPayload | PaymentPayloadV1): DecodedPayment {
  const header = encodePaymentSignatureHeader(payload as PaymentPayload)
  const result = decodePayment(payload.x402Version === 2 ? { paymentSignature: header } : { xPayment: header })
  if ('error' in result) throw new Error(result.error)
  return result
}

/** The official v2 client for `account`, allowed to pay in `asset` on `network` (not a default asset). */
function v2Client(account: PrivateKeyAccount, network: Network, asset: Address) {
  return new x402Client()
    .register(network, new ExactEvmScheme(account))
    .setSpendControls({ allowedAssets: [{ network, asset }] })
}

/** A v2 payment for `requirements`, made by the official client's createPaymentPayload. */
function payV2(account: PrivateKeyAccount, requirements: PaymentRequirements): Promise<PaymentPayload> {
  const required: PaymentRequired = {
    x402Version: 2,
    resource: { url: RESOURCE.url },
    accepts: [requirements],
  }
  return v2Client(account, requirements.network as Network, requirements.asset as Address).createPaymentPayload(
    required,
  )
}

/** A v2 payment signed by hand (viem signTypedData), with authorization fields the client would not produce. */
async function signedByHand(
  account: PrivateKeyAccount,
  requirements: PaymentRequirements,
  over: { to?: Address; value?: bigint; validAfter?: bigint; validBefore?: bigint } = {},
): Promise<PaymentPayload> {
  const now = BigInt(Math.floor(Date.now() / 1000))
  const message = {
    from: account.address,
    to: over.to ?? (requirements.payTo as Address),
    value: over.value ?? BigInt(requirements.amount),
    validAfter: over.validAfter ?? 0n,
    validBefore: over.validBefore ?? now + 60n,
    nonce: toHex(randomBytes(32)),
  }
  const signature = await account.signTypedData({
    domain: {
      name: DOMAIN.name,
      version: DOMAIN.version,
      chainId: Number(requirements.network.split(':')[1]),
      verifyingContract: requirements.asset as Address,
    },
    types: authorizationTypes,
    primaryType: 'TransferWithAuthorization',
    message,
  })
  const authorization = {
    ...message,
    value: message.value.toString(),
    validAfter: message.validAfter.toString(),
    validBefore: message.validBefore.toString(),
  }
  return {
    x402Version: 2,
    resource: { url: RESOURCE.url },
    accepted: requirements,
    payload: { authorization, signature },
  }
}

const readBody = async (req: IncomingMessage): Promise<string> => {
  let text = ''
  for await (const chunk of req) text += chunk
  return text
}

interface PaidServer {
  url: string
  /** The raw payment headers received, in order. */
  received: Array<{ paymentSignature?: string; xPayment?: string }>
  close(): Promise<void>
}

/**
 * A paid resource on 127.0.0.1 built on our functions: no payment → 402; a payment → decode, verify, settle,
 * then 200 with the payment-response header; any refusal → 402 with the reason. `bodyOnly` leaves the
 * PAYMENT-REQUIRED header out, as a v1 server does (the client then reads the body).
 */
async function paidServer(settings: X402Settings, facilitator: Facilitator, bodyOnly = false): Promise<PaidServer> {
  const received: PaidServer['received'] = []
  let base = ''
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const resource: X402Resource = { ...RESOURCE, url: `${base}${(req.url ?? '/').split('?')[0]}` }
      const refuse = (error?: string) => {
        const { headers, body } = paymentRequired(settings, resource, PRICE, error)
        res.writeHead(402, { 'content-type': 'application/json', ...(bodyOnly ? {} : headers) })
        res.end(JSON.stringify(body))
      }
      const paymentSignature = req.headers['payment-signature'] as string | undefined
      const xPayment = req.headers['x-payment'] as string | undefined
      if (!paymentSignature && !xPayment) return refuse()
      received.push({ ...(paymentSignature ? { paymentSignature } : {}), ...(xPayment ? { xPayment } : {}) })
      const payment = decodePayment({ paymentSignature, xPayment })
      if ('error' in payment) return refuse(payment.error)
      const requirements = requirementsFor(settings, resource, PRICE)
      const verified = await facilitator.verify(payment, requirements)
      if (!verified.isValid) return refuse(verified.invalidReason)
      const settled = await facilitator.settle(payment, requirements)
      if (!settled.success) return refuse(settled.errorReason)
      res.writeHead(200, {
        'content-type': 'application/json',
        [paymentResponseHeaderName(payment.version)]: paymentResponseHeader(settled, payment.version),
      })
      res.end(JSON.stringify({ ok: true, version: payment.version }))
    })().catch((error: unknown) => {
      res.writeHead(500).end(String(error))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return {
    url: `${base}/v1/chat/completions`,
    received,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}

/** The error a 402 carries in its PAYMENT-REQUIRED header. */
const errorOf = (res: Response): string | undefined =>
  decodePaymentRequiredHeader(res.headers.get('payment-required') ?? '').error

describe('x402 requirements, 402 and decoding', () => {
  const settings: X402Settings = {
    network: 'eip155:8453',
    asset: '0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913',
    assetDomain: DOMAIN,
    payTo: PAY_TO,
  }

  it('builds the v2 and v1 requirements, with v1 network names and the CAIP-2 id where v1 has none', () => {
    const { v2, v1 } = requirementsFor(settings, RESOURCE, PRICE)
    expect(v2).toEqual({
      scheme: 'exact',
      network: 'eip155:8453',
      asset: settings.asset,
      amount: '3000',
      payTo: PAY_TO,
      maxTimeoutSeconds: 60,
      extra: DOMAIN,
    })
    expect(v1).toMatchObject({
      scheme: 'exact',
      network: 'base',
      maxAmountRequired: '3000',
      resource: RESOURCE.url,
      description: RESOURCE.description,
      mimeType: RESOURCE.mimeType,
      payTo: PAY_TO,
      asset: settings.asset,
      maxTimeoutSeconds: 60,
      extra: DOMAIN,
    })
    expect(requirementsFor({ ...settings, network: 'eip155:84532' }, RESOURCE, 1n).v1.network).toBe('base-sepolia')
    expect(requirementsFor({ ...settings, network: 'eip155:31337' }, RESOURCE, 1n).v1.network).toBe('eip155:31337')
    expect(requirementsFor({ ...settings, maxTimeoutSeconds: 300 }, RESOURCE, 1n).v2.maxTimeoutSeconds).toBe(300)
    expect(() => requirementsFor(settings, RESOURCE, 0n)).toThrow(RangeError)
    expect(() => requirementsFor({ ...settings, network: 'base' as Network }, RESOURCE, 1n)).toThrow(/CAIP-2/)
  })

  it('answers 402 with the v2 header and the v1 body, as @x402/fetch reads them', () => {
    const { header, body, headers, requirements } = paymentRequired(settings, RESOURCE, PRICE)
    expect(headers).toEqual({ 'PAYMENT-REQUIRED': header, 'Cache-Control': 'no-store' })
    const v2 = decodePaymentRequiredHeader(header)
    expect(v2).toEqual({
      x402Version: 2,
      error: 'Payment required',
      resource: RESOURCE,
      accepts: [requirements.v2],
    })
    expect(body).toMatchObject({ x402Version: 1, error: 'Payment required', accepts: [requirements.v1] })
    expect(body.message).toContain('$0.003')
    expect(body.message).toContain('PAYMENT-SIGNATURE')
    expect(body.message).toContain('X-PAYMENT')
    expect(body.price).toEqual({ amount: '3000', usd: '0.003', token: 'USDC', network: 'eip155:8453', payTo: PAY_TO })
    // what the official client takes from such a response: the header when there is one, else the v1 body
    const client = new x402HTTPClient(new x402Client())
    const json = JSON.parse(JSON.stringify(body))
    expect(client.getPaymentRequiredResponse((name) => (name === 'PAYMENT-REQUIRED' ? header : null), json)).toEqual(v2)
    const fromBody = client.getPaymentRequiredResponse(() => null, json) as unknown as PaymentRequiredV1
    expect(fromBody.x402Version).toBe(1)
    expect(fromBody.accepts).toEqual([requirements.v1])
    // a refusal says why, in both
    const refused = paymentRequired(settings, RESOURCE, PRICE, X402_REASONS.nonceUsed)
    expect(decodePaymentRequiredHeader(refused.header).error).toBe(X402_REASONS.nonceUsed)
    expect(refused.body.error).toBe(X402_REASONS.nonceUsed)
    expect(refused.body.message).toMatch(/already been used/)
  })

  it('refuses malformed payment headers with a reason', async () => {
    const b64 = (value: unknown) =>
      Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64')
    const account = privateKeyToAccount(generatePrivateKey())
    const good = await signedByHand(account, requirementsFor(settings, RESOURCE, PRICE).v2)
    const cases: Array<[{ paymentSignature?: string; xPayment?: string }, RegExp]> = [
      [{}, /no payment/],
      [{ paymentSignature: '' }, /no payment/],
      [{ paymentSignature: 'not base64!' }, /not base64/],
      [{ xPayment: b64('hello') }, /not base64-encoded JSON/],
      [{ paymentSignature: b64({}) }, /not an x402 payment/],
      [{ paymentSignature: b64({ x402Version: 3, payload: {} }) }, /not an x402 payment/],
      [{ paymentSignature: b64({ ...good, accepted: { scheme: 'exact' } }) }, /not an x402 payment at accepted/],
      [{ xPayment: b64(good) }, /version 2 payment: send it in PAYMENT-SIGNATURE/],
      [{ paymentSignature: b64({ ...good, payload: { permit2Authorization: {}, signature: '0x00' } }) }, /EIP-3009/],
      [{ paymentSignature: b64({ ...good, payload: { ...good.payload, signature: 'nope' } }) }, /EIP-3009/],
      [
        {
          paymentSignature: b64({
            ...good,
            payload: { ...good.payload, authorization: { ...(good.payload.authorization as object), value: '-1' } },
          }),
        },
        /EIP-3009/,
      ],
      [{ paymentSignature: 'A'.repeat(9000) }, /too long/],
    ]
    for (const [headers, reason] of cases) {
      const result = decodePayment(headers)
      expect('error' in result ? result.error : 'decoded', JSON.stringify(headers).slice(0, 80)).toMatch(reason)
    }
    const ok = decodePayment({ paymentSignature: b64(good), xPayment: 'ignored when a v2 payment is there' })
    expect('error' in ok).toBe(false)
    const auth = authorizationOf(good)
    expect(ok).toMatchObject({ version: 2, authorization: auth })
    expect(auth).toMatchObject({ from: account.address, to: PAY_TO, value: PRICE, validAfter: 0n })
    expect(auth?.nonce).toMatch(/^0x[0-9a-f]{64}$/)
  })
})

describe('x402 on a chain without a v1 name (devchain, eip155:31337)', () => {
  let chain: DevChain
  let settings: X402Settings
  let reqs: X402Requirements
  let facilitator: ReturnType<typeof embeddedFacilitator>
  let server: PaidServer
  let reader: PublicClient
  const payer = privateKeyToAccount(generatePrivateKey())
  const balance = (address: Address) =>
    reader.readContract({ address: chain.usdc, abi: testUsdcAbi, functionName: 'balanceOf', args: [address] })

  beforeAll(async () => {
    chain = await startDevChain()
    reader = createPublicClient({ chain: devChainViem(chain), transport: http(chain.rpcUrl) })
    settings = { network: `eip155:${chain.chainId}`, asset: chain.usdc, assetDomain: DOMAIN, payTo: PAY_TO }
    reqs = requirementsFor(settings, RESOURCE, PRICE)
    facilitator = embeddedFacilitator({ rpcUrl: chain.rpcUrl, chainId: chain.chainId, privateKey: FACILITATOR_KEY })
    server = await paidServer(settings, facilitator)
    await fundWallet(chain, payer.address, { usdc: 1_000_000n })
  })

  afterAll(async () => {
    await server?.close()
    await chain?.stop()
  })

  it('v2: wrapFetchWithPayment pays; exactly the price moves; the settle tx comes back; a replay is refused', async () => {
    const [payerBefore, payToBefore] = await Promise.all([balance(payer.address), balance(PAY_TO)])
    const pay = wrapFetchWithPayment(fetch, v2Client(payer, settings.network, chain.usdc))
    const res = await pay(server.url, { method: 'POST', body: '{}' })
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ ok: true, version: 2 })
    expect(server.received.at(-1)?.paymentSignature).toBeTruthy()
    const settled = decodePaymentResponseHeader(res.headers.get('payment-response') ?? '')
    expect(settled).toMatchObject({ success: true, network: settings.network, payer: payer.address })
    expect(settled.transaction).toMatch(/^0x[0-9a-f]{64}$/)
    const receipt = await reader.getTransactionReceipt({ hash: settled.transaction as Hex })
    expect(receipt.status).toBe('success')
    expect(await balance(payer.address)).toBe(payerBefore - PRICE)
    expect(await balance(PAY_TO)).toBe(payToBefore + PRICE)

    // the same PAYMENT-SIGNATURE again
    const header = server.received.at(-1)!.paymentSignature!
    const replay = await fetch(server.url, { method: 'POST', headers: { 'PAYMENT-SIGNATURE': header }, body: '{}' })
    expect(replay.status).toBe(402)
    expect(errorOf(replay)).toBe(X402_REASONS.nonceUsed)
    const payment = decodePayment({ paymentSignature: header })
    if ('error' in payment) throw new Error(payment.error)
    expect(await facilitator.verify(payment, reqs)).toMatchObject({
      isValid: false,
      invalidReason: X402_REASONS.nonceUsed,
    })
    const again = await facilitator.settle(payment, reqs)
    expect(again).toMatchObject({ success: false, errorReason: X402_REASONS.nonceUsed, payer: payer.address })
    expect(await balance(payer.address)).toBe(payerBefore - PRICE)
  })

  it('authorizationUsed: false before settlement, true after; verify and settle take the bare payload too', async () => {
    const payload = await payV2(payer, reqs.v2)
    const auth = authorizationOf(payload)!
    expect(await authorizationUsed(chain.rpcUrl, chain.usdc, auth.from, auth.nonce)).toBe(false)
    expect(await facilitator.verify(payload, reqs.v2)).toEqual({ isValid: true, payer: payer.address })
    const settled = await facilitator.settle(payload, reqs.v2)
    expect(settled).toMatchObject({ success: true, network: settings.network, payer: payer.address })
    expect(await authorizationUsed(chain.rpcUrl, chain.usdc, auth.from, auth.nonce)).toBe(true)
    // requirements of the other version are a programming error
    await expect(facilitator.verify(payload, reqs.v1)).rejects.toThrow(/version 2 requirements/)
  })

  it('refuses a tampered amount, and a payment made for another amount', async () => {
    const payload = await payV2(payer, reqs.v2)
    const auth = payload.payload.authorization as Record<string, string>
    const tampered = { ...payload, payload: { ...payload.payload, authorization: { ...auth, value: '1' } } }
    expect(await facilitator.verify(decoded(tampered), reqs)).toMatchObject({
      isValid: false,
      invalidReason: X402_REASONS.invalidSignature,
    })
    const cheaper = await payV2(payer, { ...reqs.v2, amount: '2000' })
    expect(await facilitator.verify(decoded(cheaper), reqs)).toMatchObject({
      isValid: false,
      invalidReason: X402_REASONS.amountMismatch,
    })
    // the accepted copy says our price but the signed value is less
    const underpaid = await signedByHand(payer, reqs.v2, { value: 2000n })
    expect(await facilitator.verify(decoded(underpaid), reqs)).toMatchObject({
      isValid: false,
      invalidReason: X402_REASONS.amountMismatch,
    })
    expect(await facilitator.settle(decoded(underpaid), reqs)).toMatchObject({
      success: false,
      errorReason: X402_REASONS.amountMismatch,
    })
  })

  it('refuses an expired and a not-yet-valid authorization', async () => {
    const now = BigInt(Math.floor(Date.now() / 1000))
    const expired = await signedByHand(payer, reqs.v2, { validBefore: now - 10n })
    expect(await facilitator.verify(decoded(expired), reqs)).toMatchObject({
      isValid: false,
      invalidReason: X402_REASONS.expired,
    })
    expect(await facilitator.settle(decoded(expired), reqs)).toMatchObject({
      success: false,
      errorReason: X402_REASONS.expired,
    })
    const early = await signedByHand(payer, reqs.v2, { validAfter: now + 3600n, validBefore: now + 7200n })
    expect(await facilitator.verify(decoded(early), reqs)).toMatchObject({
      isValid: false,
      invalidReason: X402_REASONS.notYetValid,
    })
  })

  it('refuses an unfunded payer: insufficient funds (Multicall3 tells why)', async () => {
    const broke = privateKeyToAccount(generatePrivateKey())
    const payment = decoded(await payV2(broke, reqs.v2))
    const verified = await facilitator.verify(payment, reqs)
    expect(verified).toMatchObject({
      isValid: false,
      invalidReason: X402_REASONS.insufficientFunds,
      payer: broke.address,
    })
    expect(verified.invalidMessage).toMatch(/^execution reverted/)
    expect(verified.invalidMessage ?? '').not.toContain('\n')
    const settled = await facilitator.settle(payment, reqs)
    expect(settled).toMatchObject({ success: false, errorReason: X402_REASONS.insufficientFunds })
    expect(settled.transaction).toBeUndefined()
  })

  it('refuses another network, payTo, asset or token domain', async () => {
    const otherNetwork = await payV2(payer, { ...reqs.v2, network: 'eip155:8453' })
    expect(await facilitator.verify(decoded(otherNetwork), reqs)).toMatchObject({
      invalidReason: X402_REASONS.networkMismatch,
    })
    const otherPayTo = await payV2(payer, { ...reqs.v2, payTo: OTHER })
    expect(await facilitator.verify(decoded(otherPayTo), reqs)).toMatchObject({
      invalidReason: X402_REASONS.recipientMismatch,
    })
    expect(await facilitator.settle(decoded(otherPayTo), reqs)).toMatchObject({
      success: false,
      errorReason: X402_REASONS.recipientMismatch,
    })
    // the accepted copy is ours, the signed recipient is not
    const signedToOther = await signedByHand(payer, reqs.v2, { to: OTHER })
    expect(await facilitator.verify(decoded(signedToOther), reqs)).toMatchObject({
      invalidReason: X402_REASONS.recipientMismatch,
    })
    const otherAsset = await payV2(payer, { ...reqs.v2, asset: chain.escrow })
    expect(await facilitator.verify(decoded(otherAsset), reqs)).toMatchObject({
      invalidReason: X402_REASONS.assetMismatch,
    })
    const otherDomain = await payV2(payer, { ...reqs.v2, extra: { name: 'USD Coin', version: '1' } })
    expect(await facilitator.verify(decoded(otherDomain), reqs)).toMatchObject({
      invalidReason: X402_REASONS.tokenVersionMismatch,
    })
    // a v1 payment naming another network
    const v1 = await new ExactEvmScheme(payer).createPaymentPayload(1, reqs.v2)
    const onBase = {
      x402Version: 1,
      scheme: 'exact',
      network: 'base',
      payload: v1.payload,
    } as unknown as PaymentPayloadV1
    expect(await facilitator.verify(decoded(onBase), reqs)).toMatchObject({
      invalidReason: X402_REASONS.networkMismatch,
    })
    // requirements for another chain than the facilitator's are a configuration error
    const elsewhere = requirementsFor({ ...settings, network: 'eip155:8453' }, RESOURCE, PRICE)
    await expect(facilitator.verify(decoded(otherNetwork), elsewhere)).rejects.toThrow(/settles on eip155:31337/)
  })

  it('v1 by the CAIP-2 id: X-PAYMENT verifies and settles (as its v2 equivalent), X-PAYMENT-RESPONSE back', async () => {
    expect(reqs.v1.network).toBe('eip155:31337')
    // the official v1 client knows named networks only: sign with the v2 scheme's EIP-3009 code, send as v1
    const signed = await new ExactEvmScheme(payer).createPaymentPayload(1, reqs.v2)
    const payload: PaymentPayloadV1 = {
      x402Version: 1,
      scheme: 'exact',
      network: reqs.v1.network,
      payload: signed.payload,
    }
    const payerBefore = await balance(payer.address)
    const header = encodePaymentSignatureHeader(payload as unknown as PaymentPayload)
    const res = await fetch(server.url, { method: 'POST', headers: { 'X-PAYMENT': header }, body: '{}' })
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ ok: true, version: 1 })
    expect(res.headers.get('payment-response')).toBeNull()
    const settled = decodePaymentResponseHeader(res.headers.get('x-payment-response') ?? '')
    expect(settled).toMatchObject({ success: true, network: 'eip155:31337', payer: payer.address })
    expect(await balance(payer.address)).toBe(payerBefore - PRICE)
    const replay = await fetch(server.url, { method: 'POST', headers: { 'X-PAYMENT': header }, body: '{}' })
    expect(replay.status).toBe(402)
    expect(errorOf(replay)).toBe(X402_REASONS.nonceUsed)
  })

  it('two settles of one payment at once: one transfer', async () => {
    const payment = decoded(await payV2(payer, reqs.v2))
    const payerBefore = await balance(payer.address)
    const results = await Promise.all([facilitator.settle(payment, reqs), facilitator.settle(payment, reqs)])
    expect(results.filter((r) => r.success)).toHaveLength(1)
    const failed = results.find((r) => !r.success)
    expect(failed?.errorReason).toBe(X402_REASONS.nonceUsed)
    expect(await balance(payer.address)).toBe(payerBefore - PRICE)
  })

  it('remoteFacilitator: verify and settle over HTTP; refusals come back as results, an unreachable one rejects', async () => {
    // a facilitator service on 127.0.0.1 (POST /verify, /settle) answering from the embedded facilitator,
    // with 400 for refusals (HTTPFacilitatorClient turns those into VerifyError / SettleError)
    const service = createServer((req, res) => {
      void (async () => {
        const { paymentPayload, paymentRequirements } = JSON.parse(await readBody(req))
        const result =
          req.url === '/verify'
            ? await facilitator.verify(paymentPayload, paymentRequirements)
            : await facilitator.settle(paymentPayload, paymentRequirements)
        const ok = 'isValid' in result ? result.isValid : result.success
        const body = 'isValid' in result ? result : { transaction: '', ...result }
        res.writeHead(ok ? 200 : 400, { 'content-type': 'application/json' }).end(JSON.stringify(body))
      })().catch((error: unknown) => res.writeHead(500).end(String(error)))
    })
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve))
    try {
      const remote = remoteFacilitator(`http://127.0.0.1:${(service.address() as AddressInfo).port}`)
      const payment = decoded(await payV2(payer, reqs.v2))
      const payerBefore = await balance(payer.address)
      expect(await remote.verify(payment, reqs)).toEqual({ isValid: true, payer: payer.address })
      const settled = await remote.settle(payment, reqs)
      expect(settled).toMatchObject({ success: true, network: settings.network, payer: payer.address })
      expect(settled.transaction).toMatch(/^0x[0-9a-f]{64}$/)
      expect(await balance(payer.address)).toBe(payerBefore - PRICE)
      expect(await remote.verify(payment, reqs)).toMatchObject({
        isValid: false,
        invalidReason: X402_REASONS.nonceUsed,
      })
      expect(await remote.settle(payment, reqs)).toMatchObject({ success: false, errorReason: X402_REASONS.nonceUsed })
      // our own checks come first, without a round trip
      const cheaper = decoded(await payV2(payer, { ...reqs.v2, amount: '1' }))
      expect(await remote.verify(cheaper, reqs)).toMatchObject({ invalidReason: X402_REASONS.amountMismatch })
    } finally {
      await new Promise<void>((resolve) => service.close(() => resolve()))
    }
    const gone = remoteFacilitator(`http://127.0.0.1:${(service.address() as AddressInfo | null)?.port ?? 9}`)
    await expect(gone.verify(decoded(await payV2(payer, reqs.v2)), reqs)).rejects.toThrow()
  })
})

describe('x402 v1 with the official v1 client (anvil as base-sepolia, 84532)', () => {
  let anvil: Anvil
  let usdc: Address
  let settings: X402Settings
  let server: PaidServer
  let reader: PublicClient
  let facilitator: Facilitator
  const payer = privateKeyToAccount(generatePrivateKey())
  const balance = (address: Address) =>
    reader.readContract({ address: usdc, abi: testUsdcAbi, functionName: 'balanceOf', args: [address] })

  beforeAll(async () => {
    anvil = await startAnvil(['--chain-id', '84532'])
    const chain = defineChain({
      id: 84532,
      name: 'anvil as base-sepolia',
      nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
      rpcUrls: { default: { http: [anvil.url] } },
    })
    const transport = http(anvil.url)
    reader = createPublicClient({ chain, transport, pollingInterval: 50 })
    const deployer = createWalletClient({ chain, transport, account: privateKeyToAccount(accounts[0]!.privateKey) })
    const deployed = await reader.waitForTransactionReceipt({
      hash: await deployer.deployContract({ abi: testUsdcAbi, bytecode: testUsdcBytecode }),
    })
    usdc = deployed.contractAddress!
    await createTestClient({ chain, transport, mode: 'anvil' }).setCode({
      address: MULTICALL3_ADDRESS,
      bytecode: multicall3DeployedBytecode,
    })
    await reader.waitForTransactionReceipt({
      hash: await deployer.writeContract({
        address: usdc,
        abi: testUsdcAbi,
        functionName: 'mint',
        args: [payer.address, 1_000_000n],
      }),
    })
    settings = { network: 'eip155:84532', asset: usdc, assetDomain: DOMAIN, payTo: PAY_TO }
    facilitator = embeddedFacilitator({ rpcUrl: anvil.url, chainId: 84532, privateKey: FACILITATOR_KEY })
    server = await paidServer(settings, facilitator, true)
  })

  afterAll(async () => {
    await server?.close()
    await anvil?.stop()
  })

  it('reads the v1 body, pays with X-PAYMENT; exactly the price moves; X-PAYMENT-RESPONSE; a replay is refused', async () => {
    const client = new x402Client()
      .registerV1('base-sepolia', new ExactEvmSchemeV1(payer))
      .setSpendControls({ allowedAssets: [{ network: 'base-sepolia' as Network, asset: usdc }] })
    const [payerBefore, payToBefore] = await Promise.all([balance(payer.address), balance(PAY_TO)])
    const res = await wrapFetchWithPayment(fetch, client)(server.url, { method: 'POST', body: '{}' })
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ ok: true, version: 1 })
    const sent = server.received.at(-1)!
    expect(sent.xPayment).toBeTruthy()
    expect(sent.paymentSignature).toBeUndefined()
    const settled = decodePaymentResponseHeader(res.headers.get('x-payment-response') ?? '')
    expect(settled).toMatchObject({ success: true, network: 'base-sepolia', payer: payer.address })
    expect((await reader.getTransactionReceipt({ hash: settled.transaction as Hex })).status).toBe('success')
    expect(await balance(payer.address)).toBe(payerBefore - PRICE)
    expect(await balance(PAY_TO)).toBe(payToBefore + PRICE)
    const payment = decodePayment({ xPayment: sent.xPayment })
    if ('error' in payment) throw new Error(payment.error)
    expect(payment.version).toBe(1)
    const auth = payment.authorization
    expect(await authorizationUsed(anvil.url, usdc, auth.from, auth.nonce)).toBe(true)

    const replay = await fetch(server.url, { method: 'POST', headers: { 'X-PAYMENT': sent.xPayment! }, body: '{}' })
    expect(replay.status).toBe(402)
    expect(replay.headers.get('payment-required')).toBeNull()
    const body = (await replay.json()) as { x402Version: number; error: string }
    expect(body).toMatchObject({ x402Version: 1, error: X402_REASONS.nonceUsed })
    // the v1 scheme's settle reports a revert as its error message: a reason again, the message kept short
    const again = await facilitator.settle(payment, requirementsFor(settings, RESOURCE, PRICE))
    expect(again).toMatchObject({ success: false, errorReason: X402_REASONS.nonceUsed, network: 'base-sepolia' })
    expect(again.errorMessage?.length ?? 0).toBeLessThanOrEqual(300)
    expect(again.errorMessage ?? '').not.toContain('\n')
    expect(await balance(payer.address)).toBe(payerBefore - PRICE)
  })

  it("maps the v1 scheme's reasons: another amount, another network", async () => {
    const reqs = requirementsFor(settings, RESOURCE, PRICE)
    const v1Client = new ExactEvmSchemeV1(payer)
    const cheaper = await v1Client.createPaymentPayload(1, { ...reqs.v1, maxAmountRequired: '2000' } as never)
    const payment = decoded({ ...cheaper, x402Version: 1 } as PaymentPayloadV1)
    expect(await facilitator.verify(payment, reqs)).toMatchObject({
      isValid: false,
      invalidReason: X402_REASONS.amountMismatch,
    })
    expect(await facilitator.settle(payment, reqs)).toMatchObject({
      success: false,
      errorReason: X402_REASONS.amountMismatch,
      network: 'base-sepolia',
    })
    const onBase = await v1Client.createPaymentPayload(1, { ...reqs.v1, network: 'base' } as never)
    expect(await facilitator.verify(decoded({ ...onBase, x402Version: 1 } as PaymentPayloadV1), reqs)).toMatchObject({
      invalidReason: X402_REASONS.networkMismatch,
    })
  })
})
