import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { describe, expect, it } from 'vitest'
import { type Receipt, ReceiptSchema } from '../../protocols/index.ts'
import { type ReceiptExpectation, signReceipt, verifyReceipt } from '../../src/mesh/receipts.ts'

const nodeKey = await generateKeyPair('Ed25519')
const otherKey = await generateKeyPair('Ed25519')
const node = peerIdFromPrivateKey(nodeKey).toString()
const gateway = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()

const expected: ReceiptExpectation = {
  requestId: 'chatcmpl-1',
  model: 'tiny',
  gateway,
  node,
  promptTokens: 12,
  completionTokens: 7,
}

const sign = (key = nodeKey, over: Partial<Receipt> = {}) =>
  signReceipt(key, {
    v: 1,
    requestId: expected.requestId,
    model: expected.model,
    modelSha256: '',
    promptTokens: expected.promptTokens,
    completionTokens: expected.completionTokens,
    gateway,
    node,
    issuedAt: 1_700_000_000_000,
    ...over,
  })

describe('node receipts', () => {
  it('a receipt signed by the node verifies, and is a valid wire object', async () => {
    const receipt = await sign()
    expect(ReceiptSchema.safeParse(receipt).success).toBe(true)
    expect(await verifyReceipt(receipt, expected)).toEqual({ ok: true })
  })

  it('altering any signed field after signing breaks the signature', async () => {
    const receipt = await sign()
    for (const altered of [
      { ...receipt, issuedAt: receipt.issuedAt + 1 },
      { ...receipt, modelSha256: 'a'.repeat(64) },
    ]) {
      expect(await verifyReceipt(altered, expected)).toEqual({ ok: false, reason: 'the signature does not verify' })
    }
    // Fields the gateway knows are checked before the signature.
    expect(await verifyReceipt({ ...receipt, completionTokens: 70 }, { ...expected })).toMatchObject({
      ok: false,
      reason: 'completionTokens does not match',
    })
  })

  it('a receipt signed by another key under the node id is forged', async () => {
    const forged = await sign(otherKey)
    expect(await verifyReceipt(forged, expected)).toEqual({ ok: false, reason: 'the signature does not verify' })
  })

  it('a genuine receipt replayed for another request, gateway, node or usage is refused', async () => {
    const receipt = await sign()
    expect(await verifyReceipt(receipt, { ...expected, requestId: 'chatcmpl-2' })).toMatchObject({ ok: false })
    expect(await verifyReceipt(receipt, { ...expected, gateway: node })).toMatchObject({ ok: false })
    const otherNode = peerIdFromPrivateKey(otherKey).toString()
    expect(await verifyReceipt(receipt, { ...expected, node: otherNode })).toMatchObject({ ok: false })
    expect(await verifyReceipt(receipt, { ...expected, promptTokens: 11 })).toMatchObject({ ok: false })
  })

  it('garbage signatures and node ids are refused, not thrown', async () => {
    const receipt = await sign()
    expect(await verifyReceipt({ ...receipt, signature: '!!!' }, expected)).toMatchObject({ ok: false })
    expect(await verifyReceipt({ ...receipt, node: 'not-a-peer' }, { ...expected, node: 'not-a-peer' })).toMatchObject({
      ok: false,
      reason: 'node is not a peer id',
    })
  })
})
