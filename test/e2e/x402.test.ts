// x402 through the whole system: anvil with test USDC, the embedded facilitator, a gateway and a real
// node. A wallet with no account pays per request with the official @x402/fetch client (plain and
// streamed), or by hand with X-PAYMENT (v1) and PAYMENT-SIGNATURE (v2); exactly the price moves once;
// replays, duplicates sent at once and bad payments get their 402 reason and start no work on the node;
// a stream starts before its payment settles; the node is paid for x402 work through settlement.
import { randomBytes } from 'node:crypto'
import { decodePaymentRequiredHeader, encodePaymentSignatureHeader } from '@x402/core/http'
import type { PaymentPayload, PaymentRequired, PaymentRequirements } from '@x402/core/types'
import { authorizationTypes } from '@x402/evm'
import { ExactEvmScheme } from '@x402/evm/exact/client'
import { decodePaymentResponseHeader, wrapFetchWithPayment, x402Client } from '@x402/fetch'
import { type Address, createPublicClient, createTestClient, createWalletClient, type Hex, http, toHex } from 'viem'
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from 'viem/accounts'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import type { RunningNode } from '../../node/node.ts'
import { clusterEscrowAbi, testUsdcAbi } from '../../src/chain/artifacts.ts'
import { type DevChain, devChainViem, fundWallet, startDevChain, testAccounts } from '../../src/chain/devchain.ts'
import { authorizationUsed, type Network, X402_REASONS } from '../../src/payments/x402.ts'
import { startTinyNode, tempDir, waitFor } from '../helpers/fixtures.ts'
import { payTo, x402Sections } from '../helpers/x402-gateway.ts'

const MODEL = 'tiny-x402'
const PATH = '/v1/chat/completions'
const PRICE = 3000n // $0.003, the docs' price
const accounts = testAccounts()
const nodePayout = (accounts[3] as { address: Address }).address

describe('x402: pay per request, no account', () => {
  let chain: DevChain
  let gw: RunningGateway
  let node: RunningNode
  const cleanups: Array<() => Promise<void>> = []
  let network: Network
  let submits = 0
  let publicClient: ReturnType<typeof createPublicClient>
  let gatewayDir: string
  let testClient: ReturnType<typeof createTestClient>

  /** A v2 payment of `payer` for `accepted`, as the header to send, and its authorization nonce. */
  const signedPayment = async (payer: PrivateKeyAccount, accepted: PaymentRequirements) => {
    const payload = await payV2(payer, accepted)
    const nonce = (payload.payload as { authorization: { nonce: Hex } }).authorization.nonce
    return { header: encodePaymentSignatureHeader(payload), nonce }
  }

  /** The gateway's record of the payment with this nonce. */
  const recordOf = (nonce: string) =>
    gw.ledger.x402Payments().find((p) => p.nonce.toLowerCase() === nonce.toLowerCase())

  /** Runs `body` with anvil mining only on demand (transactions wait in the pool). */
  const withoutAutomine = async <T>(body: () => Promise<T>): Promise<T> => {
    await testClient.setAutomine(false)
    try {
      return await body()
    } finally {
      await testClient.setAutomine(true)
    }
  }

  const usdcOf = (address: Address): Promise<bigint> =>
    publicClient.readContract({ address: chain.usdc, abi: testUsdcAbi, functionName: 'balanceOf', args: [address] })

  const newPayer = async (usdc = 1_000_000n): Promise<PrivateKeyAccount> => {
    const account = privateKeyToAccount(generatePrivateKey())
    if (usdc > 0n) await fundWallet(chain, account.address, { usdc })
    return account
  }

  const client = (payer: PrivateKeyAccount) =>
    new x402Client()
      .register(network, new ExactEvmScheme(payer))
      .setSpendControls({ allowedAssets: [{ network, asset: chain.usdc }] })

  const chatBody = (stream = false) =>
    JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, stream })

  const post = (headers: Record<string, string> = {}, stream = false) =>
    fetch(`${gw.url}${PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: chatBody(stream),
    })

  /** The requirements of a fresh 402, decoded from its header as the docs describe. */
  const requirements = async (): Promise<PaymentRequirements> => {
    const res = await post()
    expect(res.status).toBe(402)
    const required = decodePaymentRequiredHeader(res.headers.get('payment-required') as string)
    return required.accepts[0] as PaymentRequirements
  }

  const payV2 = (payer: PrivateKeyAccount, accepted: PaymentRequirements): Promise<PaymentPayload> =>
    client(payer).createPaymentPayload({
      x402Version: 2,
      resource: { url: `${gw.url}${PATH}` },
      accepts: [accepted],
    } as PaymentRequired)

  /** A payment signed with viem directly, with fields the official client would not produce. */
  const signedByHand = async (
    payer: PrivateKeyAccount,
    accepted: PaymentRequirements,
    over: { value?: bigint; validBefore?: bigint; x402Version?: 1 | 2 } = {},
  ) => {
    const now = BigInt(Math.floor(Date.now() / 1000))
    const message = {
      from: payer.address,
      to: accepted.payTo as Address,
      value: over.value ?? BigInt(accepted.amount),
      validAfter: 0n,
      validBefore: over.validBefore ?? now + 60n,
      nonce: toHex(randomBytes(32)),
    }
    const signature = await payer.signTypedData({
      domain: {
        name: (accepted.extra as { name: string }).name,
        version: (accepted.extra as { version: string }).version,
        chainId: chain.chainId,
        verifyingContract: accepted.asset as Address,
      },
      types: authorizationTypes,
      primaryType: 'TransferWithAuthorization',
      message,
    })
    const authorization = {
      ...message,
      value: message.value.toString(),
      validAfter: '0',
      validBefore: message.validBefore.toString(),
    }
    return { authorization, signature }
  }

  const reasonOf = (res: Response): string => {
    const header = res.headers.get('payment-required')
    return header ? (decodePaymentRequiredHeader(header).error ?? '') : ''
  }

  const gatewayOptions = (reconcileIntervalMs: number): Parameters<typeof startGateway>[0] => ({
    dataDir: gatewayDir,
    port: 0,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    rateLimit: { capacity: 10_000, refillPerSecond: 1_000 },
    log: () => undefined,
    ...x402Sections(chain, {
      // Short, so that the tests can show a settlement left pending and then reconciled.
      settleTimeoutMs: 2_000,
      reconcileIntervalMs,
    }),
  })

  beforeAll(async () => {
    chain = await startDevChain()
    cleanups.push(() => chain.stop())
    network = `eip155:${chain.chainId}`
    publicClient = createPublicClient({ chain: devChainViem(chain), transport: http(chain.rpcUrl) })
    testClient = createTestClient({ chain: devChainViem(chain), transport: http(chain.rpcUrl), mode: 'anvil' })
    const dir = await tempDir('cluster-x402-')
    cleanups.push(dir.remove)
    gatewayDir = `${dir.path}/gateway`
    gw = await startGateway(gatewayOptions(300))
    cleanups.unshift(() => gw.stop())
    node = await startTinyNode({
      dataDir: `${dir.path}/node`,
      bootstrap: gw.multiaddrs(),
      model: MODEL,
      payoutAddress: nodePayout,
    })
    cleanups.unshift(() => node.stop())
    // Count the work the node takes on (its scheduler is the only way in to the engine).
    const scheduler = node.schedulers.get(MODEL)
    if (scheduler == null) throw new Error('no scheduler')
    const submit = scheduler.submit.bind(scheduler)
    scheduler.submit = (...args: Parameters<typeof submit>) => {
      submits++
      return submit(...args)
    }
    await waitFor(
      () => gw.directory.get(node.peerId)?.capabilities?.payoutAddress === nodePayout,
      15_000,
      'the node in the directory',
    )
  }, 120_000)

  afterAll(async () => {
    for (const c of cleanups) await c().catch(() => undefined)
  })

  it('no Authorization header → 402 with the payment-required header as the docs describe; a wrong key is 401', async () => {
    const res = await post()
    expect(res.status).toBe(402)
    const required = decodePaymentRequiredHeader(res.headers.get('payment-required') as string)
    expect(required.x402Version).toBe(2)
    expect(required.accepts).toHaveLength(1)
    expect(required.accepts[0]).toMatchObject({
      scheme: 'exact',
      network,
      amount: PRICE.toString(),
      asset: chain.usdc,
      payTo,
      maxTimeoutSeconds: 60,
      extra: { name: 'USD Coin', version: '2' },
    })
    expect(required.resource?.url).toContain(PATH)
    const body = (await res.json()) as { message?: string; x402Version?: number; accepts?: unknown[] }
    expect(body.message).toMatch(/X-PAYMENT|PAYMENT-SIGNATURE/)
    expect(body.x402Version).toBe(1)
    expect(body.accepts?.length).toBe(1)
    const wrong = await post({ authorization: 'Bearer sk-cluster-wrong' })
    expect(wrong.status).toBe(401)
    expect(submits).toBe(0)
  })

  it('@x402/fetch pays for a plain and a streamed completion: exactly the price moves, each time', async () => {
    const payer = await newPayer()
    const pay = wrapFetchWithPayment(fetch, client(payer))
    const [payerBefore, payToBefore] = [await usdcOf(payer.address), await usdcOf(payTo)]
    const plain = await pay(`${gw.url}${PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chatBody(),
    })
    expect(plain.status).toBe(200)
    const answer = (await plain.json()) as { choices: Array<{ message: { role: string } }> }
    expect(answer.choices[0]?.message.role).toBe('assistant')
    expect(plain.headers.get('payment-response')).toBeTruthy()
    expect(await usdcOf(payer.address)).toBe(payerBefore - PRICE)
    expect(await usdcOf(payTo)).toBe(payToBefore + PRICE)

    const streamed = await pay(`${gw.url}${PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chatBody(true),
    })
    expect(streamed.status).toBe(200)
    const text = await streamed.text()
    expect(text).toContain('data: [DONE]')
    expect(text).not.toContain('payment_failed')
    // A stream's settlement result, as a comment before [DONE]: the PAYMENT-RESPONSE it could not
    // carry in its headers.
    const comment = /\n?: payment-response: (\S+)\n\ndata: \[DONE\]/.exec(text)?.[1]
    expect(decodePaymentResponseHeader(comment as string)).toMatchObject({ success: true })
    expect(await usdcOf(payer.address)).toBe(payerBefore - 2n * PRICE)
    expect(await usdcOf(payTo)).toBe(payToBefore + 2n * PRICE)
  })

  it('a raw client: decodes the 402, signs with viem, retries with X-PAYMENT (v1) and PAYMENT-SIGNATURE (v2)', async () => {
    const payer = await newPayer()
    const accepted = await requirements()
    const before = await usdcOf(payer.address)
    // v2
    const v2 = await payV2(payer, accepted)
    const r2 = await post({ 'payment-signature': encodePaymentSignatureHeader(v2) })
    expect(r2.status).toBe(200)
    expect(r2.headers.get('payment-response')).toBeTruthy()
    // v1, as the docs show it: X-PAYMENT with the payload in base64 JSON
    const signed = await signedByHand(payer, accepted)
    const v1 = { x402Version: 1, scheme: 'exact', network, payload: signed }
    const r1 = await post({ 'x-payment': Buffer.from(JSON.stringify(v1)).toString('base64') })
    expect(r1.status, await r1.clone().text()).toBe(200)
    expect(r1.headers.get('x-payment-response')).toBeTruthy()
    expect(await usdcOf(payer.address)).toBe(before - 2n * PRICE)
  })

  it('a replay, and the same payment three times at once: served exactly once, no work for the copies', async () => {
    const payer = await newPayer()
    const accepted = await requirements()
    const header = encodePaymentSignatureHeader(await payV2(payer, accepted))
    const before = submits
    const served = await post({ 'payment-signature': header })
    expect(served.status).toBe(200)
    const replay = await post({ 'payment-signature': header })
    expect(replay.status).toBe(402)
    expect(reasonOf(replay)).toBe(X402_REASONS.nonceUsed)

    const fresh = encodePaymentSignatureHeader(await payV2(payer, accepted))
    const copies = await Promise.all([1, 2, 3].map(() => post({ 'payment-signature': fresh })))
    expect(copies.map((r) => r.status).sort()).toEqual([200, 402, 402])
    for (const r of copies.filter((x) => x.status === 402)) expect(reasonOf(r)).toBe(X402_REASONS.nonceUsed)
    expect(submits - before).toBe(2)
    expect(await usdcOf(payer.address)).toBe(1_000_000n - 2n * PRICE)
  })

  it('a verified payment with a bad request or an unknown model is not used: 400/404, nothing moves, it works after', async () => {
    const payer = await newPayer()
    const accepted = await requirements()
    const header = encodePaymentSignatureHeader(await payV2(payer, accepted))
    const bad = await fetch(`${gw.url}${PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'payment-signature': header },
      body: JSON.stringify({ model: MODEL, messages: 'not a list' }),
    })
    expect(bad.status).toBe(400)
    const unknown = await fetch(`${gw.url}${PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'payment-signature': header },
      body: JSON.stringify({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }),
    })
    expect(unknown.status).toBe(404)
    expect(await usdcOf(payer.address)).toBe(1_000_000n)
    // (with provider pinning, as the docs' x402 examples send it)
    const good = await fetch(`${gw.url}${PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'payment-signature': header },
      body: JSON.stringify({
        model: MODEL,
        provider: 'cluster',
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 4,
      }),
    })
    expect(good.status).toBe(200)
    expect(await usdcOf(payer.address)).toBe(1_000_000n - PRICE)
  })

  it('tampered amount, expired authorization, unfunded payer, wrong network: each its 402 reason, no work', async () => {
    const payer = await newPayer()
    const accepted = await requirements()
    const before = submits
    const cases: Array<[string, PaymentPayload, string]> = []
    // The amount changed after signing: the signature no longer matches.
    const tampered = await payV2(payer, accepted)
    const auth = (tampered.payload as { authorization: { value: string } }).authorization
    auth.value = '1'
    cases.push(['tampered', tampered, X402_REASONS.invalidSignature])
    // Signed for less than the price.
    cases.push([
      'underpaid',
      {
        x402Version: 2,
        accepted,
        payload: await signedByHand(payer, accepted, { value: PRICE - 1n }),
      } as PaymentPayload,
      X402_REASONS.amountMismatch,
    ])
    const expired = await signedByHand(payer, accepted, { validBefore: BigInt(Math.floor(Date.now() / 1000) - 10) })
    cases.push(['expired', { x402Version: 2, accepted, payload: expired } as PaymentPayload, X402_REASONS.expired])
    const broke = await newPayer(0n)
    cases.push(['unfunded', await payV2(broke, accepted), X402_REASONS.insufficientFunds])
    const elsewhere = { ...accepted, network: 'eip155:8453' }
    cases.push([
      'wrong network',
      { x402Version: 2, accepted: elsewhere, payload: await signedByHand(payer, accepted) } as PaymentPayload,
      X402_REASONS.networkMismatch,
    ])
    for (const [name, payload, reason] of cases) {
      const res = await post({ 'payment-signature': encodePaymentSignatureHeader(payload) })
      expect([name, res.status]).toEqual([name, 402])
      expect([name, reasonOf(res)]).toEqual([name, reason])
    }
    expect(submits).toBe(before)
    expect(await usdcOf(payer.address)).toBe(1_000_000n)
  })

  it('streaming: the first chunk arrives while the settlement is still unmined; [DONE] follows it', async () => {
    const payer = await newPayer()
    const accepted = await requirements()
    const { header, nonce } = await signedPayment(payer, accepted)
    await withoutAutomine(async () => {
      const res = await post({ 'payment-signature': header }, true)
      expect(res.status).toBe(200)
      const reader = (res.body as ReadableStream<Uint8Array>).getReader()
      const first = await reader.read()
      expect(new TextDecoder().decode(first.value)).toContain('chat.completion.chunk')
      // Not settled yet: the authorization is unused on chain.
      const used = await authorizationUsed(chain.rpcUrl, chain.usdc, payer.address, nonce)
      expect(used).toBe(false)
      // Now let the chain go on: blocks until the transfer is in one.
      await waitFor(
        async () => {
          await testClient.mine({ blocks: 1 })
          return (await usdcOf(payer.address)) === 1_000_000n - PRICE
        },
        10_000,
        'the settlement mined',
      )
      let rest = ''
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        rest += new TextDecoder().decode(value)
      }
      expect(rest).toContain('data: [DONE]')
      expect(rest).not.toContain('payment_failed')
    })
    expect(await usdcOf(payer.address)).toBe(1_000_000n - PRICE)
  })

  it('a settlement not mined in time is pending, not failed, and is reconciled by its nonce', async () => {
    const payer = await newPayer()
    const accepted = await requirements()
    const { header, nonce } = await signedPayment(payer, accepted)
    const res = await withoutAutomine(() => post({ 'payment-signature': header }))
    // Served (the payment was verified), its settlement still open when the answer went out.
    expect(res.status).toBe(200)
    expect(res.headers.get('payment-response')).toBeNull()
    expect(recordOf(nonce)?.status).toBe('pending')
    await testClient.mine({ blocks: 1 })
    await waitFor(() => recordOf(nonce)?.status === 'settled', 10_000, 'the pending settlement reconciled')
    expect(await usdcOf(payer.address)).toBe(1_000_000n - PRICE)
    expect(gw.ledger.x402Debt(payer.address)).toBe(0n)
  })

  it('a payment that fails to settle: the stream ends with an error event, the payer owes it before it is served again', async () => {
    const payer = await newPayer()
    const accepted = await requirements()
    const { header } = await signedPayment(payer, accepted)
    const wallet = createWalletClient({ chain: devChainViem(chain), transport: http(chain.rpcUrl), account: payer })
    await fundWallet(chain, payer.address, { eth: 10n ** 18n })
    let text = ''
    await withoutAutomine(async () => {
      const res = await post({ 'payment-signature': header }, true)
      expect(res.status).toBe(200)
      const reader = (res.body as ReadableStream<Uint8Array>).getReader()
      const first = await reader.read()
      text += new TextDecoder().decode(first.value)
      // The settlement leaves alongside the answer, and the first chunk can reach us before it is
      // in the pool: wait for it there, so the transfer below can overtake it.
      await waitFor(async () => (await testClient.getTxpoolStatus()).pending > 0, 10_000, 'the settlement in the pool')
      // Verified, serving — and the payer empties its wallet ahead of the settlement (a higher tip).
      const balance = await usdcOf(payer.address)
      await wallet.writeContract({
        address: chain.usdc,
        abi: testUsdcAbi,
        functionName: 'transfer',
        args: [privateKeyToAccount(generatePrivateKey()).address, balance],
        maxPriorityFeePerGas: 10n ** 11n,
        maxFeePerGas: 10n ** 12n,
        // Not estimated: on the pending state (settlement included) this transfer cannot succeed.
        gas: 100_000n,
      })
      await testClient.mine({ blocks: 1 })
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        text += new TextDecoder().decode(value)
      }
    })
    expect(text).toContain('payment_failed')
    expect(gw.ledger.x402Debt(payer.address)).toBe(PRICE)
    // What the failed payment credited is taken back: owed once, and no credit left over.
    expect(gw.ledger.x402Credit(payer.address)).toBe(0n)
    // Its next payment at the plain price is refused: it must cover what it owes too.
    await fundWallet(chain, payer.address, { usdc: 1_000_000n })
    const before = submits
    const again = await post({ 'payment-signature': encodePaymentSignatureHeader(await payV2(payer, accepted)) })
    expect(again.status).toBe(402)
    expect(reasonOf(again)).toMatch(/^unpaid_previous_request/)
    const owed = decodePaymentRequiredHeader(again.headers.get('payment-required') as string).accepts[0]
    expect(owed?.amount).toBe((2n * PRICE).toString())
    expect(submits).toBe(before)
    // Paying both: served, and nothing is owed any more.
    const both = await post({
      'payment-signature': encodePaymentSignatureHeader(await payV2(payer, owed as PaymentRequirements)),
    })
    expect(both.status).toBe(200)
    expect(gw.ledger.x402Debt(payer.address)).toBe(0n)
    expect(await usdcOf(payer.address)).toBe(1_000_000n - 2n * PRICE)
    expect(gw.ledger.x402Credit(payer.address)).toBe(0n)
  })

  it('a plain answer whose payment fails to settle: a 402, no answer, nothing charged and nothing owed', async () => {
    // Enough USDC for one payment, two signed at once: both verify, only one can settle.
    const payer = await newPayer(PRICE)
    const accepted = await requirements()
    const [a, b] = await Promise.all([signedPayment(payer, accepted), signedPayment(payer, accepted)])
    const answers = await Promise.all([
      post({ 'payment-signature': a.header }),
      post({ 'payment-signature': b.header }),
    ])
    const statuses = answers.map((r) => r.status).sort()
    expect(statuses).toEqual([200, 402])
    const refused = answers.find((r) => r.status === 402) as Response
    expect(reasonOf(refused)).toMatch(/^settlement_failed/)
    expect(await usdcOf(payer.address)).toBe(0n)
    const account = await gw.ledger.x402Account(payer.address)
    await waitFor(async () => (await gw.ledger.getAccount(account.id))?.held === 0n, 5_000, 'holds ended')
    // One answer, one charge; the refused one neither charged nor owed, and no credit left behind.
    expect(await gw.ledger.getAccount(account.id)).toMatchObject({ balance: 0n, totalSpent: PRICE, totalCalls: 1 })
    expect(gw.ledger.x402Debt(payer.address)).toBe(0n)
    expect(gw.ledger.x402Credit(payer.address)).toBe(0n)
  })

  it('x402 payments are recorded and counted; the node is paid for x402 work through settlement', async () => {
    const payments = gw.ledger.x402Payments()
    const settled = payments.filter((p) => p.status === 'settled')
    // All settled but two: the stream whose payer emptied its wallet, and the plain answer that
    // could not be paid (not given).
    expect(payments.filter((p) => p.status === 'failed')).toHaveLength(2)
    expect(settled.length).toBe(payments.length - 2)
    for (const p of settled) {
      // (one was reconciled by its nonce: its tx hash is not known)
      if (p.txHash !== '') expect(p.txHash).toMatch(/^0x[0-9a-f]{64}$/)
      expect([PRICE, 2n * PRICE]).toContain(p.amount)
      expect(p.requestId).toMatch(/^chatcmpl-/)
    }
    const stats = (await (await fetch(`${gw.url}/api/stats`)).json()) as { x402Payments: number }
    expect(stats.x402Payments).toBe(settled.length)
    // Each served x402 call is a payout to the node, paid from the gateway's escrow account, which
    // the settler fills from the USDC the payments brought to payTo.
    const owed = gw.ledger
      .pendingPayouts(1_000)
      .filter((p) => p.payer === '')
      .reduce((s, p) => s + p.amount, 0n)
    // One payout per served call, the price each (the failed stream's call too: the gateway pays its
    // node and the payer owes it — the debt was paid by the double payment); none for the plain
    // answer that was not given.
    expect(owed).toBe(BigInt(payments.length - 1) * PRICE)
    const earnings = (): Promise<bigint> =>
      publicClient.readContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'earnings',
        args: [nodePayout],
      })
    const before = await earnings()
    const result = await gw.chain?.settler.run()
    expect(result?.failed).toEqual([])
    expect((await earnings()) - before).toBe(owed)
  })

  it('a settlement pending when the gateway stops is reconciled by its nonce when it starts again', async () => {
    const payer = await newPayer()
    const accepted = await requirements()
    const { header, nonce } = await signedPayment(payer, accepted)
    await withoutAutomine(async () => {
      const res = await post({ 'payment-signature': header })
      expect(res.status).toBe(200)
      expect(recordOf(nonce)?.status).toBe('pending')
      await gw.stop()
    })
    await testClient.mine({ blocks: 1 })
    expect(await usdcOf(payer.address)).toBe(1_000_000n - PRICE)
    // Started again on the same data dir, with no periodic reconcile: the start-up one settles it.
    gw = await startGateway(gatewayOptions(3_600_000))
    await waitFor(() => recordOf(nonce)?.status === 'settled', 10_000, 'reconciled at start')
    expect(gw.ledger.x402Debt(payer.address)).toBe(0n)
  })
})
